"""Prompt → completion samples as token batches with the loss on the completion only.

A sample is `bos + prompt + completion + eos` (prompt and completion tokenized separately, the
way generation sees them: the prompt alone, then the model's own tokens). Labels are -100 on
bos and the prompt. Two batch layouts:

- padding: one sample per row, rows of similar length batched together (length bucketing
  keeps the padding small), right-padded with an attention mask;
- packing: several samples per row of `max_length` tokens, each with positions restarting at
  0 and no attention mask — transformers then builds a block-diagonal causal mask from the
  position ids, so packed samples never attend to each other (the model must be called with
  `use_cache=False`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase

from sid_index.errors import ConfigError, DataError

IGNORE = -100
"""Label of a position that carries no loss."""

_BUCKET_BATCHES = 50
"""Length bucketing sorts windows of this many batches (random across windows)."""

Plan = list[list[list[int]]]
"""An epoch's batches: batch → rows → sample indices (one per row unless packing)."""


class PromptCompletion(Protocol):
    """Anything with a prompt and a completion (`SFTSample`, `AlignSample`)."""

    @property
    def prompt(self) -> str: ...

    @property
    def completion(self) -> str: ...


@dataclass(frozen=True, slots=True)
class TokenizedSamples:
    """Token ids of a sample set."""

    ids: list[np.ndarray]
    """Per sample, (n,) int64 `bos + prompt + completion + eos` ids."""
    prompt_lens: np.ndarray
    """(S,) int64 leading tokens of each sample without loss (bos + prompt)."""
    truncated: int
    """Samples whose prompt was cut from the left to fit `max_length`."""
    dropped: int
    """Samples left out because the completion alone does not fit."""

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        """(S,) int64 tokens per sample."""
        return np.fromiter((len(x) for x in self.ids), dtype=np.int64, count=len(self.ids))


@dataclass(frozen=True, slots=True)
class Batch:
    """One micro-batch, batch-first."""

    input_ids: torch.Tensor
    """(B, T) int64."""
    labels: torch.Tensor
    """(B, T) int64 token ids where the loss applies, IGNORE elsewhere (unshifted)."""
    attention_mask: torch.Tensor | None
    """(B, T) int64 (padding layout) or None (packing layout)."""
    position_ids: torch.Tensor
    """(B, T) int64; restart at 0 for each packed sample."""
    num_tokens: int
    """Real (non-pad) tokens in the batch."""

    @property
    def num_label_tokens(self) -> int:
        """Positions that carry loss (after the causal shift)."""
        return int((self.labels[:, 1:] != IGNORE).sum())

    def to(self, device: torch.device) -> Batch:
        """The batch on `device`."""
        mask = None if self.attention_mask is None else self.attention_mask.to(device)
        return Batch(
            self.input_ids.to(device),
            self.labels.to(device),
            mask,
            self.position_ids.to(device),
            self.num_tokens,
        )


def prompt_prefix_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokens placed before every prompt (bos where the tokenizer has one)."""
    return [] if tokenizer.bos_token_id is None else [int(tokenizer.bos_token_id)]


def encode_prompts(tokenizer: PreTrainedTokenizerBase, prompts: Sequence[str]) -> list[list[int]]:
    """Prompt token ids exactly as in training (`bos + prompt`), for generation."""
    head = prompt_prefix_ids(tokenizer)
    enc = tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
    return [head + list(ids) for ids in enc]


def tokenize_samples(
    tokenizer: PreTrainedTokenizerBase, samples: Sequence[PromptCompletion], max_length: int
) -> TokenizedSamples:
    """Tokenize samples; over-long prompts lose their oldest tokens (the history's start).

    Raises DataError when no sample fits."""
    if max_length < 4:
        raise ConfigError(f"{max_length=} must be >= 4")
    if tokenizer.eos_token_id is None:
        raise DataError("the reasoner's tokenizer has no eos token")
    head = prompt_prefix_ids(tokenizer)
    eos = [int(tokenizer.eos_token_id)]
    prompts = tokenizer([s.prompt for s in samples], add_special_tokens=False)["input_ids"]
    completions = tokenizer([s.completion for s in samples], add_special_tokens=False)["input_ids"]
    ids: list[np.ndarray] = []
    prompt_lens: list[int] = []
    truncated = dropped = 0
    for prompt, completion in zip(prompts, completions, strict=True):
        room = max_length - len(head) - len(completion) - 1
        if room < 1:
            dropped += 1
            continue
        if len(prompt) > room:
            prompt = prompt[len(prompt) - room :]
            truncated += 1
        ids.append(np.asarray(head + prompt + completion + eos, dtype=np.int64))
        prompt_lens.append(len(head) + len(prompt))
    if not ids:
        raise DataError(f"none of {len(samples)} samples fits in {max_length=} tokens")
    return TokenizedSamples(ids, np.asarray(prompt_lens, dtype=np.int64), truncated, dropped)


def plan_epoch(
    data: TokenizedSamples,
    batch_size: int,
    max_length: int,
    *,
    packing: bool,
    rng: np.random.Generator,
) -> Plan:
    """Shuffle an epoch into batches of `batch_size` rows (padding or packing layout)."""
    order = rng.permutation(len(data))
    lengths = data.lengths
    if packing:
        rows: list[list[int]] = []
        row: list[int] = []
        used = 0
        for i in order.tolist():
            if used + lengths[i] > max_length and row:
                rows.append(row)
                row, used = [], 0
            row.append(i)
            used += int(lengths[i])
        rows.append(row)
    else:
        # Sort within windows of many batches: little padding, still a random order.
        window = batch_size * _BUCKET_BATCHES
        chunks = [order[i : i + window] for i in range(0, len(order), window)]
        order = np.concatenate([c[np.argsort(lengths[c], kind="stable")] for c in chunks])
        rows = [[int(i)] for i in order]
    batches = [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    return [batches[j] for j in rng.permutation(len(batches))]


def collate(data: TokenizedSamples, rows: list[list[int]], pad_id: int, *, packing: bool) -> Batch:
    """Build the tensors of one planned batch."""
    row_ids = [np.concatenate([data.ids[i] for i in row]) for row in rows]
    width = max(len(r) for r in row_ids)
    n = len(rows)
    ids = np.full((n, width), pad_id, dtype=np.int64)
    labels = np.full((n, width), IGNORE, dtype=np.int64)
    positions = np.zeros((n, width), dtype=np.int64)
    mask = np.zeros((n, width), dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            sample = data.ids[i]
            end = at + len(sample)
            ids[r, at:end] = sample
            labels[r, at + data.prompt_lens[i] : end] = sample[data.prompt_lens[i] :]
            positions[r, at:end] = np.arange(len(sample))
            at = end
        mask[r, :at] = 1
        # Padding continues the positions so it never looks like the start of a sample.
        positions[r, at:] = positions[r, at - 1] + 1 + np.arange(width - at)
    return Batch(
        input_ids=torch.from_numpy(ids),
        labels=torch.from_numpy(labels),
        attention_mask=None if packing else torch.from_numpy(mask),
        position_ids=torch.from_numpy(positions),
        num_tokens=int(mask.sum()),
    )


def local_micro_batches(plan_len: int, rank: int, world: int) -> list[int]:
    """Indices of the plan's micro-batches that `rank` runs: every world-th, wrapping around so
    every rank runs the same number (DDP steps in lockstep)."""
    per_rank = math.ceil(plan_len / world)
    return [(rank + world * i) % plan_len for i in range(per_rank)]
