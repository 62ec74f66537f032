"""The slow path's Celery tasks and the batch pipeline they run.

`slow_path.reason_batch(payload)` — one batch of users (`celery_app.ReasonBatch`):

1. load histories (Redis history store, or the backfill dataset); users without one are
   skipped;
2. reason in chunks of `reasoner_batch_size` (metrics: batch latency, generated tokens);
   past the soft time budget, the rest of the batch is re-enqueued instead (the solo pool
   cannot enforce Celery's time limits, so the task enforces its own);
3. parse every output with the one CoT parser into a `Trace` (`created_at` = the payload's
   `requested_at`, so re-running a batch writes identical traces);
4. write them with `TraceStore.put_many` (never over a newer trace); count written traces and
   the age of the traces they replace; clear the users' dead letters;
5. users whose output did not parse are counted and re-enqueued (attempt + 1, backoff) until
   `user_max_attempts`, then dead-lettered — the worker itself never fails on bad text.

Store trouble is retried inside the task for `STORE_RETRY_S` (a Redis restart), then by
Celery with exponential backoff up to `task_max_retries`; after that the batch's users are
dead-lettered. `slow_path.refresh_stale` is the beat schedule's scan (`slow_path.refresh`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np
import redis
import torch
from celery import Task
from celery.exceptions import Retry
from celery.signals import worker_init, worker_process_init
from pydantic import ValidationError

from sid_index.errors import ConfigError, ReasonrecError
from slow_path import worker_metrics as metrics
from slow_path.celery_app import REASON_TASK, REFRESH_TASK, ReasonBatch, app, send_batches
from slow_path.cot_format import parse_completion, to_trace
from slow_path.dead_letter import DeadLetter
from slow_path.errors import StoreError, TraceError
from slow_path.reasoner.base import Reasoner, ReasonRequest
from slow_path.trace import Candidate, Trace
from slow_path.worker_runtime import STORE_READ_BUDGET_S, UserHistory, WorkerRuntime
from slow_path.worker_settings import WorkerSettings

log = logging.getLogger(__name__)

STORE_RETRY_S = 30.0
"""How long a task keeps retrying a failing store call (backoff 0.1 s → 2 s) before it
hands the batch to Celery's retry."""
RETRY_BASE_S = 1.0
"""Celery retry backoff: RETRY_BASE_S · 2^retries (capped, with jitter)."""
_RETRYABLE = (StoreError, redis.RedisError, OSError)
T = TypeVar("T")


@dataclass(slots=True)
class BatchReport:
    """What one batch did (the task's JSON result)."""

    written: list[str] = field(default_factory=list)
    """Users whose trace was stored."""
    refused: list[str] = field(default_factory=list)
    """Users whose stored trace was newer (left as it was)."""
    no_history: list[str] = field(default_factory=list)
    """Users without a usable history (nothing to reason about)."""
    retried: list[str] = field(default_factory=list)
    """Users whose output did not parse, re-enqueued for another attempt."""
    dead: list[str] = field(default_factory=list)
    """Users dead-lettered by this batch."""
    rest: list[str] = field(default_factory=list)
    """Users re-enqueued because the batch ran out of its time budget."""
    tokens: int = 0
    """Tokens the reasoner generated."""

    def to_json(self) -> dict[str, Any]:
        return {
            "written": len(self.written),
            "refused": len(self.refused),
            "no_history": len(self.no_history),
            "retried": len(self.retried),
            "dead": len(self.dead),
            "rest": len(self.rest),
            "tokens": self.tokens,
        }


def with_store_retries(fn: Callable[[], T], budget_s: float = STORE_RETRY_S) -> T:
    """Call `fn`, retrying store/connection errors with backoff for up to `budget_s`."""
    deadline = time.monotonic() + budget_s
    delay = 0.1
    while True:
        try:
            return fn()
        except _RETRYABLE as exc:
            if time.monotonic() + delay > deadline:
                raise
            log.warning("store call failed (%s); retrying in %.1f s", exc, delay)
            time.sleep(delay)
            delay = min(2.0, delay * 2)


def build_traces(
    reasoner: Reasoner,
    trie_items: Callable[[Sequence[tuple[int, ...]]], list[int]],
    item_ids: Sequence[str],
    requests: Sequence[ReasonRequest],
    outputs: Sequence[Any],
    histories: dict[str, UserHistory],
    created_at: float,
) -> tuple[list[Trace], dict[str, str]]:
    """Parse outputs into traces; returns (traces, {user: why it failed})."""
    traces: list[Trace] = []
    failed: dict[str, str] = {}
    # One trie walk for every answer of the batch, then split per output.
    all_rows = trie_items([a for out in outputs for a in out.answers])
    bounds = np.cumsum([0, *(len(out.answers) for out in outputs)]).tolist()
    for k, (req, out) in enumerate(zip(requests, outputs, strict=True)):
        parsed = parse_completion(
            out.text, level_sizes=reasoner.level_sizes, num_personas=reasoner.num_personas
        )
        rows = all_rows[bounds[k] : bounds[k + 1]]
        candidates = [
            Candidate(item_ids[r], float(s))
            for r, s in zip(rows, out.scores, strict=True)
            if r >= 0 and np.isfinite(s)
        ]
        try:
            traces.append(
                to_trace(
                    parsed,
                    user_id=req.user_id,
                    model_version=reasoner.model_version,
                    history_fingerprint=histories[req.user_id].fingerprint,
                    candidates=candidates,
                    text=out.text,
                    persona_names=reasoner.persona_names,
                    created_at=created_at,
                )
            )
        except TraceError as exc:
            detail = "; ".join(parsed.problems[:5])
            failed[req.user_id] = f"{exc}" + (f" ({detail})" if detail else "")
    return traces, failed


