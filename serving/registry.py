"""`Registry`: the releases being served, the experiment router, and their hot reload.

A `Snapshot` is immutable: the router built from the experiments file and every release a
variant names (`default` is the command line's release), each a `Recommender` with its own
`MicroBatcher`. Serving reads the current snapshot once per request; a reload builds a new
snapshot completely (loading changed releases in a worker thread while the old snapshot keeps
serving), then swaps one reference. Releases the new snapshot no longer uses are retired:
their requests in flight finish (the batcher answers every queued request), then their
batcher stops. Picking the release and queueing the request happen in one step of the event
loop, so no request can pick a release that is already retired: a reload fails zero requests.

What triggers a reload: the experiments file's content changed (re-read by path every
`experiments_poll_s`, which also catches Kubernetes' symlink swap of a ConfigMap), or a
release's `manifest.json` changed (every `release_poll_s`). A reload that fails (bad YAML,
missing release) is logged and the old snapshot keeps serving; it is retried when the file
changes again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from fast_path.errors import BatcherStoppedError, RequestError
from fast_path.micro_batcher import BatchStats, MicroBatcher
from fast_path.recommender import Recommendation, Recommender, RecommendRequest
from fast_path.settings import RecommenderSettings
from serving import metrics
from serving.errors import ApiError
from serving.experiments import (
    DEFAULT_RELEASE,
    DEFAULT_VARIANT,
    ExperimentsConfig,
    Router,
    Variant,
    load_experiments,
)
from sid_index.errors import ConfigError, ReasonrecError, ReleaseError
from sid_index.release import MANIFEST_NAME

log = logging.getLogger(__name__)

ReleaseLoader = Callable[[Path], Recommender]
"""Loads one release directory (blocking; run in a worker thread)."""


class _VariantTagger:
    """The batcher's view of a Recommender that also times each beam search per variant.

    Requests of one beam search share `num_beams` and its decode time; one observation is made
    per (beam search, variant), so `reasonrec_beam_search_seconds{variant}` counts searches, not
    requests.
    """

    def __init__(self, recommender: Recommender) -> None:
        self.recommender = recommender
        self.variants: dict[int, str] = {}
        """id(request) -> variant name, while the request is queued or running."""

    @property
    def settings(self) -> RecommenderSettings:
        return self.recommender.settings

    def validate(self, request: RecommendRequest) -> None:
        self.recommender.validate(request)

    def recommend_outcomes(
        self, requests: Sequence[RecommendRequest]
    ) -> list[Recommendation | RequestError]:
        outcomes = self.recommender.recommend_outcomes(requests)
        seen: set[tuple[float, int, str]] = set()
        for request, outcome in zip(requests, outcomes, strict=True):
            if isinstance(outcome, Recommendation):
                variant = self.variants.get(id(request), DEFAULT_VARIANT)
                key = (outcome.timings.get("decode", 0.0), request.num_beams, variant)
                if key not in seen:
                    seen.add(key)
                    metrics.observe_beam_search(variant, key[0])
        return outcomes


@dataclass(eq=False)
class LoadedRelease:
    """One release being served (possibly under several names) and its micro-batcher."""

    path: Path
    digest: str
    """sha256 of its manifest.json when loaded (a new release rewrites the manifest)."""
    recommender: Recommender
    batcher: MicroBatcher
    tagger: _VariantTagger
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    retired: bool = False

    def __post_init__(self) -> None:
        self.idle.set()

    @property
    def version(self) -> str:
        """The manifest's version."""
        return self.recommender.release_version


@dataclass(frozen=True, eq=False)
class Snapshot:
    """What is served now (never mutated; replaced whole on reload)."""

    router: Router
    releases: Mapping[str, LoadedRelease]
    """Release name -> loaded release (two names may share one object)."""
    experiments_raw: bytes | None
    """The experiments file's bytes it was built from (None: no file)."""

    def versions(self) -> dict[str, str]:
        """variant name -> release version, for `reasonrec_release_info`."""
        return {v.name: self.releases[v.release].version for v in self.router.variants()}


def manifest_digest(release_dir: Path) -> str:
    """sha256 of the release's manifest.json.

    Raises:
        ReleaseError: there is no readable manifest.
    """
    try:
        return hashlib.sha256((release_dir / MANIFEST_NAME).read_bytes()).hexdigest()
    except OSError as exc:
        raise ReleaseError(f"release {release_dir}: cannot read {MANIFEST_NAME}: {exc}") from None


