"""`reasonrec slow-path ...`: the reasoning workers, their beat, and backfill.

    reasonrec slow-path worker [--queues reasoner-cpu] [--pool solo] [--concurrency 1]
        [--release DIR] [--backend rule|transformers|vllm|module:factory] [--dataset SPEC]
        [--device cpu] [--metrics-port 9100] [--hostname NAME]
    reasonrec slow-path beat
    reasonrec slow-path enqueue (--all | --users u1,u2) [--release DIR] [--dataset SPEC]
        [--source history|dataset] [--batch-size N] [--queue Q] [--timeout S] [--no-wait]
    reasonrec slow-path dead-letters [--limit N]

The worker runs on `REDIS_URL`, or starts an embedded valkey server when it is unset (and logs
its URL so `enqueue` can be pointed at it). It serves `/metrics` (port 9100) before anything
else, uses the solo pool by default (CUDA and forked pools do not mix) and loads the reasoner
on the first task. Heavy modules are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Literal

from sid_index.errors import ConfigError

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the `slow-path` command group to the top-level subparsers."""
    group = subparsers.add_parser(
        "slow-path",
        help="offline reasoning workers (Celery) that cache traces in Redis",
        description="Run reasoning workers and their beat schedule, backfill traces, and "
        "inspect dead letters.",
    )
    actions = group.add_subparsers(dest="slow_path_command", metavar="ACTION")
    group.set_defaults(handler=lambda _args: _print_help(group))

    worker = actions.add_parser("worker", help="run a reasoning worker")
    worker.add_argument("--queues", default=None, help="queues to consume (default: the setting)")
    worker.add_argument("--pool", default="solo", choices=["solo", "threads", "prefork"])
    worker.add_argument("--concurrency", type=int, default=1, help="pool size (solo: 1)")
    worker.add_argument("--release", type=Path, help="release directory (sid_index, reasoner)")
    worker.add_argument("--backend", help="rule, transformers, vllm, or module:factory")
    worker.add_argument("--dataset", help="dataset spec for backfill (default: the release's)")
    worker.add_argument("--device", help="torch device of the transformers backend")
    worker.add_argument("--metrics-port", type=int, help="/metrics port (0: none; default 9100)")
    worker.add_argument("--hostname", help="Celery node name (default reasoner-<pid>@<host>)")
    worker.add_argument("--loglevel", default="INFO")
    worker.set_defaults(handler=_worker)

    beat = actions.add_parser("beat", help="run the refresh schedule (one per deployment)")
    beat.add_argument("--loglevel", default="INFO")
    beat.set_defaults(handler=_beat)

    enqueue = actions.add_parser("enqueue", help="enqueue users for reasoning (backfill)")
    who = enqueue.add_mutually_exclusive_group(required=True)
    who.add_argument("--all", action="store_true", help="every user of the dataset / history")
    who.add_argument("--users", help="comma-separated user ids")
    enqueue.add_argument("--release", type=Path, help="release whose dataset to backfill from")
    enqueue.add_argument("--dataset", help="dataset spec (default: the release's)")
    enqueue.add_argument(
        "--source", choices=["history", "dataset"],
        help="history source (default: dataset when a dataset is known, else history)",
    )  # fmt: skip
    enqueue.add_argument("--batch-size", type=int, help="users per task (default: setting)")
    enqueue.add_argument("--queue", help="queue to send to (default: setting)")
    enqueue.add_argument("--timeout", type=float, default=3600.0, help="seconds to wait")
    enqueue.add_argument("--no-wait", action="store_true", help="return once enqueued")
    enqueue.set_defaults(handler=_enqueue)

    dead = actions.add_parser("dead-letters", help="list users the workers gave up on")
    dead.add_argument("--limit", type=int, default=100)
    dead.set_defaults(handler=_dead_letters)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def _settings(**overrides: Any) -> Any:
    from slow_path.settings import load_settings
    from slow_path.worker_settings import WorkerSettings

    return load_settings(WorkerSettings, **{k: v for k, v in overrides.items() if v is not None})


