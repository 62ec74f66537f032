"""The reasoner's decoding, for evaluation and the slow path's transformers backend.

Two phases per batch of prompts (left-padded, batch-first):

1. thinking (thinking prompts only, which end with `<think>`): free text, greedy or sampled
   (temperature / top-p, for RL rollouts), with a KV cache, until a row writes `</think>`,
   `<answer>` or eos, or has written `max_think_tokens` tokens. Every row is then closed the
   same way — its thought, then `</think><answer>` — whatever made it stop, so the answer
   always follows the trained layout.
2. the answer: trie-constrained beam search over the SID tokens
   (`fast_path.beam_search.constrained_beam_search`): exactly L steps, only prefixes of
   catalogue items, so every answer is a real item. Returns the top-K items with scores
   (summed log-probabilities of the SID tokens).

Non-thinking prompts (ending with `<think></think><answer>`) go straight to phase 2.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fast_path.beam_search import BeamSearchConfig, constrained_beam_search
from fast_path.model_step import HFModelStep, ModelStep, SharedPrefixStep
from sid_index.codes import format_sid, sid_token
from sid_index.errors import ConfigError, DataError
from sid_index.trie import Exclusion, SIDTrie
from slow_path import cot_format
from trainer.reasoner.sft_data import encode_prompts
from trainer.reasoner.tokenizer import decode, token_ids


@dataclass(frozen=True, slots=True)
class ReasonConfig:
    """Decoding settings of `reason`."""

    thinking: bool = True
    """Prompts end with `<think>` (write a thought first) or with `<answer>` (answer only)."""
    max_think_tokens: int = 256
    """Thought budget in tokens; a row that reaches it is closed with `</think><answer>`."""
    num_answers: int = 10
    """Items returned per prompt (top-K of the constrained beam search)."""
    num_beams: int = 0
    """Beam width of the answer (0: `num_answers`)."""
    temperature: float = 0.0
    """Thought sampling temperature (0: greedy)."""
    top_p: float = 1.0
    """Nucleus sampling mass for the thought (1: no cut)."""
    batch_size: int = 16
    """Prompts decoded together."""

    def __post_init__(self) -> None:
        if self.max_think_tokens < 0:
            raise ConfigError(f"{self.max_think_tokens=} must be >= 0")
        if self.num_answers < 1 or self.batch_size < 1:
            raise ConfigError(f"{self.num_answers=} and {self.batch_size=} must be >= 1")
        if self.num_beams and self.num_beams < self.num_answers:
            raise ConfigError(f"{self.num_beams=} must be 0 or >= {self.num_answers=}")
        if self.temperature < 0:
            raise ConfigError(f"{self.temperature=} must be >= 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"{self.top_p=} must be in (0, 1]")


@dataclass(frozen=True, slots=True)
class ReasonOutput:
    """The reasoner's output for one prompt."""

    text: str
    """The completion as `parse_completion` reads it: thought + `</think><answer>` + best SID +
    `</answer>` (thinking), or best SID + `</answer>` (non-thinking)."""
    thought: str
    """The free text the model wrote before `</think>` ("" in non-thinking mode)."""
    think_tokens: int
    """Tokens the model wrote in the thought (<= max_think_tokens)."""
    hit_budget: bool
    """The thought was cut at `max_think_tokens`."""
    items: np.ndarray
    """(K,) int64 catalogue indices, best first; -1 where fewer than K items exist."""
    sids: np.ndarray
    """(K, L) int64 SID codes of `items`; -1 in empty slots."""
    scores: np.ndarray
    """(K,) float32 summed log-probabilities of the SID tokens; -inf in empty slots."""


def sid_offsets_of(tokenizer: PreTrainedTokenizerBase, level_sizes: Sequence[int]) -> np.ndarray:
    """(L,) token id of code 0 of each level; DataError if a level's ids are not contiguous."""
    offsets = []
    for level, size in enumerate(level_sizes):
        ids = token_ids(tokenizer, [sid_token(level, 0), sid_token(level, size - 1)])
        if ids[1] - ids[0] != size - 1:
            raise DataError(
                f"tokenizer has no contiguous ids for level {level}'s {size} SID tokens"
            )
        offsets.append(int(ids[0]))
    return np.asarray(offsets, dtype=np.int64)


def model_step_for(model: PreTrainedModel) -> ModelStep:
    """The fastest `ModelStep` adapter for `model` (shared-prefix for Llama/Qwen2)."""
    try:
        return SharedPrefixStep(model)
    except ConfigError:
        return HFModelStep(model)


