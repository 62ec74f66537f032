"""`ServingRuntime`: what both protocols serve from — the Redis stores, the release registry,
the refresh trigger — and the three operations (recommend, post events, get trace).

HTTP (`serving.http_app`) and gRPC (`serving.grpc_app`) handlers are thin: they validate the
wire format into `serving.schemas` records, call a method here, and map errors with
`serving.errors.classify`. One runtime per process; `start()` returns at once and loads the
releases in the background, so liveness answers while models load and readiness says when
they are in.

Redis clients: reads on the request path (traces, stored histories) go through a
latency-bound client (no retries, connect timeout near the read budget) so an outage costs a
request no more than its budget; writes (event appends, the refresh debounce) use the
settings' normal timeouts and retries. A Redis outage makes recommendations degrade to
no-trace mode, events fail with 503 (they cannot be stored), and readiness report false.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from fast_path.recommender import Recommender, RecommendRequest
from fast_path.settings import RecommenderSettings
from serving import metrics
from serving.errors import ApiError
from serving.experiments import Variant
from serving.registry import Registry
from serving.schemas import (
    EventsBody,
    EventsResponse,
    RecommendBody,
    RecommendResponse,
    RefreshOutcome,
)
from serving.settings import ServingSettings
from sid_index.errors import ConfigError
from slow_path.errors import StoreError
from slow_path.history_store import RedisHistoryStore
from slow_path.redis_conn import EmbeddedRedis, redact_url, redis_client
from slow_path.settings import RedisSettings, StoreSettings, load_settings
from slow_path.trace import Trace
from slow_path.trace_store import RedisTraceStore
from slow_path.worker_settings import WorkerSettings

log = logging.getLogger(__name__)


class CallContext:
    """Per-request facts the protocol layer needs for its metrics, filled in as they become
    known (the variant is `none` until the user is assigned)."""

    __slots__ = ("variant",)

    def __init__(self) -> None:
        self.variant = metrics.NO_VARIANT


class ServingRuntime:
    """Stores, registry and refresh trigger of one API process (see the module docstring)."""

    def __init__(
        self,
        settings: ServingSettings,
        *,
        recommender_settings: RecommenderSettings | None = None,
        redis_settings: RedisSettings | None = None,
        store_settings: StoreSettings | None = None,
        worker_settings: WorkerSettings | None = None,
    ) -> None:
        """Args:
        settings: the serving settings.
        recommender_settings, redis_settings, store_settings, worker_settings: the other
            packages' settings (None: read from the environment).
        """
        self.settings = settings
        self.recommender_settings = recommender_settings or RecommenderSettings.load()
        overrides: dict[str, Any] = {}
        if settings.redis_url is not None:
            overrides["redis_url"] = settings.redis_url
        self.redis_settings = redis_settings or load_settings(RedisSettings, **overrides)
        self.store_settings = store_settings or load_settings(StoreSettings)
        self.worker_settings = worker_settings or load_settings(WorkerSettings)
        self.registry: Registry | None = None
        self.trace_store: RedisTraceStore | None = None
        self.history_reader: RedisHistoryStore | None = None
        self.history_writer: RedisHistoryStore | None = None
        self.redis_url: str | None = None
        self._embedded: EmbeddedRedis | None = None
        self._clients: list[Any] = []
        self._load_task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._refresh: Any = None  # slow_path.refresh.RefreshTrigger, built on first use
        self._refresh_pool = ThreadPoolExecutor(1, thread_name_prefix="reasonrec-refresh")
        self.load_error: BaseException | None = None
        """Why the first load failed (the process should exit)."""
        self.loaded = asyncio.Event()
        """Set when the first load finished, successfully or not."""

    # ---- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect the stores and start loading the releases in the background.

        Raises:
            ConfigError: no release directory, or no Redis URL with the embedded server off.
        """
        s = self.settings
        if s.release_dir is None:
            raise ConfigError("no release: pass --release DIR or set REASONREC_RELEASE_DIR")
        self._connect()
        rs = self.recommender_settings
        reader = redis_client(
            self.redis_settings,
            self.redis_url,
            socket_timeout_s=max(rs.trace_budget_s, rs.history_budget_s),
            connect_timeout_s=max(rs.trace_budget_s, rs.history_budget_s, 0.05),
            retries=0,
        )
        writer = redis_client(self.redis_settings, self.redis_url)
        self._clients = [reader, writer]
        st = self.store_settings
        self.trace_store = RedisTraceStore.from_settings(reader, st)
        self.history_reader = RedisHistoryStore.from_settings(reader, st)
        self.history_writer = RedisHistoryStore.from_settings(writer, st)
        self.registry = Registry(
            self._load_release,
            release_dir=s.release_dir,
            experiments_file=s.experiments_file,
            micro_batching=s.micro_batching,
            drain_timeout_s=s.drain_timeout_s,
            experiments_poll_s=s.experiments_poll_s,
            release_poll_s=s.release_poll_s,
        )
        self._load_task = asyncio.get_running_loop().create_task(self._first_load())

    def _connect(self) -> None:
        url = self.redis_settings.redis_url
        if url is None:
            if not self.redis_settings.embedded:
                raise ConfigError(
                    "REDIS_URL is not set and the embedded server is disabled "
                    "(REASONREC_EMBEDDED=false)"
                )
            self._embedded = EmbeddedRedis(maxmemory=self.redis_settings.embedded_maxmemory)
            url = self._embedded.start().url
            log.warning("REDIS_URL is not set: serving with an embedded server at %s", url)
        # No PING here: the API starts (and answers /healthz) while Redis is down; /readyz
        # says whether it is reachable.
        self.redis_url = url
        log.info("Redis at %s", redact_url(url))

    def _load_release(self, path: Any) -> Recommender:
        return Recommender.from_release(
            path,
            trace_store=self.trace_store,
            history_store=self.history_reader,
            settings=self.recommender_settings,
        )

    async def _first_load(self) -> None:
        assert self.registry is not None
        t0 = time.perf_counter()
        try:
            await self.registry.load()
        except Exception as exc:
            self.load_error = exc
            log.error("loading the releases failed: %s", exc)
        else:
            log.info("releases loaded in %.1f s", time.perf_counter() - t0)
            self._watch_task = asyncio.get_running_loop().create_task(self.registry.watch())
        finally:
            self.loaded.set()

    async def stop(self) -> None:
        """Stop watching, drain and stop the releases, close the stores (idempotent)."""
        for task in (self._load_task, self._watch_task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._load_task = self._watch_task = None
        if self.registry is not None:
            await self.registry.close()
        self._refresh_pool.shutdown(wait=False, cancel_futures=True)
        for client in self._clients:
            client.close()
        self._clients = []
        if self._embedded is not None:
            self._embedded.stop()
            self._embedded = None

    # ---- readiness -------------------------------------------------------------------------

    @property
    def models_loaded(self) -> bool:
        """True while a snapshot of releases is served."""
        return self.registry is not None and self.registry.ready

    async def redis_reachable(self) -> bool:
        """One PING within `readiness_timeout_s`."""
        if not self._clients:
            return False
        # The writer client: the reader's socket timeout is the request budget (tens of ms),
        # too tight for a probe on a busy box; the probe's own bound is readiness_timeout_s.
        client = self._clients[1]
        try:
            return bool(
                await asyncio.wait_for(
                    asyncio.to_thread(client.ping), self.settings.readiness_timeout_s
                )
            )
        except Exception:  # any failure means "not reachable now"
            return False

    def release_versions(self) -> dict[str, str]:
        """Release name -> version served now (empty before the first load)."""
        if not self.models_loaded or self.registry is None:
            return {}
        return {n: r.version for n, r in self.registry.snapshot.releases.items()}

    # ---- operations ------------------------------------------------------------------------

    def registry_or_unavailable(self) -> Registry:
        """The registry once it serves; ApiError(unavailable) before."""
        if self.registry is None or not self.registry.ready:
            raise ApiError("unavailable", "models are not loaded yet, retry later")
        return self.registry

    async def recommend(self, body: RecommendBody, ctx: CallContext) -> RecommendResponse:
        """Serve one recommendation on the user's variant."""
        registry = self.registry_or_unavailable()

        def make_request(variant: Variant) -> RecommendRequest:
            ctx.variant = variant.name
            return body.to_request(variant)

        variant, rec = await registry.recommend(body.user_id, make_request)
        metrics.observe_trace_lookup(rec.trace_status)
        return RecommendResponse.build(variant, rec)

    async def post_events(self, body: EventsBody, ctx: CallContext) -> EventsResponse:
        """Append the events to the user's history and trigger the debounced refresh.

        Raises:
            UnknownItemError: an item no served release knows.
            StoreError: the history store is unavailable (nothing was stored).
        """
        from fast_path.errors import UnknownItemError

        registry = self.registry_or_unavailable()
        ctx.variant = registry.assign(body.user_id).name
        unknown = [e.item_id for e in body.events if not registry.known_item(e.item_id)]
        if unknown:
            raise UnknownItemError(unknown)
        writer = self.history_writer
        assert writer is not None
        items = [e.item_id for e in body.events]
        now = time.time()
        stamps = [now if e.ts is None else e.ts for e in body.events]
        stored = await asyncio.to_thread(writer.append, body.user_id, items, stamps)
        refresh = await self._trigger_refresh(body.user_id)
        return EventsResponse(user_id=body.user_id, stored=stored, refresh=refresh)

    async def _trigger_refresh(self, user_id: str) -> RefreshOutcome:
        if not self.settings.refresh_on_events:
            return "disabled"
        loop = asyncio.get_running_loop()
        try:
            fired = await loop.run_in_executor(self._refresh_pool, self._fire, user_id)
        except Exception as exc:  # broker or Redis trouble: the events are stored anyway
            metrics.observe_refresh("failed")
            log.warning("refresh of user %r not enqueued: %s: %s", user_id, type(exc).__name__, exc)
            return "failed"
        if fired:
            metrics.observe_refresh("enqueued")
            return "enqueued"
        return "not_due"

    def _fire(self, user_id: str) -> bool:
        if self._refresh is None:
            self._refresh = self._make_trigger()
        return bool(self._refresh.on_events([user_id]))

    def _make_trigger(self) -> Any:
        # Lazy: the Celery app (and kombu) load on the first event, and the API never imports
        # the worker's tasks or models — messages go out by task name.
        from slow_path.celery_app import create_app
        from slow_path.refresh import RefreshTrigger

        broker = self.settings.broker_url or self.redis_url
        celery = create_app(self.worker_settings, broker)
        timeout = self.settings.broker_timeout_s
        celery.conf.update(
            # The API never reads task results: without a result backend, sending a task
            # does not subscribe to (and retry) the result store.
            result_backend="disabled",
            broker_connection_timeout=timeout,
            broker_connection_retry=False,
            broker_transport_options={
                **celery.conf.broker_transport_options,
                "socket_timeout": timeout,
                "socket_connect_timeout": timeout,
            },
            # One quick retry, then give up: the caller counts the failure and moves on.
            task_publish_retry_policy={
                "max_retries": 1, "interval_start": 0, "interval_step": 0.1, "interval_max": 0.1,
            },
        )  # fmt: skip
        assert self.history_writer is not None
        return RefreshTrigger(
            celery, self.history_writer, self.worker_settings, self.store_settings
        )

    async def get_trace(self, user_id: str, ctx: CallContext) -> Trace:
        """The user's stored trace.

        Raises:
            ApiError: not_found (no trace), unavailable (the store could not be read).
        """
        ctx.variant = self.registry_or_unavailable().assign(user_id).name
        store = self.trace_store
        assert store is not None
        got = await asyncio.to_thread(store.get_many, [user_id], self.settings.trace_read_budget_s)
        trace = got.hits.get(user_id)
        if trace is not None:
            return trace
        if got.errors or got.timed_out:
            raise StoreError(f"trace of user {user_id!r} could not be read")
        raise ApiError("not_found", f"no trace stored for user {user_id!r}")
