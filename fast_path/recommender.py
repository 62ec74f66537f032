"""`Recommender`: one loaded release (fast model + SIDIndex + trie) plus the Redis stores.

A batch of requests goes through five steps, each batched across the requests:

1. history: the request's own, else one budgeted read of the history store (unreadable →
   empty history, a cold start; `history_source` says which). Items the catalogue does not
   know are an error in a request's history (UnknownItemError) and skipped in a stored one.
2. trace: one budgeted read of the trace store. A trace is used when its history fingerprint
   matches the current history (or, with `trace_max_lag`, the history minus its newest few
   events); a missing, stale, corrupt or unreadable trace degrades to no-trace mode and
   `trace_status` says why — never an error.
3. prompt: the newest `history_window` items as SID tokens, the trace right after the items it
   was computed from (`fast_path.prompt`): at the end when it is fresh.
4. decode: one constrained beam search per distinct `num_beams` over the whole batch, with the
   request filters (seen, blocklist, domains) as trie exclusions (`fast_path.filters`).
5. rank: optional blending of the trace's candidates (`fast_path.blending`), top k, titles,
   SIDs, the interest each item falls under, and an explanation on request.

Thread-safe: the model runs under a lock (one decode at a time; store reads are outside it)
and `torch.inference_mode`. The micro-batcher (`fast_path.micro_batcher`) calls
`recommend_outcomes` from its one worker thread.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fast_path.beam_search import BeamSearchConfig, constrained_beam_search
from fast_path.blending import Blended, blend
from fast_path.errors import EmptyHistoryError, RequestError, UnknownItemError
from fast_path.fast_model import FastModel
from fast_path.filters import CatalogFilters, RequestFilter
from fast_path.model_step import HFModelStep, ModelStep, SharedPrefixStep
from fast_path.prompt import MAX_INTERESTS, TraceTokens, encode, left_pad
from fast_path.settings import RecommenderSettings
from sid_index.codes import format_sid
from sid_index.errors import ConfigError, ReasonrecError, ReleaseError
from sid_index.release import load_release
from sid_index.sid_index import SIDIndex
from slow_path.errors import TraceError
from slow_path.history_store import HistoryStore
from slow_path.trace import DEFAULT_FINGERPRINT_WINDOW, Trace, history_fingerprint
from slow_path.trace_store import TraceStore

log = logging.getLogger(__name__)

TRACE_STATUSES = ("hit", "miss", "stale", "error", "disabled")
"""Values of `Recommendation.trace_status`; only "hit" means the trace was used."""
HISTORY_SOURCES = ("request", "store", "error", "none")
"""Values of `Recommendation.history_source`: the request's history, the store's, a store
error (served as a cold start), or no history store configured (cold start)."""


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    """One recommendation request."""

    user_id: str
    history: tuple[str, ...] | None = None
    """External item ids, oldest first; None: read the user's history from the store."""
    k: int = 10
    """Items to return (1..k_max)."""
    num_beams: int = 20
    """Beam width (k <= num_beams <= beams_max)."""
    use_trace: bool = True
    """Read the cached trace ("thinking on"); False: no-trace mode."""
    exclude_seen: bool = True
    """Never return items of the history."""
    blocklist: tuple[str, ...] = ()
    """Item ids never to return (unknown ids are ignored)."""
    domains: tuple[str, ...] | None = None
    """Only items of these domains; None: every domain."""
    explain: bool = False
    """Attach the persona / interest explanation of the trace (when one is used)."""


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    """One recommended item."""

    item_id: str
    score: float
    """Ranking score: summed SID log-probability of the fast model, or the blend policy's."""
    title: str
    sid: str
    """The item's SID spelled as tokens, e.g. "<a_1><b_2><c_3>"."""
    source: str
    """"fast" (decoded) or "reasoner" (blended in from the trace's candidates)."""
    interest: str | None = None
    """Label of the trace interest with the longest SID prefix that contains the item."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why, in the reasoner's words (from the trace)."""

    persona: str
    interests: tuple[str, ...]
    transition: str


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The answer to one request."""

    user_id: str
    items: tuple[RecommendedItem, ...]
    release_version: str
    trace_status: str
    """One of TRACE_STATUSES."""
    trace_used: bool
    explanation: Explanation | None
    timings: dict[str, float]
    """Seconds: "history", "trace" (the batch's store reads), "decode" (the beam search this
    request was part of), "total" (the whole recommend call)."""
    history_source: str = "request"
    """One of HISTORY_SOURCES."""


@dataclass(slots=True)
class _Job:
    """Per-request working state inside one batch."""

    request: RecommendRequest
    history: list[str]
    """Raw item ids, oldest first (what fingerprints are computed from)."""
    history_source: str
    known: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    """(T,) catalogue index of each raw history item, -1 for unknown ones."""
    trace: Trace | None = None
    trace_status: str = "disabled"
    trace_at: int | None = None
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
    ) -> None:
        """Wire loaded parts together (`from_release` loads them from a release directory).

        Args:
            trained_window: history window (items) the fast model was trained on, if known.
        """
        vocab = fast_model.vocab
        if tuple(vocab.level_sizes) != tuple(index.sids.level_sizes):
            raise ReleaseError(
                f"fast model vocabulary levels {vocab.level_sizes} do not match the SID index "
                f"levels {index.sids.level_sizes}: the parts come from different builds"
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
        self.history_window = _history_window(fast_model, settings.history_max, trained_window)
        """Newest history items put in a prompt."""
        # Enough raw events to fingerprint the history as it was `trace_max_lag` events ago.
        self._fetch_n = max(
            self.history_window, DEFAULT_FINGERPRINT_WINDOW + settings.trace_max_lag
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
        trained = release.manifest.configs.get("fast_model", {}).get("max_items")
        return cls(
            fast_model,
            index,
            release_version=release.version,
            trace_store=trace_store,
            history_store=history_store,
            settings=settings,
            trained_window=trained if isinstance(trained, int) and trained > 0 else None,
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
        hist_s = self._read_histories({i: requests[i] for i in valid}, jobs)
        for i in valid:
            job = jobs[i]
            # A store outage is not the client's fault: it degrades to a cold start even when
            # cold start is off for users who have no history.
            if not self.settings.cold_start and not job.history and job.history_source != "error":
                outcomes[i] = EmptyHistoryError(
                    f"user {job.request.user_id!r}: no stored history ({job.history_source}) "
                    "and cold start is off"
                )
                del jobs[i]
        trace_s = self._read_traces(list(jobs.values()))
        for job in jobs.values():
            self._prepare(job)
        self._decode(list(jobs.values()))
        total = time.perf_counter() - t0
        for i, job in jobs.items():
            outcomes[i] = self._answer(job, {"history": hist_s, "trace": trace_s, "total": total})
        return [o for o in outcomes if o is not None]

    # ---- steps -------------------------------------------------------------------------------

    def _read_histories(
        self, requests: dict[int, RecommendRequest], jobs: dict[int, _Job]
    ) -> float:
        """Fill `jobs[slot]` with each request's raw history; returns the store read's seconds."""
        t0 = time.perf_counter()
        stored: dict[str, list[str]] = {}
        unread: set[str] = set()
        need = [r.user_id for r in requests.values() if r.history is None]
        if need and self.history_store is not None:
            try:
                got = self.history_store.get_many(
                    need, self._fetch_n, self.settings.history_budget_s
                )
                stored, unread = got.histories, set(got.unread)
            except ReasonrecError as exc:  # e.g. a malformed stored event
                log.warning("history read of %d users failed: %s", len(need), exc)
                unread = set(need)
        elapsed = time.perf_counter() - t0 if need else 0.0
        catalog = self.index.catalog
        for slot, r in requests.items():
            if r.history is not None:
                history, source = list(r.history), "request"
            elif self.history_store is None:
                history, source = [], "none"
            elif r.user_id in unread:
                history, source = [], "error"
            else:
                history, source = list(stored.get(r.user_id, [])), "store"
            known = np.fromiter(
                (-1 if (j := catalog.get_index(i)) is None else j for i in history),
                dtype=np.int64,
                count=len(history),
            )
            jobs[slot] = _Job(r, history, source, known)
        return elapsed

    def _read_traces(self, jobs: Sequence[_Job]) -> float:
        """Read the traces of the jobs that want one and decide whether each is usable."""
        wanted = [j for j in jobs if j.request.use_trace and self.trace_store is not None]
        if not wanted or self.trace_store is None:
            return 0.0
        t0 = time.perf_counter()
        users = [j.request.user_id for j in wanted]
        try:
            got = self.trace_store.get_many(users, self.settings.trace_budget_s)
            hits, troubled = got.hits, bool(got.errors or got.timed_out)
        except ReasonrecError as exc:  # the store contract says it never raises; belt and braces
            log.warning("trace read of %d users failed: %s", len(users), exc)
            hits, troubled = {}, True
        elapsed = time.perf_counter() - t0
        for job in wanted:
            trace = hits.get(job.request.user_id)
            if trace is None:
                # A batch cut short does not say which users it did not reach.
                job.trace_status = "error" if troubled else "miss"
                continue
            job.trace_at = self._trace_cut(trace, job)
            job.trace_status = "stale" if job.trace_at is None else "hit"
            job.trace = trace if job.trace_at is not None else None
        return elapsed

    def _trace_cut(self, trace: Trace, job: _Job) -> int | None:
        """Where the trace goes in the prompt window (items before it), None when stale."""
        max_age = self.settings.trace_max_age_s
        if max_age is not None and time.time() - trace.created_at > max_age:
            return None
        try:  # a trace computed against another SID index cannot be read by this model
            trace.check_prefixes(self.index.sids.level_sizes)
        except TraceError:
            return None
        n = len(job.history)
        for lag in range(min(self.settings.trace_max_lag, n) + 1):
            if history_fingerprint(job.history[: n - lag]) == trace.history_fingerprint:
                known = job.known >= 0
                before = int(known[: n - lag].sum())  # known items the trace covers
                dropped = max(int(known.sum()) - self.history_window, 0)  # older than the window
                return max(before - dropped, 0)
        return None

    def _prepare(self, job: _Job) -> None:
        """Prompt and filter of one job."""
        r = job.request
        window = job.known[job.known >= 0][-self.history_window :]
        tokens = None
        if job.trace is not None:
            interests = sorted(job.trace.interests, key=lambda i: -i.weight)[:MAX_INTERESTS]
            tokens = TraceTokens(job.trace.persona.id, tuple(i.sid_prefix for i in interests))
        job.prompt = encode(self.fast_model.vocab, self._codes[window], tokens, job.trace_at)
        catalog = self.index.catalog
        excluded = [j for j in (catalog.get_index(i) for i in r.blocklist) if j is not None]
        if r.exclude_seen:
            excluded.extend(job.known[job.known >= 0].tolist())
        job.filter = self.filters.make(excluded, r.domains)

    def _decode(self, jobs: Sequence[_Job]) -> None:
        """One beam search per (num_beams, chunk of max_batch) over the jobs."""
        groups: dict[int, list[_Job]] = {}
        for job in jobs:
            groups.setdefault(job.request.num_beams, []).append(job)
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
        with self._lock, torch.inference_mode():
            result = constrained_beam_search(
                self._step,
                input_ids.to(self._device),
                attention_mask.to(self._device),
                self.trie,
                self._offsets,
                config,
                exclusion,
            )
        return result.items.cpu().numpy(), result.scores.cpu().numpy().astype(np.float64)

    def _answer(self, job: _Job, timings: dict[str, float]) -> Recommendation:
        """Blend, cut to k and spell out one job's items."""
        r = job.request
        assert job.fast_items is not None and job.fast_scores is not None and job.filter
        trace = job.trace
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
        items = self._spell(ranked, trace)
        explanation = None
        if r.explain and trace is not None:
            explanation = Explanation(
                persona=trace.persona.name,
                interests=tuple(i.label for i in trace.interests),
                transition=trace.transition.text,
            )
        return Recommendation(
            user_id=r.user_id,
            items=items,
            release_version=self.release_version,
            trace_status=job.trace_status,
            trace_used=trace is not None,
            explanation=explanation,
            timings={**timings, "decode": job.decode_s},
            history_source=job.history_source,
        )

    def _spell(self, ranked: Blended, trace: Trace | None) -> tuple[RecommendedItem, ...]:
        catalog = self.index.catalog
        codes = self._codes[ranked.items]  # (n, L)
        labels: list[str | None] = [None] * len(ranked.items)
        if trace is not None and len(ranked.items):
            # Longest matching prefix wins: assign short prefixes first, let longer overwrite.
            best = np.full(len(ranked.items), -1, dtype=np.int64)
            best_len = np.zeros(len(ranked.items), dtype=np.int64)
            for k, interest in enumerate(trace.interests):
                p = np.asarray(interest.sid_prefix, dtype=np.int64)
                match = (codes[:, : len(p)] == p).all(axis=1) & (len(p) > best_len)
                best[match], best_len[match] = k, len(p)
            labels = [trace.interests[b].label if b >= 0 else None for b in best.tolist()]
        return tuple(
            RecommendedItem(
                item_id=catalog.item_ids[item],
                score=float(score),
                title=catalog.titles[item],
                sid=format_sid(codes[row]),
                source="fast" if fast else "reasoner",
                interest=labels[row],
            )
            for row, (item, score, fast) in enumerate(
                zip(
                    ranked.items.tolist(),
                    ranked.scores.tolist(),
                    ranked.from_fast.tolist(),
                    strict=True,
                )
            )
        )

    def _warmup(self) -> None:
        """One cold-start decode, so lazy initialisation does not land on the first request."""
        bos = encode(self.fast_model.vocab, self._codes[:0])
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
    trace_len = 3 + MAX_INTERESTS * levels  # <trace> <p_k> (<interest> + L-1 codes)* </trace>
    # <bos> + T·L history tokens + trace + L decoded tokens must fit the position table.
    by_positions = (fast_model.config.max_positions - 1 - trace_len - levels) // levels
    if by_positions < 1:
        raise ReleaseError(
            f"fast model max_positions={fast_model.config.max_positions} leaves no room for "
            f"a history item ({levels} SID levels, trace up to {trace_len} tokens)"
        )
    return min(history_max, by_positions, trained or history_max)
