"""`Recommender`: one loaded release (fast model + SIDIndex + trie) plus the Redis stores.

A batch of requests goes through five steps, each batched across the requests:

1. history: the request's own, else one budgeted read of the history store (unreadable →
   empty history, a cold start; `history_source` says which). Items the catalogue does not
   know are an error in a request's history (UnknownItemError) and skipped in a stored one.
2. trace: one budgeted read of the trace store. A trace is used when its history fingerprint
   matches the current history (or, with `trace_max_lag`, the history minus its newest few
   events); a missing, stale, corrupt or unreadable trace degrades to no-trace mode and
   `trace_status` says why — never an error. Steps 1–2: `fast_path.user_context`.
3. prompt: the newest `history_window` items as SID tokens, the trace right after the items it
   was computed from (`fast_path.prompt`): at the end when it is fresh.
4. decode: one constrained beam search per distinct `num_beams` over the whole batch, with the
   request filters (seen, blocklist, domains) as trie exclusions (`fast_path.filters`).
5. rank: optional blending of the trace's candidates (`fast_path.blending`), top k, titles,
   SIDs, the interest each item falls under, and an explanation on request
   (`fast_path.explanation`).

The request and answer records live in `fast_path.records`; this module re-exports them, so
`from fast_path.recommender import RecommendRequest, Recommendation` keeps working.

Thread-safe: the model runs under a lock (one decode at a time; store reads are outside it)
and `torch.inference_mode`. The micro-batcher (`fast_path.micro_batcher`) calls
`recommend_outcomes` from its one worker thread.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fast_path.beam_search import BeamSearchConfig, constrained_beam_search
from fast_path.blending import blend
from fast_path.errors import EmptyHistoryError, RequestError, UnknownItemError
from fast_path.explanation import explain, spell_items
from fast_path.fast_model import FastModel
from fast_path.filters import CatalogFilters, RequestFilter
from fast_path.item_head import item_head_logits, rerank
from fast_path.model_step import HFModelStep, ModelStep, SharedPrefixStep
from fast_path.prompt import MAX_INTERESTS, TraceTokens, encode, left_pad
from fast_path.records import (
    HISTORY_SOURCES,
    TRACE_STATUSES,
    Explanation,
    Recommendation,
    RecommendedItem,
    RecommendRequest,
)
from fast_path.settings import RecommenderSettings
from fast_path.user_context import UserContext, UserContextReader
from sid_index.errors import ConfigError, ReasonrecError, ReleaseError
from sid_index.release import load_release
from sid_index.sid_index import SIDIndex
from slow_path.history_store import HistoryStore
from slow_path.trace_store import TraceStore

__all__ = [
    "HISTORY_SOURCES",
    "TRACE_STATUSES",
    "Explanation",
    "RecommendRequest",
    "Recommendation",
    "RecommendedItem",
    "Recommender",
]


@dataclass(slots=True)
class _Job:
    """Per-request working state inside one batch."""

    ctx: UserContext
    """History and trace (`UserContextReader`)."""
    prompt: np.ndarray | None = None
    filter: RequestFilter | None = None
    fast_items: np.ndarray | None = None
    fast_scores: np.ndarray | None = None
    decode_s: float = 0.0


class Recommender:
    """One loaded release (fast model + SIDIndex + trie) plus the stores. Thread-safe for
    recommend_batch."""

    def __init__(
        self,
        fast_model: FastModel,
        index: SIDIndex,
        *,
        release_version: str,
        trace_store: TraceStore | None,
        history_store: HistoryStore | None,
        settings: RecommenderSettings,
        trained_window: int | None = None,
        item_head_weight: float = 0.0,
    ) -> None:
        """Wire loaded parts together (`from_release` loads them from a release directory).

        Args:
            trained_window: history window (items) the fast model was trained on, if known.
            item_head_weight: > 0 re-ranks every beam with the model's item head
                (`fast_path/item_head.py`; the release records the trained model's value).
        """
        vocab = fast_model.vocab
        if tuple(vocab.level_sizes) != tuple(index.sids.level_sizes):
            raise ReleaseError(
                f"fast model vocabulary levels {vocab.level_sizes} do not match the SID index "
                f"levels {index.sids.level_sizes}: the parts come from different builds"
            )
        if item_head_weight < 0 or (item_head_weight > 0 and not vocab.item_buckets):
            raise ReleaseError(
                f"{item_head_weight=} needs >= 0 and a fast model with item tokens "
                f"(this one has {vocab.item_buckets} item buckets)"
            )
        if settings.num_threads is not None:
            torch.set_num_threads(settings.num_threads)
        self.fast_model = fast_model
        self.index = index
        self.release_version = release_version
        self.trace_store = trace_store
        self.history_store = history_store
        self.settings = settings
        self.blend_policy = settings.blend_policy
        self.trie = index.trie
        self.filters = CatalogFilters(index.catalog, self.trie)
        self._codes = index.sids.codes.astype(np.int64)  # (N, L)
        self._offsets = torch.from_numpy(vocab.sid_offsets)  # (L,)
        self._device = torch.device(settings.device)
        self._step = _model_step(fast_model.model, settings.decoder)
        self.item_head_weight = item_head_weight
        self.history_window = _history_window(fast_model, settings.history_max, trained_window)
        """Newest history items put in a prompt."""
        self._context = UserContextReader(
            index.catalog,
            index.sids.level_sizes,
            history_store=history_store,
            trace_store=trace_store,
            settings=settings,
            history_window=self.history_window,
        )
        self._lock = threading.Lock()
        self._ready = False
        if settings.warmup:
            self._warmup()
        self._ready = True

    @classmethod
    def from_release(
        cls,
        release_dir: Path,
        *,
        trace_store: TraceStore | None,
        history_store: HistoryStore | None,
        settings: RecommenderSettings,
    ) -> Recommender:
        """Load and verify a release with `sid_index/` and `fast_model/` parts.

        Raises:
            ReleaseError: the release is missing, tampered with, lacks a part, or its parts
                do not fit together.
        """
        release = load_release(
            release_dir, require=("sid_index", "fast_model"), verify=settings.verify_release
        )
        index = SIDIndex.load(release.part("sid_index"))
        fast_model = FastModel.load(release.part("fast_model"), device=settings.device)
        fast_config = release.manifest.configs.get("fast_model", {})
        trained = fast_config.get("max_items")
        return cls(
            fast_model,
            index,
            release_version=release.version,
            trace_store=trace_store,
            history_store=history_store,
            settings=settings,
            trained_window=trained if isinstance(trained, int) and trained > 0 else None,
            item_head_weight=float(fast_config.get("item_head_weight", 0.0)),
        )

    # ---- small queries ---------------------------------------------------------------------

    def known_item(self, item_id: str) -> bool:
        """True when the item is in this release's catalogue."""
        return self.index.catalog.get_index(item_id) is not None

    def ready(self) -> bool:
        """True once the model is loaded (and warmed up): requests can be served."""
        return self._ready

    def validate(self, request: RecommendRequest) -> None:
        """Check a request without any I/O (the micro-batcher calls it before batching).

        Raises:
            RequestError: k or num_beams out of range, an unknown domain, an empty user id.
            UnknownItemError: the request's history names items outside the catalogue.
            EmptyHistoryError: nothing to read a history from and cold start is disabled.
        """
        s = self.settings
        if not isinstance(request.user_id, str) or not request.user_id:
            raise RequestError(f"user_id {request.user_id!r} must be a non-empty string")
        if not 1 <= request.k <= s.k_max:
            raise RequestError(f"k={request.k} must be in [1, {s.k_max}]")
        if not request.k <= request.num_beams <= s.beams_max:
            raise RequestError(
                f"num_beams={request.num_beams} must be in [k={request.k}, {s.beams_max}]"
            )
        if request.domains is not None:
            self.filters.domain_ids(request.domains)
        if request.history is not None:
            catalog = self.index.catalog
            unknown = [i for i in request.history if catalog.get_index(i) is None]
            if unknown:
                raise UnknownItemError(unknown)
        if not s.cold_start and (
            (request.history is not None and not request.history)
            or (request.history is None and self.history_store is None)
        ):
            raise EmptyHistoryError(
                f"user {request.user_id!r}: empty history and cold start is off"
            )

    # ---- serving -----------------------------------------------------------------------------

    def recommend(self, request: RecommendRequest) -> Recommendation:
        """Recommend for one request (a batch of one)."""
        return self.recommend_batch([request])[0]

    def recommend_batch(self, requests: Sequence[RecommendRequest]) -> list[Recommendation]:
        """Recommend for a batch: one batched beam search per distinct num_beams.

        Raises:
            RequestError: the first invalid request (checked before any I/O).
        """
        for request in requests:
            self.validate(request)
        out: list[Recommendation] = []
        for result in self.recommend_outcomes(requests):
            if isinstance(result, ReasonrecError):
                raise result
            out.append(result)
        return out

    def recommend_outcomes(
        self, requests: Sequence[RecommendRequest]
    ) -> list[Recommendation | RequestError]:
        """Like recommend_batch, but one request's error is returned in its slot instead of
        failing the batch (for batchers: the other requests are still answered)."""
        t0 = time.perf_counter()
        outcomes: list[Recommendation | RequestError | None] = [None] * len(requests)
        jobs: dict[int, _Job] = {}
        valid: list[int] = []
        for i, request in enumerate(requests):
            try:
                self.validate(request)
                valid.append(i)
            except RequestError as exc:
                outcomes[i] = exc
        contexts, hist_s = self._context.read_histories({i: requests[i] for i in valid})
        for i in valid:
            ctx = contexts[i]
            # A store outage is not the client's fault: it degrades to a cold start even when
            # cold start is off for users who have no history.
            if not self.settings.cold_start and not ctx.history and ctx.history_source != "error":
                outcomes[i] = EmptyHistoryError(
                    f"user {ctx.request.user_id!r}: no stored history ({ctx.history_source}) "
                    "and cold start is off"
                )
            else:
                jobs[i] = _Job(ctx)
        trace_s = self._context.read_traces([job.ctx for job in jobs.values()])
        for job in jobs.values():
            self._prepare(job)
        self._decode(list(jobs.values()))
        total = time.perf_counter() - t0
        for i, job in jobs.items():
            outcomes[i] = self._answer(job, {"history": hist_s, "trace": trace_s, "total": total})
        return [o for o in outcomes if o is not None]

    # ---- steps -------------------------------------------------------------------------------

    def _prepare(self, job: _Job) -> None:
        """Prompt and filter of one job."""
        ctx = job.ctx
        r = ctx.request
        window = ctx.known[ctx.known >= 0][-self.history_window :]
        tokens = None
        if ctx.trace is not None:
            interests = sorted(ctx.trace.interests, key=lambda i: -i.weight)[:MAX_INTERESTS]
            tokens = TraceTokens(ctx.trace.persona.id, tuple(i.sid_prefix for i in interests))
        job.prompt = encode(
            self.fast_model.vocab, self._codes[window], tokens, ctx.trace_at, items=window
        )
        catalog = self.index.catalog
        excluded = [j for j in (catalog.get_index(i) for i in r.blocklist) if j is not None]
        if r.exclude_seen:
            excluded.extend(ctx.known[ctx.known >= 0].tolist())
        job.filter = self.filters.make(excluded, r.domains)

    def _decode(self, jobs: Sequence[_Job]) -> None:
        """One beam search per (num_beams, chunk of max_batch) over the jobs."""
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.ctx.request.num_beams, []).append(job)
        for beams, group in sorted(groups.items()):
            for start in range(0, len(group), self.settings.max_batch):
                chunk = group[start : start + self.settings.max_batch]
                t0 = time.perf_counter()
                items, scores = self._search(
                    [j.prompt for j in chunk if j.prompt is not None],
                    [j.filter for j in chunk if j.filter is not None],
                    beams,
                )
                elapsed = time.perf_counter() - t0
                for row, job in enumerate(chunk):
                    ok = items[row] >= 0
                    job.fast_items, job.fast_scores = items[row][ok], scores[row][ok]
                    job.decode_s = elapsed

    def _search(
        self, prompts: Sequence[np.ndarray], filters: Sequence[RequestFilter], beams: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, beams) catalogue indices (-1 padded) and log-probs of a batch of prompts."""
        input_ids, attention_mask = left_pad(prompts)  # (B, T)
        exclusion = self.filters.exclusion(filters)
        config = BeamSearchConfig(num_beams=beams, num_return=beams)
        input_ids, attention_mask = input_ids.to(self._device), attention_mask.to(self._device)
        with self._lock, torch.inference_mode():
            result = constrained_beam_search(
                self._step, input_ids, attention_mask, self.trie, self._offsets, config,
                exclusion, normalize_over=self.fast_model.vocab.item_offset,
            )  # fmt: skip
            items, scores = result.items, result.scores
            if self.item_head_weight > 0:
                head = item_head_logits(self.fast_model.vocab, result.prompt_logits, items)
                items, scores = rerank(items, scores, head, self.item_head_weight, beams)
        return items.cpu().numpy(), scores.cpu().numpy().astype(np.float64)

    def _answer(self, job: _Job, timings: dict[str, float]) -> Recommendation:
        """Blend, cut to k and spell out one job's items."""
        r = job.ctx.request
        assert job.fast_items is not None and job.fast_scores is not None and job.filter
        trace = job.ctx.trace
        cand_items = np.zeros(0, dtype=np.int64)
        cand_scores = np.zeros(0, dtype=np.float64)
        if trace is not None and trace.candidates and self.blend_policy.kind != "none":
            catalog = self.index.catalog
            pairs = [(catalog.get_index(c.item_id), c.score) for c in trace.candidates]
            known = {}  # item -> score, first occurrence wins (dict keeps order)
            for item, score in pairs:
                if item is not None and item not in known:
                    known[item] = score
            cand_items = np.fromiter(known.keys(), dtype=np.int64, count=len(known))
            cand_scores = np.fromiter(known.values(), dtype=np.float64, count=len(known))
            ok = self.filters.allowed(job.filter, cand_items)
            cand_items, cand_scores = cand_items[ok], cand_scores[ok]
        ranked = blend(
            self.blend_policy, job.fast_items, job.fast_scores, cand_items, cand_scores, r.k
        )
        items = spell_items(ranked, self._codes, self.index.catalog, trace)
        explanation = explain(trace) if r.explain and trace is not None else None
        return Recommendation(
            user_id=r.user_id,
            items=items,
            release_version=self.release_version,
            trace_status=job.ctx.trace_status,
            trace_used=trace is not None,
            explanation=explanation,
            timings={**timings, "decode": job.decode_s},
            history_source=job.ctx.history_source,
        )

    def _warmup(self) -> None:
        """One cold-start decode, so lazy initialisation does not land on the first request."""
        bos = encode(self.fast_model.vocab, self._codes[:0], items=np.zeros(0, np.int64))
        beams = min(10, self.settings.beams_max, self.trie.num_items)
        self._search([bos], [self.filters.make([])], max(beams, 1))


def _model_step(model: Any, decoder: str) -> ModelStep[Any]:
    """The beam search's model adapter named by the `decoder` setting."""
    if decoder == "hf":
        return HFModelStep(model)
    try:
        return SharedPrefixStep(model)
    except ConfigError:
        if decoder == "shared_prefix":
            raise
        return HFModelStep(model)


def _history_window(fast_model: FastModel, history_max: int, trained: int | None) -> int:
    """Newest history items that fit a prompt: settings cap, training window, and positions."""
    levels = fast_model.vocab.num_levels
    per_item = fast_model.vocab.tokens_per_item  # L SID tokens (+ an item token)
    trace_len = 3 + MAX_INTERESTS * levels  # <trace> <p_k> (<interest> + L-1 codes)* </trace>
    # <bos> + T·per_item history tokens + trace + L decoded tokens must fit the positions.
    by_positions = (fast_model.config.max_positions - 1 - trace_len - levels) // per_item
    if by_positions < 1:
        raise ReleaseError(
            f"fast model max_positions={fast_model.config.max_positions} leaves no room for "
            f"a history item ({levels} SID levels, trace up to {trace_len} tokens)"
        )
    return min(history_max, by_positions, trained or history_max)