def reason(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    trie: SIDTrie,
    config: ReasonConfig,
    exclusion_sets: Sequence[Sequence[int]] | None = None,
    generator: torch.Generator | None = None,
) -> list[ReasonOutput]:
    """Decode a thought (thinking mode) and the top-K answer items for every prompt.

    Args:
        prompts: rendered by `cot_format.render_prompt(..., thinking=config.thinking)`.
        trie: the catalogue's SID trie (answers are leaves of it).
        exclusion_sets: per prompt, catalogue indices never to answer (e.g. already seen).
        generator: RNG of thought sampling (temperature > 0).
    """
    closing = cot_format.ANSWER if not config.thinking else cot_format.THINK
    bad = [i for i, p in enumerate(prompts) if not p.endswith(closing)]
    if bad:
        raise DataError(
            f"prompt {bad[0]} does not end with {closing!r} as a "
            f"{'thinking' if config.thinking else 'non-thinking'} prompt must"
        )
    if exclusion_sets is not None and len(exclusion_sets) != len(prompts):
        raise DataError(f"{len(exclusion_sets)} exclusion sets for {len(prompts)} prompts")
    offsets = sid_offsets_of(tokenizer, trie.level_sizes)
    step = model_step_for(model)
    out: list[ReasonOutput] = []
    was_training = model.training
    model.eval()
    try:
        for lo in range(0, len(prompts), config.batch_size):
            chunk = list(prompts[lo : lo + config.batch_size])
            excl = None if exclusion_sets is None else exclusion_sets[lo : lo + config.batch_size]
            out += _reason_batch(
                model, tokenizer, chunk, trie, offsets, step, config, excl, generator
            )
    finally:
        model.train(was_training)
    return out


def _left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) left-padded ids and 0/1 attention mask."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.int64)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def _reason_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    trie: SIDTrie,
    offsets: np.ndarray,
    step: ModelStep,
    config: ReasonConfig,
    exclusion_sets: Sequence[Sequence[int]] | None,
    generator: torch.Generator | None,
) -> list[ReasonOutput]:
    rows = encode_prompts(tokenizer, prompts)
    thoughts: list[list[int]] = [[] for _ in rows]
    hit_budget = [False] * len(rows)
    if config.thinking:
        stops = token_ids(tokenizer, [cot_format.THINK_END, cot_format.ANSWER])
        thoughts, hit_budget = complete(
            model, tokenizer, rows, max_new_tokens=config.max_think_tokens, stop_ids=stops,
            temperature=config.temperature, top_p=config.top_p, generator=generator,
        )  # fmt: skip
        close = token_ids(tokenizer, [cot_format.THINK_END, cot_format.ANSWER])
        rows = [r + t + close for r, t in zip(rows, thoughts, strict=True)]
    beams = max(config.num_beams, config.num_answers)
    items, sids, scores = _beam(
        model, tokenizer, rows, trie, offsets, step, BeamSearchConfig(beams, config.num_answers),
        exclusion_sets,
    )  # fmt: skip
    out = []
    for i, thought_ids in enumerate(thoughts):
        thought = decode(tokenizer, thought_ids, skip_special=False) if thought_ids else ""
        answer = format_sid(sids[i, 0]) + cot_format.ANSWER_END if items[i, 0] >= 0 else ""
        head = thought + cot_format.THINK_END + cot_format.ANSWER if config.thinking else ""
        out.append(
            ReasonOutput(
                head + answer, thought, len(thought_ids), hit_budget[i], items[i], sids[i],
                scores[i],
            )
        )  # fmt: skip
    return out


def _beam(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Sequence[int]],
    trie: SIDTrie,
    offsets: np.ndarray,
    step: ModelStep,
    beam_config: BeamSearchConfig,
    exclusion_sets: Sequence[Sequence[int]] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    device = next(model.parameters()).device
    ids, mask = _left_pad(rows, int(tokenizer.pad_token_id), device)
    excl = None if exclusion_sets is None else Exclusion.build(trie, exclusion_sets)
    result = constrained_beam_search(step, ids, mask, trie, offsets, beam_config, excl)
    return (
        result.items.cpu().numpy(),
        result.sids.cpu().numpy(),
        result.scores.float().cpu().numpy(),
    )


def decode_items(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[str],
    *,
    trie: SIDTrie,
    num_answers: int,
    num_beams: int = 0,
    batch_size: int = 16,
    exclusion_sets: Sequence[Sequence[int]] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Trie-constrained top-K items right after arbitrary prompts (e.g. an item-to-item prompt
    of the alignment corpus).

    Returns:
        items (P, K) int64 (-1 = empty), sids (P, K, L) int64, scores (P, K) float32.
    """
    offsets = sid_offsets_of(tokenizer, trie.level_sizes)
    step = model_step_for(model)
    cfg = BeamSearchConfig(max(num_beams, num_answers), num_answers)
    rows = encode_prompts(tokenizer, prompts)
    parts = []
    for lo in range(0, len(rows), batch_size):
        excl = None if exclusion_sets is None else exclusion_sets[lo : lo + batch_size]
        parts.append(
            _beam(model, tokenizer, rows[lo : lo + batch_size], trie, offsets, step, cfg, excl)
        )
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
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

    A row stops at any of `stop_ids` or eos; the stop token is not returned.

    Returns:
        per row, the generated ids and whether `max_new_tokens` cut it (no stop token).
    """
    if max_new_tokens == 0:
        return [[] for _ in prompts], [True] * len(prompts)
    device = next(model.parameters()).device
    eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
    stops = torch.tensor(list(stop_ids) + eos, dtype=torch.int64, device=device)
    ids, mask = _left_pad(prompts, int(tokenizer.pad_token_id), device)
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
