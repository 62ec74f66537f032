"""The reasoner's decoding for training-side callers: evaluation, RL rollouts, the reasoner
CoT teacher.

`reason` decodes rendered CoT-format prompts (left-padded batches, batch-first) in two phases,
with the primitives of `slow_path.reasoner.decoding` — the same ones the slow path's
transformers backend serves with:

1. thinking (thinking prompts only, which end with `<think>`): free text, greedy or sampled
   (temperature / top-p, for RL rollouts), with a KV cache (`complete`), until a row writes
   `</think>`, `<answer>` or eos, or has written `max_think_tokens` tokens. Every row is then
   closed the same way — its thought, then `</think><answer>` — whatever made it stop, so the
   answer always follows the trained layout.
2. the answer: trie-constrained beam search over the SID tokens (`beam_answers`): exactly L
   steps, only prefixes of catalogue items, so every answer is a real item. Returns the top-K
   items with scores (summed log-probabilities of the SID tokens).

Non-thinking prompts (ending with `<think></think><answer>`) go straight to phase 2.
`decode_items` runs phase 2 alone after arbitrary prompts. `complete` and `model_step_for` are
re-exported from `slow_path.reasoner.decoding` for the trainer's callers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fast_path.beam_search import BeamSearchConfig
from fast_path.model_step import ModelStep
from sid_index.codes import format_sid, sid_token
from sid_index.errors import ConfigError, DataError
from sid_index.trie import SIDTrie
from slow_path import cot_format
from slow_path.reasoner.decoding import beam_answers, complete, model_step_for
from trainer.reasoner.sft_data import encode_prompts
from trainer.reasoner.tokenizer import decode, token_ids

__all__ = [
    "ReasonConfig",
    "ReasonOutput",
    "complete",
    "decode_items",
    "model_step_for",
    "reason",
    "sid_offsets_of",
]


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


def _reason_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    trie: SIDTrie,
    offsets: np.ndarray,
    step: ModelStep[Any],
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
    items, sids, scores = beam_answers(
        model, tokenizer, rows, trie=trie, offsets=offsets, step=step,
        config=BeamSearchConfig(beams, config.num_answers), exclusion_sets=exclusion_sets,
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
        part = beam_answers(
            model, tokenizer, rows[lo : lo + batch_size], trie=trie, offsets=offsets,
            step=step, config=cfg, exclusion_sets=excl,
        )  # fmt: skip
        parts.append(part)
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )
