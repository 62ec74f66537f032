"""`WorkerRuntime`: what one worker process holds between tasks, built lazily.

Nothing here loads at import or at worker start: the Redis client and stores on first use,
the release's SID index and the reasoner (a model, for the transformers and vLLM backends)
on the first task (or in `worker_process_init` of a prefork child) — after Celery has forked,
so CUDA is never initialized in a parent that forks.

Histories come from the Redis history store (live users) or from a dataset (backfill: the
release's own dataset by default). Either way a user's prompt is built from the catalogue
rows of their most recent known items, and the trace's fingerprint from the raw item ids, as
the fast path computes it (`Trace.matches_history`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sid_index.errors import ConfigError
from slow_path.dead_letter import DeadLetterStore
from slow_path.errors import StoreError
from slow_path.history_store import RedisHistoryStore
from slow_path.reasoner.base import Reasoner, ReasonerConfig, get_reasoner
from slow_path.redis_conn import redis_client
from slow_path.settings import RedisSettings, StoreSettings, load_settings
from slow_path.trace import DEFAULT_FINGERPRINT_WINDOW, history_fingerprint
from slow_path.trace_store import RedisTraceStore
from slow_path.worker_settings import WorkerSettings

if TYPE_CHECKING:
    from sid_index.records import Dataset
    from sid_index.sid_index import SIDIndex

log = logging.getLogger(__name__)

STORE_READ_BUDGET_S = 5.0
"""Budget of the worker's batched store reads (the worker is not latency-bound)."""


@dataclass(frozen=True, slots=True)
class UserHistory:
    """One user's history as the reasoner and the trace need it."""

    rows: np.ndarray
    """(T,) int64 catalogue rows of the known items, oldest first (T >= 1)."""
    fingerprint: str
    """`history_fingerprint` of the raw item ids (unknown items included)."""


class WorkerRuntime:
    """Per-process state of a worker (see the module docstring). Thread-safe lazy loading."""

    def __init__(
        self,
        settings: WorkerSettings,
        redis_url: str | None = None,
        *,
        store_settings: StoreSettings | None = None,
        redis_settings: RedisSettings | None = None,
    ) -> None:
        self.settings = settings
        self.redis_settings = redis_settings or load_settings(RedisSettings)
        self.store_settings = store_settings or load_settings(StoreSettings)
        self.redis_url = redis_url or self.redis_settings.redis_url
        self._lock = threading.RLock()
        self._client: Any = None
        self._index: SIDIndex | None = None
        self._version = "dev"
        self._reasoner: Reasoner | None = None
        self._dataset_spec: str | None = None
        self._datasets: dict[str, tuple[Dataset, dict[str, int]]] = {}

    # -- stores ------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The Redis client of the stores (socket timeouts from the Redis settings)."""
        with self._lock:
            if self._client is None:
                if not self.redis_url:
                    raise ConfigError("the worker has no Redis URL (set REDIS_URL)")
                self._client = redis_client(self.redis_settings, self.redis_url, retries=0)
            return self._client

    @property
    def traces(self) -> RedisTraceStore:
        return RedisTraceStore.from_settings(self.client, self.store_settings)

    @property
    def history(self) -> RedisHistoryStore:
        return RedisHistoryStore.from_settings(self.client, self.store_settings)

    @property
    def dead_letters(self) -> DeadLetterStore:
        return DeadLetterStore(self.client, self.store_settings.key_prefix)

    # -- release -----------------------------------------------------------------------------

    def index(self) -> SIDIndex:
        """The release's SID index (loaded once)."""
        with self._lock:
            if self._index is None:
                self._load_release()
            assert self._index is not None
            return self._index

    def _load_release(self) -> None:
        from sid_index.release import load_release
        from sid_index.sid_index import SIDIndex

        if self.settings.release_dir is None:
            raise ConfigError("the worker needs a release (--release DIR or REASONREC_RELEASE_DIR)")
        release = load_release(self.settings.release_dir, require=("sid_index",))
        self._index = SIDIndex.load(release.part("sid_index"))
        self._version = release.version
        recorded = release.manifest.configs.get("sid_index", {}).get("dataset")
        self._dataset_spec = self.settings.dataset_spec or (
            str(recorded) if recorded is not None else None
        )
        log.info(
            "release %s (version %s): %d items", release.path, release.version, len(self._index)
        )

    def reasoner_config(self) -> ReasonerConfig:
        """The reasoner configuration of these settings (loads the release for its version)."""
        self.index()
        s = self.settings
        return ReasonerConfig(
            release_dir=s.release_dir,
            persona_model=s.persona_model,
            model_version=self._version,
            thinking=s.thinking,
            max_think_tokens=s.max_think_tokens,
            num_answers=s.num_answers,
            max_history_items=s.max_history_items,
            batch_size=s.reasoner_batch_size,
            device=s.device,
            dtype=s.dtype,
        )

    def reasoner(self) -> Reasoner:
        """The reasoner backend (built on first use: this is where a model loads)."""
        with self._lock:
            if self._reasoner is None:
                if self.settings.torch_threads:
                    import torch

                    torch.set_num_threads(self.settings.torch_threads)
                index = self.index()
                self._reasoner = get_reasoner(
                    self.settings.reasoner_backend, self.reasoner_config(), index=index
                )
                log.info(
                    "reasoner %r ready (%s)", self._reasoner.name, self._reasoner.model_version
                )
            return self._reasoner

    # -- histories ---------------------------------------------------------------------------

    def dataset(self, spec: str | None) -> tuple[Dataset, dict[str, int]]:
        """A dataset for backfill (default: the release's) and its user id → row map."""
        from sid_index.datasets.registry import load_dataset

        self.index()
        spec = spec or self._dataset_spec
        if spec is None:
            raise ConfigError(
                "no dataset for backfill: the release records none; pass --dataset SPEC"
            )
        with self._lock:
            if spec not in self._datasets:
                data = load_dataset(spec)
                self._datasets = {
                    spec: (data, {u: i for i, u in enumerate(data.interactions.user_ids)})
                }
            return self._datasets[spec]

    def histories(
        self, user_ids: Sequence[str], source: str, dataset: str | None
    ) -> dict[str, UserHistory]:
        """Histories of the users that have one with at least one catalogue item.

        Raises:
            StoreError: the history store failed (the task retries).
        """
        index = self.index()
        window = max(DEFAULT_FINGERPRINT_WINDOW, self.settings.max_history_items)
        raw: dict[str, list[str]]
        if source == "dataset":
            data, row_of = self.dataset(dataset)
            ids = data.catalog.item_ids
            raw = {}
            for u in user_ids:
                r = row_of.get(u)
                if r is not None:
                    seq = data.interactions.sequence(r).items[-window:]
                    raw[u] = [ids[int(i)] for i in seq]
        else:
            got = self.history.get_many(user_ids, window, budget_s=STORE_READ_BUDGET_S)
            if got.unread:
                raise StoreError(f"history of {len(got.unread)} users unread (Redis error or slow)")
            raw = got.histories
        out: dict[str, UserHistory] = {}
        unknown = 0
        for u, item_ids in raw.items():
            rows = [index.catalog.get_index(i) for i in item_ids]
            known = np.array([r for r in rows if r is not None], dtype=np.int64)
            unknown += len(rows) - len(known)
            if len(known):
                out[u] = UserHistory(known, history_fingerprint(item_ids))
        if unknown:
            log.debug("%d history items are not in the release's catalogue", unknown)
        return out