class Registry:
    """Loaded releases, the router, and their atomic hot reload (see the module docstring)."""

    def __init__(
        self,
        loader: ReleaseLoader,
        *,
        release_dir: Path | None,
        experiments_file: Path | None,
        micro_batching: bool = True,
        batching: RecommenderSettings | None = None,
        drain_timeout_s: float = 30.0,
        experiments_poll_s: float = 2.0,
        release_poll_s: float = 10.0,
    ) -> None:
        """Args:
        loader: loads a release directory into a Recommender (blocking).
        release_dir: the `default` release.
        experiments_file: the experiments YAML (None: everyone gets `default`).
        micro_batching: gather concurrent requests (False: batches of one).
        batching: max_batch / max_wait_s / max_queue of the batchers (None: each
            recommender's own settings).
        """
        self._loader = loader
        self.release_dir = release_dir
        self.experiments_file = experiments_file
        self.micro_batching = micro_batching
        self.batching = batching
        self.drain_timeout_s = drain_timeout_s
        self.experiments_poll_s = experiments_poll_s
        self.release_poll_s = release_poll_s
        self._snapshot: Snapshot | None = None
        self._lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[None]] = set()
        self._closed = False
        self._bad_raw: bytes | None = None
        self.reloads = 0
        """Successful swaps after the first load."""
        self.last_error: str | None = None
        """Why the last load or reload failed (None after a success)."""

    # ---- state -----------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True once a snapshot is being served."""
        return self._snapshot is not None and not self._closed

    @property
    def snapshot(self) -> Snapshot:
        """The current snapshot.

        Raises:
            ApiError: (unavailable) nothing is loaded yet, or the registry is closed.
        """
        snap = self._snapshot
        if snap is None or self._closed:
            raise ApiError("unavailable", "models are not loaded yet, retry later")
        return snap

    def assign(self, user_id: str) -> Variant:
        """The user's variant under the current experiments."""
        return self.snapshot.router.assign(user_id)

    def known_item(self, item_id: str) -> bool:
        """True when some served release's catalogue has the item."""
        releases = {id(r): r for r in self.snapshot.releases.values()}.values()
        return any(r.recommender.known_item(item_id) for r in releases)

    # ---- serving ---------------------------------------------------------------------------

    async def recommend(
        self, user_id: str, make_request: Callable[[Variant], RecommendRequest]
    ) -> tuple[Variant, Recommendation]:
        """Assign the user's variant, build its request and serve it on the variant's release.

        Raises:
            RequestError: the request is invalid for that release.
            UnavailableError / ApiError: not loaded yet, overloaded, or shutting down.
        """
        for attempt in range(2):
            snap = self.snapshot
            variant = snap.router.assign(user_id)
            request = make_request(variant)
            release = snap.releases[variant.release]
            # From here to the batcher's queue there is no await: a swap cannot retire this
            # release before the request is queued, and a retired batcher answers its queue.
            release.inflight += 1
            release.idle.clear()
            release.tagger.variants[id(request)] = variant.name
            try:
                return variant, await release.batcher.submit(request)
            except BatcherStoppedError:
                if attempt or self._closed or not release.retired:
                    raise
                log.warning("request raced a release swap; retrying on the new snapshot")
            finally:
                release.tagger.variants.pop(id(request), None)
                release.inflight -= 1
                if release.inflight == 0:
                    release.idle.set()
        raise AssertionError("unreachable")

    # ---- loading ---------------------------------------------------------------------------

    async def load(self) -> None:
        """First load: the experiments file and every release it uses.

        Raises:
            ConfigError / ReleaseError: a bad experiments file or release.
        """
        async with self._lock:
            config, raw = self._read_experiments()
            await self._swap(config, raw, force=False)

    async def reload(self, *, force: bool = False) -> bool:
        """Re-read the experiments file and the releases' manifests; swap when something
        changed (`force`: reload every release). Never raises: a failed reload keeps the
        current snapshot and is logged.

        Returns:
            True when a new snapshot was swapped in.
        """
        async with self._lock:
            if self._closed:
                return False
            try:
                config, raw = self._read_experiments()
                changed = await self._swap(config, raw, force=force)
            except ReasonrecError as exc:
                self.last_error = str(exc)
                if raw_now := self._current_raw():
                    self._bad_raw = raw_now
                log.error("reload failed, still serving the previous snapshot: %s", exc)
                return False
            self._bad_raw = None
            return changed

    async def watch(self) -> None:
        """Poll the experiments file and the releases until cancelled."""
        since_release = 0.0
        step = self.experiments_poll_s
        if self.release_poll_s > 0:
            step = min(step, self.release_poll_s)
        while not self._closed:
            await asyncio.sleep(step)
            since_release += step
            check_releases = self.release_poll_s > 0 and since_release >= self.release_poll_s
            if check_releases:
                since_release = 0.0
            if self._needs_reload(check_releases):
                await self.reload()

    def _needs_reload(self, check_releases: bool) -> bool:
        snap = self._snapshot
        if snap is None:
            return False
        raw = self._current_raw()
        if raw is not None and raw != snap.experiments_raw and raw != self._bad_raw:
            return True
        if check_releases:
            for release in {id(r): r for r in snap.releases.values()}.values():
                try:
                    if manifest_digest(release.path) != release.digest:
                        return True
                except ReleaseError:
                    continue  # mid-swap or removed: keep serving what is loaded
        return False

    def _current_raw(self) -> bytes | None:
        if self.experiments_file is None:
            return None
        try:
            return self.experiments_file.read_bytes()
        except OSError:
            return None

    def _read_experiments(self) -> tuple[ExperimentsConfig, bytes | None]:
        if self.experiments_file is None:
            return ExperimentsConfig(), None
        return load_experiments(self.experiments_file)

    def _release_paths(self, config: ExperimentsConfig, router: Router) -> dict[str, Path]:
        paths = {name: Path(p) for name, p in config.releases.items()}
        if self.release_dir is not None:
            paths[DEFAULT_RELEASE] = self.release_dir
        wanted = router.releases_in_use()
        missing = sorted(wanted - set(paths))
        if missing:
            raise ConfigError(
                f"no directory for release(s) {missing}: `default` is the --release directory "
                "(REASONREC_RELEASE_DIR), others come from the experiments file's `releases`"
            )
        return {name: paths[name] for name in sorted(wanted)}

    async def _swap(self, config: ExperimentsConfig, raw: bytes | None, *, force: bool) -> bool:
        router = Router(config)
        paths = self._release_paths(config, router)
        old = self._snapshot
        current = {} if old is None else {(r.path, r.digest): r for r in old.releases.values()}
        loaded: dict[tuple[Path, str], LoadedRelease] = {}
        releases: dict[str, LoadedRelease] = {}
        try:
            for name, path in paths.items():
                digest = await asyncio.to_thread(manifest_digest, path)
                key = (path, digest)
                if key not in loaded:
                    reuse = None if force else current.get(key)
                    loaded[key] = reuse or await self._load_release(path, digest)
                releases[name] = loaded[key]
        except BaseException:
            fresh = [r for r in loaded.values() if r not in current.values()]
            for release in fresh:  # built for the failed snapshot: never served
                await release.batcher.stop()
            raise
        same = old is not None and raw == old.experiments_raw and releases == dict(old.releases)
        if same:
            return False
        self._snapshot = Snapshot(router, releases, raw)
        metrics.set_release_info(self._snapshot.versions())
        self.last_error = None
        if old is not None:
            self.reloads += 1
            keep = {id(r) for r in releases.values()}
            for release in {id(r): r for r in old.releases.values()}.values():
                if id(release) not in keep:
                    self._retire(release)
        log.info(
            "serving %s",
            ", ".join(f"{n}={r.version} ({r.path})" for n, r in sorted(releases.items())),
        )
        return True

    async def _load_release(self, path: Path, digest: str) -> LoadedRelease:
        recommender = await asyncio.to_thread(self._loader, path)
        tagger = _VariantTagger(recommender)
        s = self.batching or recommender.settings
        batcher = MicroBatcher(
            tagger,
            max_batch=s.max_batch if self.micro_batching else 1,
            max_wait_s=s.max_wait_s if self.micro_batching else 0.0,
            max_queue=s.max_queue,
            on_batch=_on_batch,
        )
        await batcher.start()
        return LoadedRelease(path, digest, recommender, batcher, tagger)

    def _retire(self, release: LoadedRelease) -> None:
        release.retired = True
        task = asyncio.get_running_loop().create_task(self._drain(release))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    async def _drain(self, release: LoadedRelease) -> None:
        try:
            await asyncio.wait_for(release.idle.wait(), self.drain_timeout_s)
        except TimeoutError:
            log.warning(
                "release %s: %d requests still running after %.0f s; stopping its batcher",
                release.version, release.inflight, self.drain_timeout_s,
            )  # fmt: skip
        await release.batcher.stop()  # answers anything still queued
        log.info("release %s (%s) retired", release.version, release.path)

    async def close(self) -> None:
        """Stop serving: drain every release (requests in flight finish) and stop them."""
        async with self._lock:
            snap, self._snapshot = self._snapshot, None
            self._closed = True
        if snap is not None:
            for release in {id(r): r for r in snap.releases.values()}.values():
                self._retire(release)
        if self._retiring:
            await asyncio.gather(*self._retiring, return_exceptions=True)


def _on_batch(stats: BatchStats) -> None:
    metrics.observe_batch(stats.size)