def answer_rows(index: Any) -> Callable[[Sequence[tuple[int, ...]]], list[int]]:
    """SIDs → catalogue rows through the trie (-1 for a SID that names no item)."""
    trie = index.trie

    def rows(sids: Sequence[tuple[int, ...]]) -> list[int]:
        good = [s for s in sids if len(s) == trie.num_levels]
        if not good:
            return [-1] * len(sids)
        codes = torch.tensor(good, dtype=torch.int64)  # (K, L)
        states = trie.root_state(len(good))
        for level in range(trie.num_levels):
            states = trie.advance(states, codes[:, level])
        found = iter(trie.leaf_item(states).tolist())
        return [next(found) if len(s) == trie.num_levels else -1 for s in sids]

    return rows


def run_batch(
    runtime: WorkerRuntime,
    batch: ReasonBatch,
    *,
    task_id: str = "",
    deadline: float | None = None,
) -> BatchReport:
    """Reason about one batch and store its traces (see the module docstring)."""
    settings = runtime.settings
    report = BatchReport()
    users = list(dict.fromkeys(batch.user_ids))
    histories = with_store_retries(lambda: runtime.histories(users, batch.source, batch.dataset))
    report.no_history = [u for u in users if u not in histories]
    reasoner = runtime.reasoner()
    index = runtime.index()
    requests = [ReasonRequest(u, histories[u].rows) for u in users if u in histories]
    outputs: list[Any] = []
    done: list[ReasonRequest] = []
    step = settings.reasoner_batch_size
    for lo in range(0, len(requests), step):
        chunk = requests[lo : lo + step]
        if deadline is not None and time.monotonic() > deadline and done:
            report.rest = [r.user_id for r in requests[lo:]]
            break
        t0 = time.monotonic()
        outs = reasoner.reason(chunk)
        metrics.BATCH_SECONDS.observe(time.monotonic() - t0)
        tokens = sum(o.num_tokens for o in outs)
        metrics.REASONER_TOKENS.inc(tokens)
        report.tokens += tokens
        outputs += outs
        done += chunk
    traces, failed = build_traces(
        reasoner, answer_rows(index), index.catalog.item_ids, done, outputs, histories,
        batch.requested_at,
    )  # fmt: skip
    metrics.PARSE_FAILURES.inc(len(failed))
    for user, why in failed.items():
        log.warning("user %r: unusable reasoner output (attempt %d): %s", user, batch.attempt, why)

    if traces:
        store = runtime.traces
        ids = [t.user_id for t in traces]
        before = with_store_retries(lambda: store.get_many(ids, budget_s=STORE_READ_BUDGET_S))
        wrote = with_store_retries(lambda: store.put_many(traces))
        now = time.time()
        for trace, ok in zip(traces, wrote, strict=True):
            (report.written if ok else report.refused).append(trace.user_id)
            old = before.hits.get(trace.user_id)
            if ok and old is not None:
                metrics.TRACE_AGE.observe(max(0.0, now - old.created_at))
        metrics.TRACES_WRITTEN.inc(len(report.written))
        with_store_retries(lambda: runtime.dead_letters.resolve(report.written))

    if failed:
        _retry_or_dead_letter(runtime, batch, failed, task_id, report)
    if report.rest:
        send_batches(
            app, report.rest, batch_size=settings.task_batch_size, queue=settings.queue,
            source=batch.source, dataset=batch.dataset, reason="rest", attempt=batch.attempt,
            requested_at=batch.requested_at,
        )  # fmt: skip
    return report


def _retry_or_dead_letter(
    runtime: WorkerRuntime,
    batch: ReasonBatch,
    failed: dict[str, str],
    task_id: str,
    report: BatchReport,
) -> None:
    settings = runtime.settings
    if batch.attempt < settings.user_max_attempts:
        report.retried = list(failed)
        send_batches(
            app, report.retried, batch_size=settings.task_batch_size, queue=settings.queue,
            source=batch.source, dataset=batch.dataset, reason="retry",
            attempt=batch.attempt + 1, requested_at=batch.requested_at,
            countdown=min(settings.retry_backoff_max_s, RETRY_BASE_S * 2 ** (batch.attempt - 1)),
        )  # fmt: skip
        return
    report.dead = list(failed)
    letters = [
        DeadLetter(u, f"unusable reasoner output: {why}", batch.attempt, batch.reason, task_id)
        for u, why in failed.items()
    ]
    with_store_retries(lambda: runtime.dead_letters.record(letters))
    metrics.DEAD_LETTERS.inc(len(letters))


