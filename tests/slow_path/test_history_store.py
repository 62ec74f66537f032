"""HistoryStore contract tests over both implementations (capping, order, fingerprints, the
refresh debounce under concurrency), plus Redis specifics on a real server."""

from __future__ import annotations

import threading
import time

import pytest
import redis

from sid_index.errors import ConfigError, DataError
from slow_path.errors import StoreError
from slow_path.history_store import (
    HistoryEvent,
    HistoryStore,
    MemoryHistoryStore,
    RedisHistoryStore,
)
from slow_path.redis_conn import redis_client
from slow_path.settings import RedisSettings, StoreSettings, load_settings
from slow_path.trace import history_fingerprint


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> HistoryStore:
    """Each contract test runs against the reference and the Redis implementation."""
    if request.param == "memory":
        return MemoryHistoryStore(max_len=5)
    return RedisHistoryStore(request.getfixturevalue("redis_client"), max_len=5)


def test_append_and_read_oldest_first(store: HistoryStore) -> None:
    assert store.append("u", ["a", "b"], [100.0, 101.5]) == 2
    assert store.append("u", ["c"], [102.25]) == 3
    assert store.get("u", 10) == ["a", "b", "c"]
    assert store.get("u", 2) == ["b", "c"]
    assert store.get_events("u", 1) == [HistoryEvent("c", 102.25)]
    assert store.get("nobody", 3) == []


def test_history_is_capped_to_the_newest(store: HistoryStore) -> None:
    assert store.append("u", [f"i{k}" for k in range(4)]) == 4
    assert store.append("u", [f"i{k}" for k in range(4, 9)]) == 5
    assert store.get("u", 100) == ["i4", "i5", "i6", "i7", "i8"]


def test_default_timestamps_are_now_and_ids_may_hold_spaces(store: HistoryStore) -> None:
    t0 = time.time()
    store.append("u", ["item with spaces", "x"])
    events = store.get_events("u", 5)
    assert [e.item_id for e in events] == ["item with spaces", "x"]
    assert all(t0 - 0.01 <= e.ts <= time.time() + 0.01 for e in events)


def test_bad_input(store: HistoryStore) -> None:
    with pytest.raises(DataError, match="2 timestamps for 1 items"):
        store.append("u", ["a"], [1.0, 2.0])
    with pytest.raises(DataError, match="item ids"):
        store.append("u", ["a", ""])
    with pytest.raises(DataError, match="finite"):
        store.append("u", ["a"], [float("nan")])
    with pytest.raises(DataError, match="user id"):
        store.append("", ["a"])
    with pytest.raises(ConfigError, match="n=0"):
        store.get("u", 0)
    assert store.get("u", 5) == []  # nothing half-written


def test_fingerprint_follows_the_history(store: HistoryStore) -> None:
    store.append("u", ["a", "b", "c"])
    fp = store.fingerprint("u")
    assert fp == history_fingerprint(["a", "b", "c"])
    assert store.fingerprint("u", n=2) == history_fingerprint(["b", "c"], n=2)
    store.append("u", ["d"])
    assert store.fingerprint("u") != fp
    assert store.fingerprint("u") == history_fingerprint(store.get("u", 50))


def test_get_many(store: HistoryStore) -> None:
    store.append("a", ["1", "2", "3"])
    store.append("b", ["9"])
    batch = store.get_many(["a", "b", "c", "a"], n=2, budget_s=1.0)
    assert batch.histories == {"a": ["2", "3"], "b": ["9"], "c": []}
    assert batch.unread == [] and not batch.timed_out


def test_delete(store: HistoryStore) -> None:
    store.append("u", ["a"] * 3)
    store.delete("u")
    assert store.get("u", 5) == []
    assert store.should_refresh("u", 1, 0) is False


# -- refresh debounce -------------------------------------------------------------------------


def test_refresh_fires_once_per_threshold_crossing(store: HistoryStore) -> None:
    fired = []
    for k in range(12):
        store.append("u", [f"i{k}"])
        fired.append(store.should_refresh("u", min_new_events=4, min_interval_s=0))
    assert fired == [False, False, False, True] * 3
    store.append("u", ["a", "b", "c", "d", "e"])  # a batch crosses at once
    assert store.should_refresh("u", 4, 0) is True
    assert store.should_refresh("u", 4, 0) is False


def test_mark_refreshed_resets_the_count(store: HistoryStore) -> None:
    store.append("u", ["a", "b", "c"])
    store.mark_refreshed("u")
    store.append("u", ["d"])
    assert store.should_refresh("u", 3, 0) is False
    store.append("u", ["e", "f"])
    assert store.should_refresh("u", 3, 0) is True


