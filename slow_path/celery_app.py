"""The slow path's Celery app: Redis broker and result backend, at-least-once settings, the
task payload (the wire contract) and the helper that sends batches of users.

`app` is built at import from the environment (`REDIS_URL`, `REASONREC_*` worker settings) so
`celery -A slow_path.celery_app worker` works; nothing connects at import. The `reasonrec
slow-path` commands call `configure_app` with the URL they resolved (`REDIS_URL`, or an
embedded server started by the worker) and their command-line overrides.

Delivery semantics (FIELD_NOTES "Celery + Redis"):
- `task_acks_late`, `worker_prefetch_multiplier=1`, `task_reject_on_worker_lost`: a message is
  acknowledged only after its task returns, so a killed worker's batch is delivered again
  (after the visibility timeout, by any worker that is up); tasks are idempotent.
- tasks stay far below `visibility_timeout` (settings refuse `time_limit >= visibility/2`;
  a batch is `task_batch_size` users and re-enqueues what it could not finish in time).
- JSON only (no pickle) for messages and results; beat keeps its schedule in memory
  (`celery.beat:Scheduler`), not in a shelve (pickle) file.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Literal

from celery import Celery
from celery.result import AsyncResult
from pydantic import BaseModel, ConfigDict, Field, field_validator

from sid_index.errors import ConfigError
from slow_path.settings import RedisSettings, load_settings
from slow_path.worker_settings import WorkerSettings

REASON_TASK = "slow_path.reason_batch"
"""Name of the task that reasons about a batch of users and writes their traces."""
REFRESH_TASK = "slow_path.refresh_stale"
"""Name of the beat task that finds stale traces and enqueues their refresh."""
MAX_BATCH_USERS = 4096
"""Largest batch a payload may carry."""


class ReasonBatch(BaseModel):
    """Payload of `slow_path.reason_batch` (validated by the worker before any work)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    user_ids: list[str] = Field(min_length=1, max_length=MAX_BATCH_USERS)
    """Users to reason about (duplicates are processed once)."""
    source: Literal["history", "dataset"] = "history"
    """Where histories come from: the Redis history store, or a dataset (backfill)."""
    dataset: str | None = None
    """Dataset spec when `source` is `dataset` (None: the release's own dataset)."""
    requested_at: float = Field(gt=0)
    """Unix seconds of the request; written as each trace's `created_at`, so a redelivered
    or retried batch writes identical traces (an equal stamp overwrites) and an older request
    never replaces the trace of a newer one."""
    attempt: int = Field(default=1, ge=1)
    """1 for the first try of these users; parse-failure retries count up."""
    reason: Literal["backfill", "event", "stale", "manual", "retry", "rest"] = "manual"
    """What enqueued the batch (kept in dead letters and logs)."""

    @field_validator("user_ids")
    @classmethod
    def _non_empty_ids(cls, v: list[str]) -> list[str]:
        if any(not u for u in v):
            raise ValueError("user ids must be non-empty strings")
        return v


def create_app(settings: WorkerSettings | None = None, broker_url: str | None = None) -> Celery:
    """A configured app (no connection is made here)."""
    celery = Celery("reasonrec-slow-path", include=["slow_path.tasks"])
    configure_app(celery, settings or WorkerSettings(), broker_url)
    return celery


def configure_app(celery: Celery, settings: WorkerSettings, broker_url: str | None) -> None:
    """Apply `settings` and the Redis URL (None: leave the URL unset) to `celery`."""
    visibility = settings.visibility_timeout_s
    transport = {
        "visibility_timeout": visibility,
        # Sweep for abandoned (unacknowledged) messages often enough that a killed worker's
        # batch comes back soon after its visibility timeout, not up to ~100 s later.
        "unacked_restore_interval": max(1, min(10, int(visibility / 4))),
        "unacked_restore_throttle": 1,
        "socket_timeout": 30,
        "socket_connect_timeout": 5,
        "health_check_interval": 10,
    }
    conf: dict[str, Any] = {
        "task_serializer": "json",
        "result_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": settings.queue,
        "task_soft_time_limit": settings.soft_time_limit_s,
        "task_time_limit": settings.time_limit_s,
        "broker_transport_options": transport,
        "result_backend_transport_options": {"socket_timeout": 30, "socket_connect_timeout": 5},
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,  # a worker outlives any Redis restart
        # Store results through a Redis restart instead of failing the finished task.
        "result_backend_always_retry": True,
        "result_backend_max_retries": 30,
        "result_expires": settings.result_expires_s,
        # The solo pool cannot cancel a running task; redelivery covers connection loss.
        "worker_cancel_long_running_tasks_on_connection_loss": False,
        "worker_soft_shutdown_timeout": settings.soft_shutdown_timeout_s,
        "worker_hijack_root_logger": False,
        "beat_scheduler": "celery.beat:Scheduler",
        "beat_schedule": {
            "refresh-stale-traces": {
                "task": REFRESH_TASK,
                "schedule": settings.refresh_interval_s,
                "options": {"queue": settings.queue, "expires": settings.refresh_interval_s},
            }
        },
    }
    if broker_url is not None:
        if celery.conf.broker_url not in (None, broker_url):
            _drop_connections(celery)
        conf["broker_url"] = broker_url
        conf["result_backend"] = broker_url
    celery.conf.update(conf)


def _drop_connections(celery: Celery) -> None:
    """Forget the pools and result backend built for the previous URL (Celery caches them on
    first use; this is what it does itself after a fork)."""
    celery._pool = None
    amqp = celery.__dict__.get("amqp")
    if amqp is not None:
        amqp._producer_pool = None
    celery._backend_cache = None
    if hasattr(celery._local, "backend"):
        del celery._local.backend


def send_batches(
    celery: Celery,
    user_ids: Sequence[str],
    *,
    batch_size: int,
    queue: str,
    source: Literal["history", "dataset"] = "history",
    dataset: str | None = None,
    reason: Literal["backfill", "event", "stale", "manual", "retry", "rest"] = "manual",
    attempt: int = 1,
    requested_at: float | None = None,
    countdown: float = 0.0,
) -> list[AsyncResult]:
    """Enqueue `user_ids` in tasks of at most `batch_size` users (one message per batch)."""
    if not 1 <= batch_size <= MAX_BATCH_USERS:
        raise ConfigError(f"{batch_size=} must be in [1, {MAX_BATCH_USERS}]")
    stamp = time.time() if requested_at is None else requested_at
    users = list(dict.fromkeys(user_ids))
    out = []
    for lo in range(0, len(users), batch_size):
        payload = ReasonBatch(
            user_ids=users[lo : lo + batch_size],
            source=source,
            dataset=dataset,
            requested_at=stamp,
            attempt=attempt,
            reason=reason,
        )
        out.append(
            celery.send_task(
                REASON_TASK,
                args=[payload.model_dump()],
                queue=queue,
                countdown=countdown or None,
            )
        )
    return out


def _from_environment() -> Celery:
    settings = load_settings(WorkerSettings)
    return create_app(settings, load_settings(RedisSettings).redis_url)


app = _from_environment()
"""The process's app (`celery -A slow_path.celery_app ...`)."""
