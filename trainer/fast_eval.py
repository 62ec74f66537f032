"""Full-catalogue evaluation of the fast model: constrained beam search over every item.

Used by the trainer for per-epoch validation and by `reasonrec eval`. Each (history, target)
sample is decoded with the trie of the whole catalogue (never a sampled candidate set); the
trace, when a teacher is given, is computed from the history alone and placed after it — a
fresh trace, as the serving path sees it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from fast_path.beam_search import BeamSearchConfig, constrained_beam_search
from fast_path.fast_model import FastModel
from fast_path.item_head import item_head_logits, rerank
from fast_path.model_step import HFModelStep, ModelStep, SharedPrefixStep
from fast_path.prompt import TraceTokens, encode, left_pad
from sid_index.datasets.splits import SequenceSamples
from sid_index.errors import ConfigError
from sid_index.trie import SIDTrie
from trainer.metrics import RankingMetrics, ranking_metrics
from trainer.teachers import TraceTeacher
from trainer.training_log import progress


def model_step_for(fm: FastModel) -> ModelStep[Any]:
    """The fastest exact decoding adapter the model's architecture supports."""
    try:
        return SharedPrefixStep(fm.model)
    except ConfigError:
        return HFModelStep(fm.model)


def decode_topk(
    fm: FastModel,
    trie: SIDTrie,
    codes: np.ndarray,
    histories: Sequence[np.ndarray],
    traces: Sequence[TraceTokens | None] | None,
    *,
    k: int = 10,
    num_beams: int = 20,
    batch_size: int = 64,
    max_items: int = 30,
    item_head_weight: float = 0.0,
    show_progress: bool = False,
) -> np.ndarray:
    """Top-k catalogue items per history, best first.

    Args:
        codes: (N, L) SID codes of the catalogue.
        histories: per sample, catalogue indices oldest first (the last `max_items` are used).
        traces: per sample, a trace (placed after the whole history) or None; None for all
            samples means no-trace mode.
        item_head_weight: > 0 re-ranks the whole beam with the model's item head
            (`fast_path/item_head.py`) before keeping the top k.

    Returns:
        (S, k) int64 item indices, -1 where fewer than k items could be decoded.
    """
    if traces is not None and len(traces) != len(histories):
        raise ConfigError(f"{len(traces)} traces for {len(histories)} histories")
    step = model_step_for(fm)
    rerank_beam = item_head_weight > 0
    config = BeamSearchConfig(num_beams=num_beams, num_return=num_beams if rerank_beam else k)
    offsets = fm.vocab.sid_offsets
    out = np.full((len(histories), k), -1, dtype=np.int64)
    # Sorting by length keeps left padding small inside each batch.
    order = np.argsort([len(h) for h in histories], kind="stable")
    starts = range(0, len(order), batch_size)
    for s in progress(starts, desc="decode", unit="batch", disable=not show_progress):
        rows = order[s : s + batch_size]
        prompts = [
            encode(
                fm.vocab,
                codes[histories[r][-max_items:]],
                None if traces is None else traces[r],
                items=histories[r][-max_items:],
            )
            for r in rows
        ]
        ids, mask = left_pad(prompts)
        device = next(fm.model.parameters()).device
        ids, mask = ids.to(device), mask.to(device)
        result = constrained_beam_search(
            step, ids, mask, trie, offsets, config, normalize_over=fm.vocab.item_offset
        )
        items = result.items
        if rerank_beam:
            head = item_head_logits(fm.vocab, result.prompt_logits, items)
            items, _ = rerank(items, result.scores, head, item_head_weight, k)
        out[rows] = items.cpu().numpy()
    return out


def eval_subset(n: int, limit: int | None, seed: int = 0) -> np.ndarray:
    """(S,) sorted sample indices evaluated under `limit` (a seeded random subset)."""
    idx = np.arange(n)
    if limit is not None and limit < n:
        idx = np.sort(np.random.default_rng(seed).choice(idx, size=limit, replace=False))
    return idx


def evaluate_fast(
    fm: FastModel,
    trie: SIDTrie,
    codes: np.ndarray,
    samples: SequenceSamples,
    user_index: np.ndarray,
    teacher: TraceTeacher | None,
    *,
    ks: Sequence[int] = (5, 10),
    num_beams: int = 20,
    batch_size: int = 64,
    max_items: int = 30,
    limit: int | None = None,
    seed: int = 0,
    item_head_weight: float = 0.0,
    show_progress: bool = False,
) -> RankingMetrics:
    """Recall/NDCG@ks of the fast model on (history, target) samples.

    Args:
        user_index: (S,) user index (for the teacher) of each sample.
        teacher: trace source, or None for no-trace mode.
        limit: evaluate a seeded random subset of this many samples (validation speed).
    """
    idx = eval_subset(len(samples), limit, seed)
    histories = [samples.history(int(j)) for j in idx]
    traces = None
    if teacher is not None:
        precompute = getattr(teacher, "precompute_traces", None)
        if precompute is not None:  # a reasoner: decode all thoughts in batches (cached)
            precompute(histories, show_progress=show_progress)
        traces = [teacher.trace(int(user_index[j]), h) for j, h in zip(idx, histories, strict=True)]
    with torch.inference_mode():
        topk = decode_topk(
            fm,
            trie,
            codes,
            histories,
            traces,
            k=max(ks),
            num_beams=max(num_beams, max(ks)),
            batch_size=batch_size,
            max_items=max_items,
            item_head_weight=item_head_weight,
            show_progress=show_progress,
        )
    return ranking_metrics(topk, samples.targets[idx], ks=tuple(ks))
