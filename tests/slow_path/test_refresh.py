"""When traces are refreshed: the debounced event trigger enqueues once, the beat scan finds
missing, old and out-of-date traces (and not fresh ones), resumes its cursor and never
enqueues a waiting user twice."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest

from slow_path.celery_app import app, configure_app
from slow_path.history_store import RedisHistoryStore
from slow_path.refresh import RefreshTrigger, history_user, scan_stale
from slow_path.settings import StoreSettings
from slow_path.trace import Candidate, Interest, Persona, Trace, Transition, history_fingerprint
from slow_path.trace_store import RedisTraceStore
from slow_path.worker_settings import WorkerSettings


def queued(client: Any, queue: str) -> list[dict[str, Any]]:
    out = []
    for raw in client.lrange(queue, 0, -1):
        out.append(json.loads(base64.b64decode(json.loads(raw)["body"]))[0][0])
    return out


def trace(user: str, items: list[str], created_at: float) -> Trace:
    return Trace(
        user_id=user, persona=Persona(0, "p"), interests=[Interest((1,), 1.0, "x")],
        transition=Transition("t", 0), candidates=[Candidate("i", 0.0)], text="",
        model_version="v", history_fingerprint=history_fingerprint(items), created_at=created_at,
    )  # fmt: skip


@pytest.fixture
def env(redis_url: str, redis_client: Any) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    settings = WorkerSettings(queue=f"q-{tag}", task_batch_size=2, stale_after_s=3600,
                              refresh_scan_count=100)  # fmt: skip
    configure_app(app, settings, redis_url)
    store = StoreSettings(key_prefix=tag, refresh_min_new_events=3, refresh_min_interval_s=60)
    return {
        "settings": settings,
        "store": store,
        "history": RedisHistoryStore.from_settings(redis_client, store),
        "traces": RedisTraceStore(redis_client, ttl_s=600, key_prefix=tag, read_budget_s=5),
    }


def test_event_refresh_is_debounced(env: dict[str, Any], redis_client: Any) -> None:
    trigger = RefreshTrigger(app, env["history"], env["settings"], env["store"])
    fired = []
    for i in range(8):  # a burst of events for u1, and two for u2
        env["history"].append("u1", [f"i{i}"])
        if i < 2:
            env["history"].append("u2", [f"j{i}"])
        fired += trigger.on_events(["u1", "u2"])
    assert fired == ["u1"]  # threshold crossed once; later events fall in the debounce window
    sent = queued(redis_client, env["settings"].queue)
    assert [(p["user_ids"], p["reason"], p["source"]) for p in sent] == [
        (["u1"], "event", "history")
    ]


def test_stale_scan_finds_missing_old_and_changed(env: dict[str, Any], redis_client: Any) -> None:
    history, traces = env["history"], env["traces"]
    now = time.time()
    items = {u: [f"{u}-a", f"{u}-b"] for u in ("fresh", "missing", "old", "changed")}
    for u, its in items.items():
        history.append(u, its)
    traces.put(trace("fresh", items["fresh"], now - 10))
    traces.put(trace("old", items["old"], now - 7200))
    traces.put(trace("changed", ["something-else"], now - 10))
    traces.put(trace("no-history", ["x"], now - 7200))
    report = scan_stale(app, redis_client, env["settings"], env["store"])
    assert report.examined == 4 and report.wrapped
    assert sorted(report.enqueued) == ["changed", "missing", "old"]
    assert (report.missing, report.old, report.changed) == (1, 1, 1)
    sent = queued(redis_client, env["settings"].queue)
    assert sorted(u for p in sent for u in p["user_ids"]) == ["changed", "missing", "old"]
    assert all(p["reason"] == "stale" and len(p["user_ids"]) <= 2 for p in sent)
    # Claimed: the next run does not enqueue them again while they wait.
    assert scan_stale(app, redis_client, env["settings"], env["store"]).enqueued == []


def test_scan_resumes_its_cursor(env: dict[str, Any], redis_client: Any) -> None:
    history = env["history"]
    users = [f"u{i}" for i in range(60)]
    for u in users:
        history.append(u, ["a"])
    settings = env["settings"].model_copy(update={"refresh_scan_count": 10})
    seen: set[str] = set()
    for _ in range(30):
        report = scan_stale(app, redis_client, settings, env["store"])
        seen |= set(report.enqueued)
        if report.wrapped:
            break
    assert seen == set(users)


def test_history_user_parses_only_history_lists() -> None:
    assert history_user(b"rr:hist:{alice}", "rr") == "alice"
    assert history_user("rr:hist:{a:b}", "rr") == "a:b"
    assert history_user(b"rr:hist:{alice}:new", "rr") is None
    assert history_user(b"rr:trace:{alice}", "rr") is None
