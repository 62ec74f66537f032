"""`UserContextReader`: a batch's histories and traces, read from the stores within time budgets.

Steps 1 and 2 of `Recommender` (see `fast_path.recommender`), each one batched store read:

1. history: the request's own, else one budgeted read of the history store. An unreadable
   history becomes an empty one (a cold start, `history_source="error"`); no store configured
   is `"none"`. Items the catalogue does not know stay in the raw history (fingerprints are
   computed from it) but are marked -1 in `UserContext.known`.
2. trace: one budgeted read of the trace store. A trace is used when its history fingerprint
   matches the current history (or, with `trace_max_lag`, the history minus its newest few
   events); a missing, stale, corrupt or unreadable trace degrades to no-trace mode and
   `trace_status` says why ("miss", "stale", "error") — never an error.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fast_path.records import RecommendRequest
from fast_path.settings import RecommenderSettings
from sid_index.errors import ReasonrecError
from sid_index.records import Catalog
from slow_path.errors import TraceError
from slow_path.history_store import HistoryStore
from slow_path.trace import DEFAULT_FINGERPRINT_WINDOW, Trace, history_fingerprint
from slow_path.trace_store import TraceStore

log = logging.getLogger(__name__)


@dataclass(slots=True)
class UserContext:
    """What the stores say about one request's user: history, and the trace if usable."""

    request: RecommendRequest
    history: list[str]
    """Raw item ids, oldest first (what fingerprints are computed from)."""
    history_source: str
    """One of `fast_path.records.HISTORY_SOURCES`."""
    known: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(T,) catalogue index of each raw history item, -1 for unknown ones."""
    trace: Trace | None = None
    """The trace to use; None unless `trace_status` is "hit"."""
    trace_status: str = "disabled"
    """One of `fast_path.records.TRACE_STATUSES`."""
    trace_at: int | None = None
    """Known items of the prompt window that come before the trace (None: no trace)."""


class UserContextReader:
    """Budgeted, batched history and trace reads for one loaded release. Thread-safe (no
    mutable state of its own; the stores are)."""

    def __init__(
        self,
        catalog: Catalog,
        level_sizes: Sequence[int],
        *,
        history_store: HistoryStore | None,
        trace_store: TraceStore | None,
        settings: RecommenderSettings,
        history_window: int,
    ) -> None:
        """Args:
        level_sizes: the SID index's per-level code sizes (traces must fit them).
        history_window: newest known history items the prompt holds.
        """
        self.catalog = catalog
        self.level_sizes = tuple(level_sizes)
        self.history_store = history_store
        self.trace_store = trace_store
        self.settings = settings
        self.history_window = history_window
        # Enough raw events to fingerprint the history as it was `trace_max_lag` events ago.
        self._fetch_n = max(history_window, DEFAULT_FINGERPRINT_WINDOW + settings.trace_max_lag)

    def read_histories(
        self, requests: Mapping[int, RecommendRequest]
    ) -> tuple[dict[int, UserContext], float]:
        """One context per request slot, with its raw history.

        Returns:
            The contexts by slot, and the history store read's seconds (0 when none was read).
        """
        t0 = time.perf_counter()
        stored: dict[str, list[str]] = {}
        unread: set[str] = set()
        need = [r.user_id for r in requests.values() if r.history is None]
        if need and self.history_store is not None:
            try:
                got = self.history_store.get_many(
                    need, self._fetch_n, self.settings.history_budget_s
                )
                stored, unread = got.histories, set(got.unread)
            except ReasonrecError as exc:  # e.g. a malformed stored event
                log.warning("history read of %d users failed: %s", len(need), exc)
                unread = set(need)
        elapsed = time.perf_counter() - t0 if need else 0.0
        contexts: dict[int, UserContext] = {}
        for slot, r in requests.items():
            if r.history is not None:
                history, source = list(r.history), "request"
            elif self.history_store is None:
                history, source = [], "none"
            elif r.user_id in unread:
                history, source = [], "error"
            else:
                history, source = list(stored.get(r.user_id, [])), "store"
            known = np.fromiter(
                (-1 if (j := self.catalog.get_index(i)) is None else j for i in history),
                dtype=np.int64,
                count=len(history),
            )
            contexts[slot] = UserContext(r, history, source, known)
        return contexts, elapsed

    def read_traces(self, contexts: Sequence[UserContext]) -> float:
        """Read the traces of the contexts that want one and decide whether each is usable.

        Returns:
            The trace store read's seconds (0 when none was read).
        """
        wanted = [c for c in contexts if c.request.use_trace and self.trace_store is not None]
        if not wanted or self.trace_store is None:
            return 0.0
        t0 = time.perf_counter()
        users = [c.request.user_id for c in wanted]
        try:
            got = self.trace_store.get_many(users, self.settings.trace_budget_s)
            hits, troubled = got.hits, bool(got.errors or got.timed_out)
        except ReasonrecError as exc:  # the store contract says it never raises; belt and braces
            log.warning("trace read of %d users failed: %s", len(users), exc)
            hits, troubled = {}, True
        elapsed = time.perf_counter() - t0
        for ctx in wanted:
            trace = hits.get(ctx.request.user_id)
            if trace is None:
                # A batch cut short does not say which users it did not reach.
                ctx.trace_status = "error" if troubled else "miss"
                continue
            ctx.trace_at = self._trace_cut(trace, ctx)
            ctx.trace_status = "stale" if ctx.trace_at is None else "hit"
            ctx.trace = trace if ctx.trace_at is not None else None
        return elapsed

    def _trace_cut(self, trace: Trace, ctx: UserContext) -> int | None:
        """Where the trace goes in the prompt window (items before it), None when stale."""
        max_age = self.settings.trace_max_age_s
        if max_age is not None and time.time() - trace.created_at > max_age:
            return None
        try:  # a trace computed against another SID index cannot be read by this model
            trace.check_prefixes(self.level_sizes)
        except TraceError:
            return None
        n = len(ctx.history)
        for lag in range(min(self.settings.trace_max_lag, n) + 1):
            if history_fingerprint(ctx.history[: n - lag]) == trace.history_fingerprint:
                known = ctx.known >= 0
                before = int(known[: n - lag].sum())  # known items the trace covers
                dropped = max(int(known.sum()) - self.history_window, 0)  # older than the window
                return max(before - dropped, 0)
        return None