# -- the process's runtime ------------------------------------------------------------------

_runtime: WorkerRuntime | None = None


def configure_runtime(settings: WorkerSettings, redis_url: str | None) -> WorkerRuntime:
    """Set the runtime of this process (the `reasonrec slow-path worker` command does, with
    its command-line settings; otherwise the first task builds it from the environment)."""
    global _runtime
    _runtime = WorkerRuntime(settings, redis_url)
    return _runtime


def runtime() -> WorkerRuntime:
    """This process's runtime."""
    global _runtime
    if _runtime is None:
        from slow_path.settings import load_settings

        _runtime = WorkerRuntime(load_settings(WorkerSettings), app.conf.broker_url)
    return _runtime


@worker_init.connect
def _on_worker_init(**_: Any) -> None:
    url = str(app.conf.broker_url or "")
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(
            f"slow-path worker needs a Redis broker (REDIS_URL), got {url or 'none'!r}"
        )
    os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # never fork a CUDA parent
    # `celery -A slow_path.celery_app worker` gets /metrics too (the reasonrec command has
    # already started it, before anything else, and this is then a no-op).
    rt = runtime()
    if metrics.start_metrics_server(rt.settings.metrics_port):
        queues = rt.settings.queues()
        metrics.QueueDepthSampler(rt.client, queues, rt.settings.queue_depth_interval_s).start()


@worker_process_init.connect
def _load_in_child(**_: Any) -> None:
    # Prefork children load their model after the fork (CUDA cannot cross a fork).
    try:
        runtime().reasoner()
    except ReasonrecError as exc:
        log.error("reasoner not loaded at child start: %s (retried at the first task)", exc)


# -- tasks ------------------------------------------------------------------------------------


class _ReasonTask(Task):
    # Class-level defaults; the effective limits come from the settings at run time.
    acks_late = True
    reject_on_worker_lost = True


@app.task(bind=True, base=_ReasonTask, name=REASON_TASK)
def reason_batch(self: Task, payload: dict[str, Any]) -> dict[str, Any]:
    """Reason about a batch of users and write their traces (module docstring)."""
    try:
        batch = ReasonBatch.model_validate(payload)
    except ValidationError as exc:
        # A malformed message never becomes valid: log it and drop it (acknowledged).
        log.error("dropping malformed reason_batch payload: %s", exc)
        return {"error": "malformed payload"}
    rt = runtime()
    settings = rt.settings
    deadline = time.monotonic() + settings.soft_time_limit_s
    try:
        report = run_batch(rt, batch, task_id=self.request.id or "", deadline=deadline)
    except Retry:
        raise
    except Exception as exc:  # every failure is retried, then dead-lettered
        retries = int(self.request.retries or 0)
        log.warning(
            "batch of %d users failed (retry %d/%d): %s: %s",
            len(batch.user_ids), retries, settings.task_max_retries, type(exc).__name__, exc,
        )  # fmt: skip
        if retries >= settings.task_max_retries:
            _dead_letter_batch(rt, batch, exc, self.request.id or "", retries + 1)
            return {"error": f"{type(exc).__name__}: {exc}", "dead": len(batch.user_ids)}
        countdown = min(settings.retry_backoff_max_s, RETRY_BASE_S * 2**retries)
        countdown *= 0.5 + np.random.default_rng().random()  # jitter: no thundering herd
        raise self.retry(countdown=countdown, max_retries=None) from exc
    log.info(
        "batch of %d users (%s, attempt %d): %s",
        len(batch.user_ids), batch.reason, batch.attempt, report.to_json(),
    )  # fmt: skip
    return report.to_json()


def _dead_letter_batch(
    rt: WorkerRuntime, batch: ReasonBatch, exc: BaseException, task_id: str, attempts: int
) -> None:
    letters = [
        DeadLetter(u, f"{type(exc).__name__}: {exc}", attempts, batch.reason, task_id)
        for u in dict.fromkeys(batch.user_ids)
    ]
    try:
        with_store_retries(lambda: rt.dead_letters.record(letters))
    except _RETRYABLE as err:
        log.error("could not dead-letter %d users: %s", len(letters), err)
        return
    metrics.DEAD_LETTERS.inc(len(letters))


@app.task(bind=True, name=REFRESH_TASK, acks_late=True)
def refresh_stale(self: Task) -> dict[str, Any]:
    """Beat: find users with stale or missing traces and enqueue their refresh."""
    from slow_path.refresh import scan_stale

    rt = runtime()
    report = scan_stale(app, rt.client, rt.settings, rt.store_settings)
    return {"examined": report.examined, "enqueued": len(report.enqueued)}