def _redis_url(*, embedded: bool) -> tuple[str, Any]:
    from slow_path.redis_conn import ensure_redis
    from slow_path.settings import RedisSettings, load_settings

    redis_settings = load_settings(RedisSettings)
    if not embedded and not redis_settings.redis_url:
        raise ConfigError("REDIS_URL is not set: point it at the workers' Redis")
    return ensure_redis(redis_settings)


def _worker(args: argparse.Namespace) -> int:
    # Before anything can import vLLM: its workers must spawn, never fork a CUDA parent.
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
    # Celery 5.x warns on every broker reconnect that cancelling acks-late tasks on connection
    # loss will become the default; the solo pool cannot cancel, redelivery covers it.
    warnings.filterwarnings("ignore", message=r"(?s).*worker_cancel_long_running_tasks")
    if args.pool == "solo" and args.concurrency != 1:
        raise ConfigError(
            f"--pool solo runs one task at a time; got --concurrency {args.concurrency}"
        )
    settings = _settings(
        release_dir=args.release, reasoner_backend=args.backend, dataset_spec=args.dataset,
        device=args.device, metrics_port=args.metrics_port,
    )  # fmt: skip
    url, embedded = _redis_url(embedded=True)
    if embedded is not None:
        log.info("no REDIS_URL: embedded valkey at %s (export REDIS_URL=%s)", url, url)

    from slow_path import worker_metrics
    from slow_path.celery_app import app, configure_app
    from slow_path.redis_conn import redact_url, redis_client
    from slow_path.settings import RedisSettings, load_settings

    # Metrics first: probes must get an answer while the model loads or a batch runs.
    worker_metrics.start_metrics_server(settings.metrics_port)
    sampler_client = redis_client(load_settings(RedisSettings), url, retries=0)
    _check_eviction(sampler_client)
    queues = args.queues or settings.queue
    worker_metrics.QueueDepthSampler(
        sampler_client, [*settings.queues(), *queues.split(",")], settings.queue_depth_interval_s
    ).start()

    configure_app(app, settings, url)
    from slow_path import tasks

    tasks.configure_runtime(settings, url)
    hostname = args.hostname or f"reasoner-{os.getpid()}@{socket.gethostname()}"
    log.info(
        "worker %s: queues %s, pool %s, backend %r, broker %s",
        hostname, queues, args.pool, settings.reasoner_backend, redact_url(url),
    )  # fmt: skip
    argv = [
        "worker", f"--pool={args.pool}", f"--concurrency={args.concurrency}",
        f"--queues={queues}", f"--loglevel={args.loglevel}", f"--hostname={hostname}",
        "--without-gossip", "--without-mingle",
    ]  # fmt: skip
    try:
        app.worker_main(argv)
    except SystemExit as exc:
        return int(exc.code or 0)
    return 0


def _check_eviction(client: Any) -> None:
    """Warn when the broker may evict keys: queued messages would vanish under memory pressure."""
    import redis

    try:
        policy = client.config_get("maxmemory-policy").get(b"maxmemory-policy", b"")
    except redis.RedisError:  # CONFIG is often disabled on managed Redis
        return
    if policy not in (b"noeviction", "noeviction"):
        log.warning("Redis maxmemory-policy is %r; a Celery broker wants noeviction", policy)


def _beat(args: argparse.Namespace) -> int:
    settings = _settings()
    url, _ = _redis_url(embedded=False)
    from slow_path.celery_app import app, configure_app

    configure_app(app, settings, url)
    app.Beat(loglevel=args.loglevel, scheduler="celery.beat:Scheduler").run()
    return 0


