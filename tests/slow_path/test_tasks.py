"""The batch pipeline of the reasoning task, in process, on a real Redis-compatible server:
histories from the dataset and from the history store, traces read back, idempotent reruns,
parse failures → retry → dead letter, the soft time budget, metrics."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from sid_index.records import Dataset
from sid_index.sid_index import SIDIndex
from slow_path.celery_app import ReasonBatch, app, configure_app
from slow_path.dead_letter import DeadLetterStore
from slow_path.reasoner import ReasonerConfig, ReasonerOutput, ReasonRequest, register_reasoner
from slow_path.reasoner.rule_backend import RuleReasoner
from slow_path.settings import StoreSettings
from slow_path.tasks import run_batch
from slow_path.trace import history_fingerprint
from slow_path.worker_runtime import WorkerRuntime
from slow_path.worker_settings import WorkerSettings


class GarbageForSome(RuleReasoner):
    """The rule backend, but users whose id ends in 0 get text with no usable thought."""

    def reason(self, requests: Sequence[ReasonRequest]) -> list[ReasonerOutput]:
        out = super().reason(requests)
        return [
            ReasonerOutput("<persona>no token</think>junk", o.answers, o.scores, 7)
            if q.user_id.endswith("0")
            else o
            for q, o in zip(requests, out, strict=True)
        ]


register_reasoner("garbage-for-some", GarbageForSome)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


def queued(client: Any, queue: str) -> list[dict[str, Any]]:
    """Payloads of the reasoning tasks waiting in a Celery queue (kombu's JSON envelope)."""
    out = []
    for raw in client.lrange(queue, 0, -1):
        body = json.loads(base64.b64decode(json.loads(raw)["body"]))
        out.append(body[0][0])
    return out


@pytest.fixture
def make_runtime(redis_url: str, redis_client: Any, sp_release: Path) -> Iterator[Any]:
    tag = uuid.uuid4().hex[:8]

    def make(**overrides: Any) -> WorkerRuntime:
        settings = WorkerSettings(
            release_dir=sp_release, queue=f"q-{tag}", task_batch_size=50, user_max_attempts=2,
            **overrides,
        )  # fmt: skip
        configure_app(app, settings, redis_url)
        return WorkerRuntime(settings, redis_url, store_settings=StoreSettings(key_prefix=tag))

    yield make


def batch(users: list[str], **kw: Any) -> ReasonBatch:
    return ReasonBatch(user_ids=users, requested_at=kw.pop("requested_at", time.time()), **kw)


def test_backfill_from_the_dataset(
    make_runtime: Any, sp_dataset: Dataset, redis_client: Any
) -> None:
    rt = make_runtime()
    users = sp_dataset.interactions.user_ids[:30]
    written_before = metric("reasonrec_traces_written_total")
    stamp = time.time() - 5
    report = run_batch(rt, batch(users, source="dataset", requested_at=stamp))
    assert sorted(report.written) == sorted(users) and not report.retried and not report.dead
    assert metric("reasonrec_traces_written_total") - written_before == 30
    got = rt.traces.get_many(users, budget_s=5)
    assert sorted(got.hits) == sorted(users)
    ids = sp_dataset.catalog.item_ids
    for u in users:
        t = got.hits[u]
        seq = sp_dataset.interactions.sequence(sp_dataset.interactions.user_ids.index(u)).items
        assert t.matches_history([ids[i] for i in seq])
        assert t.model_version == "test-v1" and t.created_at == pytest.approx(stamp, abs=1e-6)
        assert t.candidates and all(c.item_id in set(ids) for c in t.candidates)
        assert t.text.startswith("<persona>")


def test_rerun_is_idempotent_and_older_requests_lose(make_runtime: Any, redis_client: Any) -> None:
    rt = make_runtime()
    users = ["1", "2", "3"]
    stamp = time.time() - 60
    run_batch(rt, batch(users, source="dataset", requested_at=stamp))
    keys = [rt.traces.key(u) for u in users]
    first = redis_client.mget(keys)
    again = run_batch(rt, batch(users, source="dataset", requested_at=stamp))
    assert sorted(again.written) == users  # an equal stamp overwrites ...
    assert redis_client.mget(keys) == first  # ... with identical bytes
    older = run_batch(rt, batch(users, source="dataset", requested_at=stamp - 30))
    assert older.written == [] and sorted(older.refused) == users
    assert redis_client.mget(keys) == first


def test_histories_from_the_history_store(
    make_runtime: Any, sp_index: SIDIndex, redis_client: Any
) -> None:
    rt = make_runtime()
    ids = sp_index.catalog.item_ids
    rt.history.append("alice", [ids[3], ids[40], ids[41], "not-in-catalogue"])
    rt.history.append("bob", [ids[7]])
    rt.history.append("ghost", ["unknown-1", "unknown-2"])
    before = rt.traces.get("alice")
    assert before is None
    report = run_batch(rt, batch(["alice", "bob", "ghost", "nobody"]))
    assert sorted(report.written) == ["alice", "bob"]
    assert sorted(report.no_history) == ["ghost", "nobody"]
    alice = rt.traces.get("alice", budget_s=5)
    assert alice is not None and alice.history_fingerprint == rt.history.fingerprint("alice")
    assert alice.history_fingerprint == history_fingerprint(
        [ids[3], ids[40], ids[41], "not-in-catalogue"]
    )
    # Seen items are not recommended back.
    assert not {c.item_id for c in alice.candidates} & {ids[3], ids[40], ids[41]}


def test_trace_age_is_observed_when_a_trace_is_replaced(make_runtime: Any) -> None:
    rt = make_runtime()
    run_batch(rt, batch(["5"], source="dataset", requested_at=time.time() - 400))

    def bucket(le: str) -> float:
        return REGISTRY.get_sample_value("reasonrec_trace_age_seconds_bucket", {"le": le}) or 0.0

    count, b300, b900 = (
        metric("reasonrec_trace_age_seconds_count"),
        bucket("300.0"),
        bucket("900.0"),
    )
    run_batch(rt, batch(["5"], source="dataset"))
    # The replaced trace was ~400 s old: counted in the 900 s bucket, not the 300 s one.
    assert metric("reasonrec_trace_age_seconds_count") == count + 1
    assert bucket("300.0") == b300 and bucket("900.0") == b900 + 1


def test_parse_failures_are_retried_then_dead_lettered(
    make_runtime: Any, redis_client: Any
) -> None:
    rt = make_runtime(reasoner_backend="garbage-for-some")
    users = [str(i) for i in range(1, 25)]  # "10" and "20" get garbage
    failures = metric("reasonrec_trace_parse_failures_total")
    dead = metric("reasonrec_dead_letters_total")
    stamp = time.time()
    first = run_batch(rt, batch(users, source="dataset", requested_at=stamp), task_id="t1")
    assert sorted(first.retried) == ["10", "20"] and len(first.written) == 22
    assert metric("reasonrec_trace_parse_failures_total") - failures == 2
    retry = queued(redis_client, rt.settings.queue)
    assert len(retry) == 1
    assert retry[0]["user_ids"] == ["10", "20"] and retry[0]["attempt"] == 2
    assert retry[0]["reason"] == "retry" and retry[0]["requested_at"] == stamp
    # The retried batch (attempt 2 = user_max_attempts) fails again: dead letters.
    last = run_batch(rt, ReasonBatch.model_validate(retry[0]), task_id="t2")
    assert sorted(last.dead) == ["10", "20"] and last.retried == []
    assert metric("reasonrec_dead_letters_total") - dead == 2
    letters = DeadLetterStore(redis_client, rt.store_settings.key_prefix)
    record = letters.get("10")
    assert record is not None and record.attempts == 2 and record.task_id == "t2"
    assert "chain of thought" in record.error or "persona" in record.error
    assert rt.traces.get("10", budget_s=5) is None
    # A later good run (another backend) writes the trace and clears the dead letter.
    good = make_runtime()
    run_batch(good, batch(["10"], source="dataset"))
    assert letters.get("10") is None and good.traces.get("10", budget_s=5) is not None


def test_soft_time_budget_re_enqueues_the_rest(make_runtime: Any, redis_client: Any) -> None:
    rt = make_runtime(reasoner_batch_size=4)
    users = [str(i) for i in range(12)]
    report = run_batch(rt, batch(users, source="dataset"), deadline=time.monotonic() - 1)
    assert len(report.written) == 4 and report.rest == users[4:]
    rest = queued(redis_client, rt.settings.queue)
    assert [p["user_ids"] for p in rest] == [users[4:]] and rest[0]["reason"] == "rest"


def test_payload_validation() -> None:
    with pytest.raises(ValueError, match="user_ids"):
        ReasonBatch(user_ids=[], requested_at=1.0)
    with pytest.raises(ValueError, match="non-empty"):
        ReasonBatch(user_ids=["a", ""], requested_at=1.0)
    with pytest.raises(ValueError, match="extra"):
        ReasonBatch.model_validate({"user_ids": ["a"], "requested_at": 1.0, "bogus": 1})
    assert ReasonerConfig(num_answers=0).num_answers == 0
