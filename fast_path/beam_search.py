"""Constrained beam search over the SID trie: batched across requests and beams, KV-cached.

It returns exactly the beams of transformers' `generate(num_beams=…, num_return_sequences=…,
max_new_tokens=L, do_sample=False, prefix_allowed_tokens_fn=fn)` when `fn` allows exactly the
trie's valid next SID tokens (tests/fast_path/test_beam_search.py checks this), but:

- the context is prefilled once per request and beams are expanded from it at the first step
  (FlashRec); dead beams are dropped from the model's batch instead of being decoded;
- the log-softmax runs over the full vocabulary (transformers normalizes before masking, so
  the scores match), then only the valid children are gathered: a (rows, W) gather where W is
  the level's dense width (root: up to 256) or its largest fan-out (deeper levels: a few) —
  never a (rows, vocab) Python-built mask;
- the top-k runs over (beams × valid children) per request; a beam without any valid
  continuation gets -inf and is retired explicitly rather than extended with junk tokens.

With fixed-length SIDs every hypothesis ends at the same step, so transformers' length penalty
and early stopping cannot reorder them: scores here are plain summed log-probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fast_path.model_step import ModelStep
from sid_index.errors import ConfigError, DataError
from sid_index.trie import DEAD, Exclusion, SIDTrie


@dataclass(frozen=True, slots=True)
class BeamSearchConfig:
    """Width and output size of the constrained beam search."""

    num_beams: int = 10
    """Live prefixes kept per request at every level (transformers' `num_beams`)."""
    num_return: int = 10
    """Distinct items returned per request: the best `num_return` final beams."""

    def __post_init__(self) -> None:
        if self.num_beams < 1:
            raise ConfigError(f"{self.num_beams=} must be >= 1")
        if not 1 <= self.num_return <= self.num_beams:
            raise ConfigError(f"{self.num_return=} must be in [1, {self.num_beams=}]")


@dataclass(frozen=True, slots=True)
class BeamSearchResult:
    """The best items per request, best first."""

    items: torch.Tensor
    """(B, K) int64 catalogue indices; -1 where fewer than K valid items exist."""
    sids: torch.Tensor
    """(B, K, L) int64 SID codes of each item; -1 in padded slots."""
    scores: torch.Tensor
    """(B, K) float32 summed log-probabilities (non-increasing per row); -inf in padded slots."""
    prompt_logits: torch.Tensor
    """(B, V) float32 next-token logits at the end of each prompt (the prefill's, full
    vocabulary): what a caller needs to score tokens the search does not decode, e.g. the
    item head's item tokens (`fast_path/item_head.py`), without another forward pass."""


def constrained_beam_search(
    model: ModelStep[Any],
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    trie: SIDTrie,
    token_offsets: torch.Tensor | np.ndarray | Sequence[int],
    config: BeamSearchConfig,
    exclusion: Exclusion | None = None,
    normalize_over: int | None = None,
) -> BeamSearchResult:
    """Decode the best `config.num_return` catalogue items for each prompt row.

    Args:
        model: prefill/step adapter of the decoder (fast_path.model_step).
        input_ids: (B, T) left-padded prompt token ids.
        attention_mask: (B, T) 1 on prompt tokens, 0 on left padding.
        trie: the catalogue's SID trie; decoding runs exactly `trie.num_levels` steps.
        token_offsets: (L,) vocab id of code 0 of each level (token = offset + code).
        config: beam width and number of results.
        exclusion: per-request excluded items (row b of the batch is request b).
        normalize_over: the log-softmax runs over token ids below this (the decodable
            vocabulary: a fast model with item tokens, `FastVocab.item_offset`, was trained
            to never predict them); None = the full vocabulary, as transformers does.
    """
    batch = input_ids.shape[0]
    num_levels = trie.num_levels
    offsets = torch.as_tensor(np.asarray(token_offsets), dtype=torch.int64).reshape(-1)
    if offsets.shape != (num_levels,):
        raise DataError(f"token_offsets has {offsets.numel()} entries for {num_levels} levels")
    if exclusion is not None and (
        exclusion.num_requests != batch or exclusion.num_nodes != trie.num_nodes
    ):
        raise DataError(
            f"exclusion built for {exclusion.num_requests} requests over a trie of "
            f"{exclusion.num_nodes} nodes; this batch has {batch} requests and the trie "
            f"{trie.num_nodes} nodes"
        )

    with torch.inference_mode():
        logits, cache = model.prefill(input_ids, attention_mask)  # (B, V)
        prompt_logits = logits
        vocab = logits.shape[1]
        last_token = offsets + torch.tensor(trie.level_sizes) - 1
        if normalize_over is not None:
            vocab = min(vocab, normalize_over)
        if int(offsets.min()) < 0 or int(last_token.max()) >= vocab:
            raise DataError(
                f"SID tokens {offsets.tolist()}+codes fall outside the vocab of {vocab}"
            )

        per_request = 1  # beams per request in the current layout (the root only, at first)
        states = trie.root_state(batch)  # (B·P,) trie node of each beam
        scores = torch.zeros(batch)  # (B·P,) summed log-probs
        history = torch.zeros(batch, 1, 0, dtype=torch.int64)  # (B, P, level) chosen codes
        cache_row: torch.Tensor | None = None  # layout row → model row; None = identity
        request = torch.arange(batch)
        base = torch.arange(batch)[:, None]
        for level in range(num_levels):
            last = level == num_levels - 1
            kids = trie.children(
                states, level, exclusion, request.repeat_interleave(per_request)
            )  # (B·P, W)
            width = kids.codes.shape[1]
            logp = torch.log_softmax(logits[:, :vocab], dim=-1)  # (model rows, V)
            if cache_row is not None:
                logp = logp.index_select(0, cache_row)  # dead rows read row 0; masked below
            cand = scores[:, None] + logp.gather(1, offsets[level] + kids.codes)  # (B·P, W)
            cand = cand.masked_fill(~kids.valid, float("-inf")).view(batch, per_request * width)
            k = min(config.num_return if last else config.num_beams, per_request * width)
            top, idx = cand.topk(k, dim=1)  # (B, k), best first
            parent = torch.div(idx, width, rounding_mode="floor")  # (B, k) beam within request
            codes = kids.codes.reshape(batch, -1).gather(1, idx)  # (B, k)
            alive = top > float("-inf")  # a beam with no valid continuation is retired here
            states = torch.where(alive, kids.nodes.view(batch, -1).gather(1, idx), DEAD).flatten()
            picked = history.gather(1, parent[:, :, None].expand(-1, -1, level))
            history = torch.cat([picked, codes[:, :, None]], dim=2)  # (B, k, level+1)
            scores = top.flatten()
            if last:
                break
            parent_row = (base * per_request + parent).flatten()  # (B·k,) previous layout row
            if cache_row is not None:
                parent_row = cache_row.index_select(0, parent_row)
            tokens = (offsets[level] + codes).flatten()
            per_request = k
            live = alive.flatten()
            if bool(live.all()):
                logits, cache = model.step(tokens, cache, parent_row)
                cache_row = None
            else:
                keep = torch.nonzero(live).flatten()
                if keep.numel() == 0:
                    break
                logits, cache = model.step(tokens[keep], cache, parent_row[keep])
                cache_row = torch.zeros(batch * k, dtype=torch.int64)
                cache_row[keep] = torch.arange(keep.numel())

        alive = scores.view(batch, -1) > float("-inf")
        if history.shape[2] < num_levels:  # every beam died before the last level
            alive = torch.zeros_like(alive)
            history = torch.zeros(batch, alive.shape[1], num_levels, dtype=torch.int64)
        items = torch.where(alive, trie.leaf_item(states).view(batch, -1), -1)
        sids = torch.where(alive[:, :, None], history, -1)
        top_scores = torch.where(alive, scores.view(batch, -1), float("-inf"))
        return _pad(items, sids, top_scores, prompt_logits, config.num_return)


def _pad(
    items: torch.Tensor,
    sids: torch.Tensor,
    scores: torch.Tensor,
    prompt_logits: torch.Tensor,
    k: int,
) -> BeamSearchResult:
    """Pad (or cut) the (B, k') results to exactly k columns (k' < k when the trie is narrow)."""
    items, sids, scores = items[:, :k], sids[:, :k], scores[:, :k]
    missing = k - items.shape[1]
    if missing > 0:
        items = torch.nn.functional.pad(items, (0, missing), value=-1)
        sids = torch.nn.functional.pad(sids, (0, 0, 0, missing), value=-1)
        scores = torch.nn.functional.pad(scores, (0, missing), value=float("-inf"))
    return BeamSearchResult(items=items, sids=sids, scores=scores, prompt_logits=prompt_logits)
