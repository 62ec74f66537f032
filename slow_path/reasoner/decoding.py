"""The reasoner's decoding primitives on a transformers causal LM, batch-first.

A reasoner completion is decoded in two phases over a batch of left-padded prompt rows:

1. the thought: `complete`, free text with a KV cache, greedy or sampled (temperature /
   top-p, for RL rollouts), until a row writes one of its stop tokens or eos, or has written
   `max_new_tokens` tokens;
2. the answer, after the caller closed every row with `</think><answer>`: `beam_answers`,
   trie-constrained beam search over the SID tokens (`fast_path.beam_search`) — exactly L
   steps, only prefixes of catalogue items, so every answer is a real item.

The slow path's `transformers_backend` and the trainer's `trainer.reasoner.generate`
(evaluation, RL rollouts, the reasoner CoT teacher) both decode with these, so a trained
reasoner is served exactly as it was evaluated. Nothing here imports `trainer`.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fast_path.beam_search import BeamSearchConfig, constrained_beam_search
from fast_path.model_step import HFModelStep, ModelStep, SharedPrefixStep
from sid_index.errors import ConfigError
from sid_index.trie import Exclusion, SIDTrie

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) left-padded ids and 0/1 attention mask of token rows (T = the longest row)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.int64)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def model_step_for(model: PreTrainedModel) -> ModelStep[Any]:
    """The fastest `ModelStep` adapter for `model` (shared-prefix for Llama/Qwen2)."""
    try:
        return SharedPrefixStep(model)  # no per-beam copy of the context's KV cache
    except ConfigError:
        return HFModelStep(model)


def beam_answers(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Sequence[int]],
    *,
    trie: SIDTrie,
    offsets: np.ndarray | torch.Tensor | Sequence[int],
    step: ModelStep[Any],
    config: BeamSearchConfig,
    exclusion_sets: Sequence[Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The best `config.num_return` catalogue items right after each prompt row.

    Args:
        rows: prompt token rows (any lengths; left-padded here).
        trie: the catalogue's SID trie (answers are leaves of it).
        offsets: (L,) token id of code 0 of each SID level.
        step: the model's `ModelStep` adapter (`model_step_for(model)`).
        exclusion_sets: per row, catalogue indices never to answer.

    Returns:
        items (B, K) int64 (-1 = empty), sids (B, K, L) int64, scores (B, K) float32 summed
        log-probabilities of the SID tokens (-inf in empty slots), best first.
    """
    device = next(model.parameters()).device
    ids, mask = left_pad(rows, int(tokenizer.pad_token_id), device)
    excl = None if exclusion_sets is None else Exclusion.build(trie, exclusion_sets)
    result = constrained_beam_search(step, ids, mask, trie, offsets, config, excl)
    return (
        result.items.cpu().numpy(),
        result.sids.cpu().numpy(),
        result.scores.float().cpu().numpy(),
    )


@torch.inference_mode()
def complete(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    stop_ids: Sequence[int] = (),
    temperature: float = 0.0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[list[list[int]], list[bool]]:
    """Free-text continuation of a batch of prompt token rows (KV-cached, batch-first).

    A row stops at any of `stop_ids` or eos; the stop token is not returned. Greedy
    (temperature 0) gives the tokens of transformers' greedy `generate`.

    Returns:
        per row, the generated ids and whether `max_new_tokens` cut it (no stop token).
    """
    if max_new_tokens == 0:
        return [[] for _ in prompts], [True] * len(prompts)
    device = next(model.parameters()).device
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    stops = torch.tensor(list(stop_ids) + eos, dtype=torch.int64, device=device)
    ids, mask = left_pad(prompts, int(tokenizer.pad_token_id), device)
    batch = ids.shape[0]
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (B, T) positions of a left-padded batch
    logits, cache = _forward(model, ids, mask, pos, None)  # (B, V)
    next_pos = pos[:, -1] + 1  # (B,)
    written = torch.zeros(batch, max_new_tokens, dtype=torch.int64, device=device)
    length = torch.full((batch,), max_new_tokens, dtype=torch.int64, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    for t in range(max_new_tokens):
        token = _pick(logits, temperature, top_p, generator)  # (B,)
        stopped = torch.isin(token, stops) & ~done
        length = torch.where(stopped, t, length)
        done |= stopped
        written[:, t] = token
        if bool(done.all()) or t == max_new_tokens - 1:
            break
        # Finished rows keep decoding (their tokens are discarded): the batch stays rectangular.
        mask = torch.cat([mask, mask.new_ones(batch, 1)], dim=1)
        logits, cache = _forward(model, token[:, None], mask, next_pos[:, None], cache)
        next_pos = next_pos + 1
    rows = written.tolist()
    return [r[:n] for r, n in zip(rows, length.tolist(), strict=True)], (~done).tolist()


def _forward(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    pos: torch.Tensor,
    cache: Any,
) -> tuple[torch.Tensor, Any]:
    """One cached forward → (B, V) float32 logits of the last position, and the cache."""
    # transformers 5.x names the cache argument `cache`, 4.x `past_key_values`.
    params = inspect.signature(model.forward).parameters
    cache_kw = "cache" if "cache" in params else "past_key_values"
    keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
    out = model(
        input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True,
        **{cache_kw: cache}, **keep,
    )  # fmt: skip
    new_cache = getattr(out, "cache", None)
    return out.logits[:, -1].float(), out.past_key_values if new_cache is None else new_cache


def _pick(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None
) -> torch.Tensor:
    """(B, V) logits → (B,) next tokens: argmax, or temperature + top-p sampling."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(dim=-1, descending=True)
        # Keep the smallest prefix whose mass reaches top_p (always at least the best token).
        drop = (sorted_p.cumsum(dim=-1) - sorted_p) >= top_p
        sorted_p = sorted_p.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(1, order, sorted_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)
