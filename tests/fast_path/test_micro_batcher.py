"""MicroBatcher: batching of concurrent submits, no delay when idle, per-request errors,
bounded queue, cancellation and shutdown. A recording wrapper around a real Recommender
counts the batches and can slow them down to make the server busy on purpose."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from typing import Any

import pytest

from fast_path.errors import (
    BatcherStoppedError,
    EmptyHistoryError,
    OverloadedError,
    UnknownItemError,
)
from fast_path.micro_batcher import BatchStats, MicroBatcher
from fast_path.recommender import Recommendation, Recommender, RecommendRequest
from fast_path.settings import RecommenderSettings
from sid_index.errors import ConfigError


class Recording:
    """Delegates to a Recommender; records batch sizes, dispatch times and worker threads."""

    def __init__(self, inner: Recommender, delay_s: float = 0.0) -> None:
        self.inner = inner
        self.settings = inner.settings
        self.delay_s = delay_s
        self.sizes: list[int] = []
        self.dispatched: list[float] = []
        self.threads: set[int] = set()
        self.running = 0
        self.max_running = 0
        self._lock = threading.Lock()

    def validate(self, request: RecommendRequest) -> None:
        self.inner.validate(request)

    def recommend_outcomes(self, requests: Sequence[RecommendRequest]) -> list[Any]:
        with self._lock:
            self.sizes.append(len(requests))
            self.dispatched.append(time.perf_counter())
            self.threads.add(threading.get_ident())
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(self.delay_s)
            return self.inner.recommend_outcomes(requests)
        finally:
            with self._lock:
                self.running -= 1


def _requests(release: Any, n: int, k: int = 3) -> list[RecommendRequest]:
    return [
        RecommendRequest(f"m{u}", history=release.history(u), k=k, num_beams=6) for u in range(n)
    ]


def _ids(rec: Recommendation) -> list[str]:
    return [it.item_id for it in rec.items]


def test_concurrent_submits_are_batched_and_answer_like_direct_calls(
    make_recommender: Any, tiny_release: Any
) -> None:
    rec = make_recommender()
    wrapped = Recording(rec)
    requests = _requests(tiny_release, 8)
    stats: list[BatchStats] = []

    async def main() -> list[Recommendation]:
        async with MicroBatcher(wrapped, max_wait_s=0.05, on_batch=stats.append) as batcher:
            return await asyncio.gather(*(batcher.submit(r) for r in requests))

    got = asyncio.run(main())
    assert sum(wrapped.sizes) == 8 and max(wrapped.sizes) > 1
    assert [s.size for s in stats] == wrapped.sizes
    direct = rec.recommend_batch(requests)
    assert [_ids(g) for g in got] == [_ids(d) for d in direct]
    assert len(wrapped.threads) == 1 and wrapped.max_running == 1


def test_a_lone_request_on_an_idle_server_is_not_delayed(
    make_recommender: Any, tiny_release: Any
) -> None:
    wrapped = Recording(make_recommender())
    max_wait = 1.0
    waits: list[float] = []

    async def main() -> None:
        async with MicroBatcher(wrapped, max_wait_s=max_wait) as batcher:
            for r in _requests(tiny_release, 3):
                t0 = time.perf_counter()
                await batcher.submit(r)
                waits.append(wrapped.dispatched[-1] - t0)

    asyncio.run(main())
    assert wrapped.sizes == [1, 1, 1]
    # Dispatched long before max_wait_s would have expired (typically well under 1 ms).
    assert max(waits) < max_wait / 10


def test_a_busy_server_gathers_the_requests_that_arrive_meanwhile(
    make_recommender: Any, tiny_release: Any
) -> None:
    wrapped = Recording(make_recommender(), delay_s=0.3)
    a, b, c, d = _requests(tiny_release, 4)

    async def main() -> None:
        async with MicroBatcher(wrapped, max_wait_s=0.002) as batcher:
            first = asyncio.create_task(batcher.submit(a))
            await asyncio.sleep(0.05)  # `a` runs alone; b, c, d arrive while it runs
            rest = []
            for r in (b, c, d):
                rest.append(asyncio.create_task(batcher.submit(r)))
                await asyncio.sleep(0.01)
            await asyncio.gather(first, *rest)

    asyncio.run(main())
    assert wrapped.sizes == [1, 3]


def test_max_batch_caps_the_batch(make_recommender: Any, tiny_release: Any) -> None:
    wrapped = Recording(make_recommender())

    async def main() -> None:
        async with MicroBatcher(wrapped, max_batch=3, max_wait_s=0.01) as batcher:
            await asyncio.gather(*(batcher.submit(r) for r in _requests(tiny_release, 7)))

    asyncio.run(main())
    assert sum(wrapped.sizes) == 7 and max(wrapped.sizes) == 3


def test_one_bad_request_does_not_break_the_others(
    make_recommender: Any, tiny_release: Any, history_store: Any
) -> None:
    # cold_start off: a user without stored history fails inside the batch, after validation.
    wrapped = Recording(make_recommender(history_store=history_store, cold_start=False))
    good = _requests(tiny_release, 3)
    unknown = RecommendRequest("x", history=("no-such-item",))
    no_history = RecommendRequest("nobody")

    async def main() -> list[Any]:
        async with MicroBatcher(wrapped, max_wait_s=0.05) as batcher:
            calls = [batcher.submit(r) for r in (good[0], unknown, good[1], no_history, good[2])]
            return await asyncio.gather(*calls, return_exceptions=True)

    out = asyncio.run(main())
    assert isinstance(out[1], UnknownItemError)  # refused at submit, never batched
    assert isinstance(out[3], EmptyHistoryError)  # failed inside its batch
    assert all(isinstance(out[i], Recommendation) for i in (0, 2, 4))
    assert sum(wrapped.sizes) == 4 and max(wrapped.sizes) > 1


def test_a_failing_batch_fails_only_its_own_requests(
    make_recommender: Any, tiny_release: Any
) -> None:
    wrapped = Recording(make_recommender())
    boom = {"on": True}
    inner = wrapped.recommend_outcomes

    def flaky(requests: Sequence[RecommendRequest]) -> list[Any]:
        if boom.pop("on", False):
            raise RuntimeError("model exploded")
        return inner(requests)

    wrapped.recommend_outcomes = flaky  # type: ignore[method-assign]
    r1, r2 = _requests(tiny_release, 2)

    async def main() -> tuple[Any, Any]:
        async with MicroBatcher(wrapped) as batcher:
            first = await asyncio.gather(batcher.submit(r1), return_exceptions=True)
            return first[0], await batcher.submit(r2)

    failed, ok = asyncio.run(main())
    assert isinstance(failed, RuntimeError) and isinstance(ok, Recommendation)


def test_a_full_queue_is_refused_at_once(make_recommender: Any, tiny_release: Any) -> None:
    wrapped = Recording(make_recommender(), delay_s=0.3)
    reqs = _requests(tiny_release, 4)

    async def main() -> list[Any]:
        async with MicroBatcher(wrapped, max_queue=2) as batcher:
            running = asyncio.create_task(batcher.submit(reqs[0]))
            await asyncio.sleep(0.05)  # dispatched: the queue is empty again
            queued = [asyncio.create_task(batcher.submit(r)) for r in reqs[1:3]]
            await asyncio.sleep(0)
            assert batcher.queue_depth == 2
            t0 = time.perf_counter()
            with pytest.raises(OverloadedError, match="max_queue=2"):
                await batcher.submit(reqs[3])
            assert time.perf_counter() - t0 < 0.1  # refused, not queued behind the batch
            return await asyncio.gather(running, *queued)

    assert all(isinstance(r, Recommendation) for r in asyncio.run(main()))


def test_a_cancelled_caller_is_dropped_before_dispatch(
    make_recommender: Any, tiny_release: Any
) -> None:
    wrapped = Recording(make_recommender(), delay_s=0.2)
    a, b, c = _requests(tiny_release, 3)

    async def main() -> None:
        async with MicroBatcher(wrapped) as batcher:
            first = asyncio.create_task(batcher.submit(a))
            await asyncio.sleep(0.05)
            gave_up = asyncio.create_task(batcher.submit(b))
            kept = asyncio.create_task(batcher.submit(c))
            await asyncio.sleep(0)
            gave_up.cancel()
            await asyncio.gather(first, kept)

    asyncio.run(main())
    assert wrapped.sizes == [1, 1]


def test_stop_answers_queued_requests_and_refuses_new_ones(
    make_recommender: Any, tiny_release: Any
) -> None:
    wrapped = Recording(make_recommender(), delay_s=0.1)
    reqs = _requests(tiny_release, 5)

    async def main() -> list[Any]:
        batcher = MicroBatcher(wrapped)
        with pytest.raises(BatcherStoppedError):
            await batcher.submit(reqs[0])
        await batcher.start()
        tasks = [asyncio.create_task(batcher.submit(r)) for r in reqs]
        await asyncio.sleep(0.01)
        await batcher.stop()
        assert all(t.done() for t in tasks)
        with pytest.raises(BatcherStoppedError):
            await batcher.submit(reqs[0])
        await batcher.stop()  # idempotent
        return [t.result() for t in tasks]

    assert all(isinstance(r, Recommendation) for r in asyncio.run(main()))


def test_settings_from_the_environment_and_bad_config(
    make_recommender: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REASONREC_MAX_WAIT_S", "0.01")
    monkeypatch.setenv("REASONREC_MAX_QUEUE", "9")
    rec = make_recommender(max_batch=7)
    b = MicroBatcher.from_settings(rec)
    assert (b.max_batch, b.max_wait_s, b.max_queue) == (7, 0.01, 9)
    with pytest.raises(ConfigError, match="max_batch"):
        MicroBatcher(rec, max_batch=0)
    monkeypatch.setenv("REASONREC_MAX_BATCH", "many")
    with pytest.raises(ConfigError, match="max_batch='many'"):
        RecommenderSettings.load()
    monkeypatch.delenv("REASONREC_MAX_BATCH")
    with pytest.raises(ConfigError, match="k_max=200 must be <= beams_max=128"):
        RecommenderSettings.load(k_max=200)
    with pytest.raises(ConfigError, match="device"):
        RecommenderSettings.load(device="tpu")
