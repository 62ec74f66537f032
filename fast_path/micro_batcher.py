"""`MicroBatcher`: concurrent requests → one `recommend_outcomes` call, on one worker thread.

Policy, for an asyncio server (FastAPI / grpc.aio) in front of one `Recommender`:

- The model runs on a single worker thread, so it is never run concurrently and the event
  loop never blocks on it. Batches are dispatched one after the other; requests that arrive
  while a batch runs queue up and form the next batch.
- Idle server: a request that finds the queue empty is dispatched at once, never delayed by
  `max_wait_s`.
- Busy server (the dispatcher finds more than one request waiting): it keeps gathering until
  `max_batch` requests or until `max_wait_s` after the oldest one arrived, whichever is first.
- Every request is validated on `submit`, before it joins a batch, so a bad request fails
  alone; an error found later (e.g. an empty stored history with cold start off) comes back
  in that request's slot of `recommend_outcomes` and fails only that request.
- The queue is bounded: beyond `max_queue` waiting requests `submit` raises OverloadedError
  at once (serving answers 503 / RESOURCE_EXHAUSTED rather than queueing without bound).
- A caller that gives up (its task is cancelled) is dropped from the batch if not yet sent.
- `stop()` refuses new requests, answers every queued one, then joins the worker thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Protocol

from fast_path.errors import BatcherStoppedError, OverloadedError
from sid_index.errors import ConfigError

if TYPE_CHECKING:
    from fast_path.errors import RequestError
    from fast_path.recommender import Recommendation, RecommendRequest
    from fast_path.settings import RecommenderSettings

log = logging.getLogger(__name__)


class BatchRecommender(Protocol):
    """What the batcher needs of a recommender (`fast_path.recommender.Recommender`)."""

    @property
    def settings(self) -> RecommenderSettings: ...

    def validate(self, request: RecommendRequest) -> None:
        """Raise RequestError for a request that cannot be served (no I/O)."""
        ...

    def recommend_outcomes(
        self, requests: Sequence[RecommendRequest]
    ) -> list[Recommendation | RequestError]:
        """One recommendation or request error per request, in order."""
        ...


@dataclass(frozen=True, slots=True)
class BatchStats:
    """What one dispatched batch looked like (passed to `on_batch`, e.g. for metrics)."""

    size: int
    """Requests in the batch."""
    queued_s: float
    """How long its oldest request waited before the batch was dispatched."""
    run_s: float
    """Wall time of the recommend call (history and trace reads, decode, ranking)."""


@dataclass(slots=True)
class _Pending:
    request: RecommendRequest
    future: asyncio.Future[Recommendation]
    enqueued: float
    """Event-loop time of `submit`."""


class MicroBatcher:
    """Gathers concurrent requests for up to max_wait_s (or max_batch) into one
    recommend_batch call, run in a worker thread; an idle server does not delay a single
    request."""

    def __init__(
        self,
        recommender: BatchRecommender,
        *,
        max_batch: int = 64,
        max_wait_s: float = 0.003,
        max_queue: int = 1024,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        """Args:
        recommender: the loaded release to serve.
        max_batch: most requests per recommend call.
        max_wait_s: longest a busy batcher waits for a fuller batch.
        max_queue: most requests waiting; beyond it submit raises OverloadedError.
        on_batch: called on the event loop after every batch (exceptions are logged).
        """
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ConfigError(
                f"MicroBatcher: {max_batch=} and {max_queue=} must be >= 1, {max_wait_s=} >= 0"
            )
        self.recommender = recommender
        self.max_batch = max_batch
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.on_batch = on_batch
        self._pending: deque[_Pending] = deque()
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._closing = False

    @classmethod
    def from_settings(
        cls,
        recommender: BatchRecommender,
        settings: RecommenderSettings | None = None,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> MicroBatcher:
        """A batcher with the batching settings of `settings` (default: the recommender's)."""
        s = settings or recommender.settings
        return cls(
            recommender,
            max_batch=s.max_batch,
            max_wait_s=s.max_wait_s,
            max_queue=s.max_queue,
            on_batch=on_batch,
        )

    @property
    def running(self) -> bool:
        """True between start() and stop()."""
        return self._task is not None and not self._closing

    @property
    def queue_depth(self) -> int:
        """Requests waiting to be dispatched."""
        return len(self._pending)

    async def start(self) -> None:
        """Start the dispatcher on the running event loop (idempotent)."""
        if self._task is not None:
            return
        self._closing = False
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="reasonrec-batch")
        self._task = asyncio.get_running_loop().create_task(self._run(), name="micro-batcher")

    async def stop(self) -> None:
        """Refuse new requests, answer the queued ones, stop the worker (idempotent)."""
        task, executor = self._task, self._executor
        if task is None:
            return
        self._closing = True
        assert self._wake is not None
        self._wake.set()
        try:
            await task
        finally:
            self._task = None
            self._executor = None
            if executor is not None:
                executor.shutdown(wait=True)

    async def __aenter__(self) -> MicroBatcher:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def submit(self, request: RecommendRequest) -> Recommendation:
        """Queue one request and wait for its recommendation.

        Raises:
            RequestError: the request is invalid (raised at once, before batching).
            OverloadedError: `max_queue` requests are already waiting.
            BatcherStoppedError: the batcher is not running.
        """
        if not self.running or self._wake is None:
            raise BatcherStoppedError("the micro-batcher is not running")
        self.recommender.validate(request)
        if len(self._pending) >= self.max_queue:
            raise OverloadedError(
                f"{len(self._pending)} requests already queued (max_queue={self.max_queue})"
            )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Recommendation] = loop.create_future()
        self._pending.append(_Pending(request, future, loop.time()))
        self._wake.set()
        return await future

    # ---- dispatcher ------------------------------------------------------------------------

    def _take(self, n: int) -> list[_Pending]:
        out: list[_Pending] = []
        while self._pending and len(out) < n:
            out.append(self._pending.popleft())
        return out

    async def _run(self) -> None:
        try:
            await self._loop()
        finally:
            # Only reached with requests still queued if the loop itself failed: never leave a
            # caller waiting forever.
            for p in self._take(len(self._pending)):
                if not p.future.done():
                    p.future.set_exception(BatcherStoppedError("the micro-batcher stopped"))

    async def _loop(self) -> None:
        assert self._wake is not None
        wake = self._wake
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                if self._closing:
                    return
                wake.clear()
                await wake.wait()
            # Idle (one request waiting, nothing in flight — batches run one at a time):
            # dispatch now. Busy: gather up to max_batch or max_wait_s after the oldest.
            busy = len(self._pending) > 1
            batch = self._take(self.max_batch)
            if busy and self.max_wait_s > 0:
                deadline = batch[0].enqueued + self.max_wait_s
                while len(batch) < self.max_batch and not self._closing:
                    remaining = deadline - loop.time()
                    if remaining <= 0:
                        break
                    if not self._pending:
                        wake.clear()
                        try:
                            await asyncio.wait_for(wake.wait(), remaining)
                        except TimeoutError:
                            break
                    batch.extend(self._take(self.max_batch - len(batch)))
            await self._dispatch(batch, loop)

    async def _dispatch(self, batch: list[_Pending], loop: asyncio.AbstractEventLoop) -> None:
        live = [p for p in batch if not p.future.done()]  # callers that gave up are dropped
        if not live:
            return
        started = loop.time()
        try:
            outcomes = await loop.run_in_executor(
                self._executor, self.recommender.recommend_outcomes, [p.request for p in live]
            )
        except Exception as exc:  # a failure of the whole batch (not of one request)
            log.exception("recommend batch of %d requests failed", len(live))
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
        else:
            for p, outcome in zip(live, outcomes, strict=True):
                if p.future.done():
                    continue
                if isinstance(outcome, BaseException):
                    p.future.set_exception(outcome)
                else:
                    p.future.set_result(outcome)
        if self.on_batch is not None:
            stats = BatchStats(
                size=len(live),
                queued_s=started - min(p.enqueued for p in live),
                run_s=loop.time() - started,
            )
            try:
                self.on_batch(stats)
            except Exception:
                log.exception("on_batch callback failed")