def test_concurrent_checks_fire_exactly_once_per_crossing(store: HistoryStore) -> None:
    threads_n, rounds = 8, 5
    wins: list[int] = []
    lock = threading.Lock()
    barrier = threading.Barrier(threads_n)

    def checker(r: int) -> None:
        barrier.wait()
        if store.should_refresh("hot", min_new_events=10, min_interval_s=0):
            with lock:
                wins.append(r)

    for r in range(rounds):
        store.append("hot", [f"i{r}-{k}" for k in range(10)])
        threads = [threading.Thread(target=checker, args=(r,)) for _ in range(threads_n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert wins == list(range(rounds))


def test_concurrent_events_fire_once_within_the_debounce(store: HistoryStore) -> None:
    fired: list[bool] = []
    lock = threading.Lock()
    barrier = threading.Barrier(6)

    def producer(t: int) -> None:
        barrier.wait()
        for k in range(20):
            store.append("hot", [f"t{t}-{k}"])
            got = store.should_refresh("hot", min_new_events=3, min_interval_s=60)
            with lock:
                fired.append(got)

    threads = [threading.Thread(target=producer, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sum(fired) == 1 and len(fired) == 120


def test_debounce_window_memory() -> None:
    clock = FakeClock()
    store = MemoryHistoryStore(clock=clock)
    store.append("u", ["a", "b"])
    assert store.should_refresh("u", 2, min_interval_s=30) is True
    store.append("u", ["c", "d", "e"])
    assert store.should_refresh("u", 2, 30) is False  # crossed again, but debounced
    clock.now += 29.9
    assert store.should_refresh("u", 2, 30) is False
    clock.now += 0.2
    assert store.should_refresh("u", 2, 30) is True  # the events kept counting


def test_debounce_window_redis(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client)
    store.append("u", ["a", "b"])
    assert store.should_refresh("u", 2, min_interval_s=0.25) is True
    assert 0 < redis_client.pttl(store.key("u", "debounce")) <= 250
    store.append("u", ["c", "d"])
    assert store.should_refresh("u", 2, 0.25) is False
    time.sleep(0.35)
    assert store.should_refresh("u", 2, 0.25) is True


def test_debounce_arguments_are_validated(store: HistoryStore) -> None:
    with pytest.raises(ConfigError, match="min_new_events=0"):
        store.should_refresh("u", 0, 1)
    with pytest.raises(ConfigError, match="min_interval_s=-1"):
        store.should_refresh("u", 1, -1)


# -- Redis specifics ------------------------------------------------------------------------------


def test_redis_layout_and_ttl(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client, max_len=3, key_prefix="rrt", ttl_s=100)
    store.append("user:1", ["a", "b"], [1.5, 2.0])
    assert store.key("user:1") == "rrt:hist:{user:1}"
    assert redis_client.lrange("rrt:hist:{user:1}", 0, -1) == [b"1.500 a", b"2.000 b"]
    assert redis_client.get("rrt:hist:{user:1}:new") == b"2"
    for key in ("rrt:hist:{user:1}", "rrt:hist:{user:1}:new"):
        assert 99_000 < redis_client.pttl(key) <= 100_000
    # Without a TTL the history is kept.
    RedisHistoryStore(redis_client, key_prefix="rrk").append("u", ["a"])
    assert redis_client.pttl("rrk:hist:{u}") == -1


def test_from_settings(redis_client: redis.Redis) -> None:
    settings = load_settings(StoreSettings, key_prefix="cfg", history_max_len=2, history_ttl_s=50)
    store = RedisHistoryStore.from_settings(redis_client, settings)
    assert store.append("u", ["a", "b", "c"]) == 2
    assert redis_client.lrange("cfg:hist:{u}", 0, -1)[-1].endswith(b" c")
    assert 40_000 < redis_client.pttl("cfg:hist:{u}") <= 50_000


def test_redis_malformed_event_is_a_store_error(redis_client: redis.Redis) -> None:
    store = RedisHistoryStore(redis_client)
    redis_client.rpush(store.key("u"), b"no-timestamp-here")
    with pytest.raises(StoreError, match="malformed event"):
        store.get("u", 5)


def _client(host: str, port: int) -> redis.Redis:
    return redis_client(
        load_settings(RedisSettings), f"redis://{host}:{port}/0", socket_timeout_s=5.0,
        connect_timeout_s=1.0, retries=0,
    )  # fmt: skip


def test_redis_stalled_server_budget(silent_server: tuple[str, int]) -> None:
    store = RedisHistoryStore(_client(*silent_server))
    t0 = time.monotonic()
    batch = store.get_many(["a", "b", "c"], n=10, budget_s=0.1)
    assert time.monotonic() - t0 < 1.0
    assert batch.timed_out and batch.histories == {} and batch.unread == ["a", "b", "c"]


def test_redis_unreachable(closed_port: int) -> None:
    store = RedisHistoryStore(_client("127.0.0.1", closed_port))
    batch = store.get_many(["a"], n=10, budget_s=0.5)
    assert batch.unread == ["a"] and not batch.timed_out
    for call in (
        lambda: store.append("a", ["x"]),
        lambda: store.get("a", 3),
        lambda: store.should_refresh("a", 1, 0),
        lambda: store.mark_refreshed("a"),
        lambda: store.delete("a"),
    ):
        with pytest.raises(StoreError, match="'a'"):
            call()
