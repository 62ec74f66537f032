"""End to end with real processes: a `reasonrec slow-path worker` (Celery, solo pool) on the
session's Redis backfills traces for a 200-user synthetic population enqueued with
`reasonrec slow-path enqueue`; every trace is read back through the TraceStore."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sid_index.records import Dataset
from slow_path.trace_store import RedisTraceStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def cli(
    args: list[str], env: dict[str, str], timeout: float = 90
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "serving.cli", "slow-path", *args],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def test_backfill_200_users(
    start_worker: Any,
    worker_env: dict[str, str],
    sp_release: Path,
    sp_dataset: Dataset,
    redis_client: Any,
) -> None:
    worker = start_worker(["--release", str(sp_release), "--queues", worker_env["REASONREC_QUEUE"]])
    worker.wait_metrics()
    t0 = time.monotonic()
    done = cli(["enqueue", "--all", "--release", str(sp_release), "--batch-size", "25",
                "--timeout", "60"], worker_env)  # fmt: skip
    assert done.returncode == 0, done.stderr + worker.log_tail()
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["users"] == 200 and summary["tasks"] == 8 and summary["written"] == 200
    assert "batches" in done.stderr  # the tqdm progress bar
    elapsed = time.monotonic() - t0

    users = sp_dataset.interactions.user_ids
    store = RedisTraceStore(redis_client, ttl_s=60, key_prefix=worker_env["REASONREC_KEY_PREFIX"])
    got = store.get_many(users, budget_s=10)
    assert sorted(got.hits) == sorted(users) and got.misses == []
    ids = sp_dataset.catalog.item_ids
    for u, seq in zip(users, sp_dataset.interactions, strict=True):
        t = got.hits[u]
        assert t.matches_history([ids[i] for i in seq.items]) and t.model_version == "test-v1"
    keys = list(redis_client.scan_iter(match=f"{worker_env['REASONREC_KEY_PREFIX']}:trace:*"))
    assert len(keys) == 200

    # The worker's metrics, as Prometheus scrapes them.
    assert worker.sample("reasonrec_traces_written_total") == 200
    assert worker.sample("reasonrec_trace_parse_failures_total") == 0
    assert worker.sample("reasonrec_reasoner_batch_seconds_count") >= 8
    text = worker.metrics()
    assert f'reasonrec_queue_depth{{queue="{worker_env["REASONREC_QUEUE"]}"}}' in text

    # Nothing dead-lettered; the worker shuts down cleanly on SIGTERM.
    dead = cli(["dead-letters"], worker_env)
    assert dead.returncode == 0 and dead.stdout == ""
    assert worker.stop() == 0
    print(f"backfill of 200 users through Celery: {elapsed:.1f} s")


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["worker", "--pool", "solo", "--concurrency", "2"], {}, "--concurrency 2"),
        (["enqueue", "--users", "a,b"], {"REDIS_URL": None}, "REDIS_URL is not set"),
        (["enqueue", "--users", "a"], {"REASONREC_TASK_BATCH_SIZE": "0"}, "task_batch_size"),
        (["enqueue", "--all", "--source", "dataset"], {"REDIS_URL": "redis://127.0.0.1:1/0"},
         "unreachable"),
    ],
)  # fmt: skip
def test_cli_errors_are_one_line(
    args: list[str], env: dict[str, str | None], message: str,
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from serving.cli import main

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:1/0")
    for key, value in env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    assert main(["slow-path", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_beat_refreshes_users_with_a_history(
    start_worker: Any,
    worker_env: dict[str, str],
    sp_release: Path,
    sp_dataset: Dataset,
    redis_client: Any,
    tmp_path: Path,
) -> None:
    from slow_path.history_store import RedisHistoryStore

    prefix = worker_env["REASONREC_KEY_PREFIX"]
    env = {**worker_env, "REASONREC_REFRESH_INTERVAL_S": "1"}
    history = RedisHistoryStore(redis_client, key_prefix=prefix)
    ids = sp_dataset.catalog.item_ids
    users = [f"live-{i}" for i in range(5)]
    for i, u in enumerate(users):
        history.append(u, [ids[i], ids[i + 10], ids[i + 20]])
    worker = start_worker(["--release", str(sp_release), "--queues", env["REASONREC_QUEUE"]])
    with (tmp_path / "beat.log").open("wb") as log:
        beat = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "slow-path", "beat", "--loglevel", "INFO"],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            store = RedisTraceStore(redis_client, ttl_s=60, key_prefix=prefix)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(store.get_many(users, 5).hits) < 5:
                assert beat.poll() is None, (tmp_path / "beat.log").read_text()
                time.sleep(0.3)
        finally:
            beat.terminate()
            beat.wait(timeout=20)
    got = store.get_many(users, budget_s=5)
    assert sorted(got.hits) == users, worker.log_tail()
    assert all(got.hits[u].history_fingerprint == history.fingerprint(u) for u in users)
    # The beat claims what it enqueued: one refresh per user, not one per beat tick.
    assert worker.sample("reasonrec_traces_written_total") == 5


def test_plain_celery_worker_command(
    worker_env: dict[str, str], sp_release: Path, sp_dataset: Dataset, redis_client: Any,
    redis_url: str, tmp_path: Path,
) -> None:  # fmt: skip
    """`celery -A slow_path.celery_app worker --pool solo` works too, /metrics included."""
    import urllib.request

    from slow_path.celery_app import app, configure_app, send_batches
    from slow_path.worker_settings import WorkerSettings

    env = {**worker_env, "REASONREC_RELEASE_DIR": str(sp_release)}
    queue, prefix = env["REASONREC_QUEUE"], env["REASONREC_KEY_PREFIX"]
    with (tmp_path / "celery.log").open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "slow_path.celery_app", "worker",
             "--pool", "solo", "-Q", queue, "--loglevel", "INFO"],
            env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            configure_app(app, WorkerSettings(queue=queue), redis_url)
            users = sp_dataset.interactions.user_ids[:10]
            send_batches(app, users, batch_size=5, queue=queue, source="dataset")
            store = RedisTraceStore(redis_client, ttl_s=60, key_prefix=prefix)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and len(store.get_many(users, 5).hits) < 10:
                assert proc.poll() is None, (tmp_path / "celery.log").read_text()
                time.sleep(0.3)
            assert len(store.get_many(users, 5).hits) == 10, (tmp_path / "celery.log").read_text()
            port = env["REASONREC_METRICS_PORT"]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                assert "reasonrec_traces_written_total 10.0" in r.read().decode()
        finally:
            proc.terminate()
            proc.wait(timeout=30)
