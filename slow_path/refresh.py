"""When traces are refreshed: on new events (debounced) and on the beat schedule (stale scan).

Event-driven (`RefreshTrigger`, called by the API after it appends events to the history
store): `HistoryStore.should_refresh` fires once per threshold crossing and debounce window
per user, so a burst of events enqueues one refresh, not one per event; the users that fired
in one call go out together as one batch.

Beat (`scan_stale`, the `slow_path.refresh_stale` task every `refresh_interval_s`): walks the
users with a history (`SCAN` over `{prefix}:hist:{*}` lists, resuming from a cursor kept in
Redis, `refresh_scan_count` users per run) and enqueues those whose trace is missing, older
than `stale_after_s`, or computed from another history (fingerprint mismatch). A claim key per
user (`{prefix}:refresh:{<user>}`, `SET NX PX refresh_claim_s`) keeps a user from being
enqueued again by the next runs while its refresh waits in the queue.

Neither imports the tasks module: messages go out by task name (`celery_app.send_batches`),
so the API process carries no worker code or worker metrics.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from celery import Celery

from slow_path.celery_app import send_batches
from slow_path.errors import StoreError
from slow_path.history_store import HistoryStore, RedisHistoryStore
from slow_path.settings import StoreSettings
from slow_path.trace import DEFAULT_FINGERPRINT_WINDOW, history_fingerprint
from slow_path.trace_store import RedisTraceStore
from slow_path.worker_settings import WorkerSettings

log = logging.getLogger(__name__)

SCAN_BUDGET_S = 5.0
"""Budget of each batched store read of a beat run."""


class RefreshTrigger:
    """Event-driven refresh with debounce (see the module docstring)."""

    def __init__(
        self,
        celery: Celery,
        history: HistoryStore,
        settings: WorkerSettings,
        store_settings: StoreSettings,
    ) -> None:
        self.celery = celery
        self.history = history
        self.settings = settings
        self.store_settings = store_settings

    def on_events(self, user_ids: Iterable[str]) -> list[str]:
        """Check the users that just got events; enqueue (one batch per `task_batch_size`)
        those whose debounce fired.

        Returns:
            The users whose refresh was enqueued.

        Raises:
            StoreError: the history store failed (the caller decides; events are stored).
        """
        s = self.store_settings
        fired = [
            u
            for u in dict.fromkeys(user_ids)
            if self.history.should_refresh(u, s.refresh_min_new_events, s.refresh_min_interval_s)
        ]
        if fired:
            send_batches(
                self.celery, fired, batch_size=self.settings.task_batch_size,
                queue=self.settings.queue, reason="event",
                countdown=self.settings.event_refresh_delay_s,
            )  # fmt: skip
        return fired


@dataclass(slots=True)
class ScanReport:
    """What one beat run found."""

    examined: int = 0
    """Users with a history looked at."""
    enqueued: list[str] = field(default_factory=list)
    """Users whose refresh was enqueued."""
    missing: int = 0
    """Of them, users without a trace."""
    old: int = 0
    """Of them, users whose trace is older than `stale_after_s`."""
    changed: int = 0
    """Of them, users whose history changed since their trace."""
    wrapped: bool = False
    """The scan reached the end of the keyspace (the next run starts over)."""


def history_user(key: bytes | str, prefix: str) -> str | None:
    """The user id of a history list key `{prefix}:hist:{<user>}` (None for other keys)."""
    raw = key.decode() if isinstance(key, bytes) else key
    head = f"{prefix}:hist:{{"
    if raw.startswith(head) and raw.endswith("}"):
        return raw[len(head) : -1] or None
    return None


def scan_users(client: Any, prefix: str, count: int) -> tuple[list[str], bool]:
    """Up to about `count` users with a history, continuing the cursor kept in Redis.

    Returns:
        (users, wrapped): wrapped is True when the scan completed a pass of the keyspace.
    """
    cursor_key = f"{prefix}:refresh:cursor"
    raw = client.get(cursor_key)
    cursor = int(raw) if raw else 0
    users: list[str] = []
    wrapped = False
    while len(users) < count:
        cursor, keys = client.scan(
            cursor, match=f"{prefix}:hist:{{*}}", count=min(1000, count), _type="list"
        )
        users += [u for u in (history_user(k, prefix) for k in keys) if u is not None]
        if int(cursor) == 0:
            wrapped = True
            break
    client.set(cursor_key, int(cursor))
    return list(dict.fromkeys(users)), wrapped


def claim(client: Any, prefix: str, user_ids: list[str], ttl_s: float) -> list[str]:
    """The users whose refresh nobody claimed in the last `ttl_s` (and claims them)."""
    pipe = client.pipeline(transaction=False)
    ms = max(1, math.ceil(ttl_s * 1000))
    for u in user_ids:
        pipe.set(f"{prefix}:refresh:{{{u}}}", b"1", nx=True, px=ms)
    return [u for u, ok in zip(user_ids, pipe.execute(), strict=True) if ok]


def scan_stale(
    celery: Celery, client: Any, settings: WorkerSettings, store_settings: StoreSettings
) -> ScanReport:
    """One beat run (module docstring). Raises StoreError when Redis fails."""
    prefix = store_settings.key_prefix
    report = ScanReport()
    try:
        users, report.wrapped = scan_users(client, prefix, settings.refresh_scan_count)
        report.examined = len(users)
        if not users:
            return report
        history = RedisHistoryStore.from_settings(client, store_settings)
        traces = RedisTraceStore.from_settings(client, store_settings)
        hist = history.get_many(users, DEFAULT_FINGERPRINT_WINDOW, budget_s=SCAN_BUDGET_S)
        got = traces.get_many(users, budget_s=SCAN_BUDGET_S)
        if hist.unread or got.errors:
            raise StoreError(f"stale scan read {len(hist.unread) + got.errors} users incompletely")
        now = time.time()
        stale = []
        for u in users:
            items = hist.histories.get(u) or []
            if not items:
                continue
            trace = got.hits.get(u)
            if trace is None:
                report.missing += 1
            elif now - trace.created_at > settings.stale_after_s:
                report.old += 1
            elif trace.history_fingerprint != history_fingerprint(items):
                report.changed += 1
            else:
                continue
            stale.append(u)
        report.enqueued = claim(client, prefix, stale, settings.refresh_claim_s)
    except redis.RedisError as exc:
        raise StoreError(f"stale-trace scan failed: {exc}") from None
    if report.enqueued:
        send_batches(
            celery, report.enqueued, batch_size=settings.task_batch_size, queue=settings.queue,
            reason="stale",
        )  # fmt: skip
        for u in report.enqueued:
            history.mark_refreshed(u)
    log.info(
        "stale scan: %d users examined, %d enqueued (%d without trace, %d old, %d changed)",
        report.examined, len(report.enqueued), report.missing, report.old, report.changed,
    )  # fmt: skip
    return report