def _enqueue(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    settings = _settings(release_dir=args.release, dataset_spec=args.dataset)
    url, _ = _redis_url(embedded=False)
    from slow_path.celery_app import app, configure_app, send_batches

    configure_app(app, settings, url)
    spec = _dataset_spec(settings)
    source: Literal["history", "dataset"] = args.source or (
        "dataset" if spec is not None else "history"
    )
    if source == "dataset" and spec is None:
        raise ConfigError("--source dataset needs --dataset SPEC or a release that records one")
    users = _users(args, settings, source, spec, url)
    if not users:
        raise ConfigError("no users to enqueue")
    batch_size = args.batch_size or settings.task_batch_size
    results = send_batches(
        app, users, batch_size=batch_size, queue=args.queue or settings.queue, source=source,
        dataset=spec if source == "dataset" else None, reason="backfill",
    )  # fmt: skip
    print(f"enqueued {len(users)} users in {len(results)} tasks on {args.queue or settings.queue}")
    if args.no_wait:
        return 0
    return _wait(app, results, len(users), args.timeout, tqdm)


def _dataset_spec(settings: Any) -> str | None:
    if settings.dataset_spec:
        return str(settings.dataset_spec)
    if settings.release_dir is None:
        return None
    from sid_index.release import load_release

    release = load_release(settings.release_dir, require=("sid_index",), verify=False)
    spec = release.manifest.configs.get("sid_index", {}).get("dataset")
    return None if spec is None else str(spec)


def _users(
    args: argparse.Namespace, settings: Any, source: str, spec: str | None, url: str
) -> list[str]:
    if args.users:
        return [u.strip() for u in args.users.split(",") if u.strip()]
    if source == "dataset":
        from sid_index.datasets.registry import load_dataset

        return list(load_dataset(str(spec)).interactions.user_ids)
    from slow_path.redis_conn import redis_client
    from slow_path.refresh import history_user
    from slow_path.settings import RedisSettings, StoreSettings, load_settings

    prefix = load_settings(StoreSettings).key_prefix
    client = redis_client(load_settings(RedisSettings), url)
    users = [
        u
        for u in (
            history_user(k, prefix)
            for k in client.scan_iter(match=f"{prefix}:hist:{{*}}", count=1000, _type="list")
        )
        if u is not None
    ]
    return sorted(set(users))


def _wait(app: Any, results: list[Any], num_users: int, timeout: float, tqdm: Any) -> int:
    """Wait (bounded) for every task, with a progress bar over users."""
    from celery.exceptions import TimeoutError as CeleryTimeout
    from celery.result import ResultSet

    totals: dict[str, int] = {}
    bar = tqdm(total=len(results), desc="batches", unit="task")

    def done(_task_id: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                if isinstance(v, int):
                    totals[k] = totals.get(k, 0) + v
        bar.update(1)
        bar.set_postfix(written=totals.get("written", 0), failed=totals.get("retried", 0))

    t0 = time.monotonic()
    try:
        ResultSet(results, app=app).join_native(timeout=timeout, propagate=False, callback=done)
    except (TimeoutError, CeleryTimeout):
        bar.close()
        print(
            f"timed out after {timeout:.0f} s; {bar.n}/{len(results)} tasks done", file=sys.stderr
        )
        return 1
    bar.close()
    summary = {"users": num_users, "tasks": len(results), **totals,
               "seconds": round(time.monotonic() - t0, 1)}  # fmt: skip
    print(json.dumps(summary))
    return 0


def _dead_letters(args: argparse.Namespace) -> int:
    from slow_path.dead_letter import DeadLetterStore
    from slow_path.redis_conn import redis_client
    from slow_path.settings import RedisSettings, StoreSettings, load_settings

    url, _ = _redis_url(embedded=False)
    client = redis_client(load_settings(RedisSettings), url)
    store = DeadLetterStore(client, load_settings(StoreSettings).key_prefix)
    for d in store.recent(args.limit):
        print(json.dumps({"user": d.user_id, "attempts": d.attempts, "reason": d.reason,
                          "error": d.error, "last_at": d.last_at}))  # fmt: skip
    return 0
