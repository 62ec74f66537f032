"""Itemic alignment pre-training (R0 perception): teach the reasoner what SID tokens mean.

Two phases over the same prompt → completion corpus (item ↔ text, item ↔ item, user
sequences; built by `trainer/cot/corpus.py`), both with the loss on the completion only:

1. warm-up: the backbone is frozen and only the rows of the NEW tokens (SID, persona and
   marker tokens) of the input embedding — and of `lm_head` when it is untied — are trained,
   so the extended vocabulary catches up with a base model without disturbing it. Every other
   row stays bit-for-bit unchanged (gradient row masks, no weight decay; see `RowMask`);
2. full-parameter training.

Outputs: `out_dir/warmup/` and `out_dir/full/` (metrics.jsonl, curves.png, resumable `last/`)
and `out_dir/final/`, a reasoner directory the SFT stage starts from.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from sid_index.errors import ConfigError
from trainer.reasoner.model import Reasoner, input_matrix, output_matrix
from trainer.reasoner.optim import RowMask
from trainer.reasoner.sft_data import PromptCompletion, TokenizedSamples, tokenize_samples
from trainer.reasoner.train_loop import (
    EvalFn,
    LoopConfig,
    LoopResult,
    train_causal_lm,
)


@dataclass(frozen=True, slots=True)
class AlignTrainConfig(LoopConfig):
    """Alignment stage settings: the shared loop settings (full-parameter phase) plus the
    embedding warm-up phase."""

    warmup_steps: int = 100
    """Optimizer steps of the embedding warm-up phase (0 skips it). It matters for a
    pre-trained base; a `scratch:*` backbone is random, so a short warm-up (or 0) is enough."""
    warmup_lr: float = 1e-3
    """Peak learning rate of the warm-up phase (only new embedding rows move)."""

    def __post_init__(self) -> None:
        LoopConfig.__post_init__(self)
        if self.warmup_steps < 0:
            raise ConfigError(f"{self.warmup_steps=} must be >= 0")
        if not self.warmup_lr > 0:
            raise ConfigError(f"{self.warmup_lr=} must be > 0")

    def loop(self) -> LoopConfig:
        """The full-parameter phase's loop settings."""
        names = [f.name for f in dataclasses.fields(LoopConfig)]
        return LoopConfig(**{n: getattr(self, n) for n in names})

    def warmup_loop(self) -> LoopConfig:
        """The warm-up phase's loop settings: `warmup_steps` steps at `warmup_lr`, no decay."""
        return dataclasses.replace(
            self.loop(),
            # Every epoch has >= 1 step, so this many epochs always reach max_steps.
            epochs=self.warmup_steps,
            max_steps=self.warmup_steps,
            lr=self.warmup_lr,
            lr_warmup_steps=min(self.lr_warmup_steps, max(1, self.warmup_steps // 10)),
            weight_decay=0.0,
            save_every=self.save_every,
        )


@dataclass
class AlignResult:
    """Outcome of the alignment stage."""

    warmup: LoopResult | None
    """The embedding warm-up phase (None when skipped)."""
    full: LoopResult
    """The full-parameter phase."""
    final_dir: Path
    """The aligned reasoner directory."""
    num_samples: int
    """Samples trained on (after dropping those that do not fit)."""
    truncated: int
    """Samples whose prompt was cut to fit `max_length`."""


def new_row_masks(reasoner: Reasoner) -> tuple[list[torch.nn.Parameter], list[RowMask]]:
    """Trainable matrices and row masks of the warm-up: the new tokens' embedding rows (and
    `lm_head` rows when the head is untied)."""
    emb = input_matrix(reasoner.model)
    rows = torch.from_numpy(reasoner.vocab.new_token_mask(emb.shape[0]))
    if not bool(rows.any()):
        raise ConfigError("the reasoner has no new token rows to warm up; set warmup_steps=0")
    params = [emb]
    head = output_matrix(reasoner.model)
    if head is not None and head is not emb:
        params.append(head)
    return params, [RowMask(p, rows) for p in params]


def train_align(
    reasoner: Reasoner,
    samples: Sequence[PromptCompletion] | TokenizedSamples,
    cfg: AlignTrainConfig,
    out_dir: Path,
    *,
    evaluate: EvalFn | None = None,
    resume: bool = True,
) -> AlignResult:
    """Run both alignment phases on `reasoner` (trained in place) and save `out_dir/final`.

    Args:
        samples: `AlignSample`s (anything with prompt/completion) or already tokenized data.
        evaluate: rank-0 callback after every full-phase epoch (e.g. R0/R1 tiers).
        resume: continue each phase from its `last/` checkpoint; a finished phase is skipped
            (its final weights are loaded).
    """
    data = (
        samples
        if isinstance(samples, TokenizedSamples)
        else tokenize_samples(reasoner.tokenizer, samples, cfg.max_length)
    )
    warm: LoopResult | None = None
    if cfg.warmup_steps > 0:
        params, masks = new_row_masks(reasoner)
        warm = train_causal_lm(
            reasoner,
            data,
            cfg.warmup_loop(),
            out_dir / "warmup",
            stage="align warm-up",
            trainable=params,
            row_masks=masks,
            resume=resume,
        )
    full = train_causal_lm(
        reasoner, data, cfg.loop(), out_dir / "full", stage="align", evaluate=evaluate,
        resume=resume,
    )  # fmt: skip
    final = out_dir / "final"
    save_final(reasoner, final)
    return AlignResult(warm, full, final, len(data), data.truncated)


def save_final(reasoner: Reasoner, directory: Path) -> None:
    """Rank 0 writes the reasoner directory; every rank waits until it exists."""
    initialized = dist.is_available() and dist.is_initialized()
    if not initialized or dist.get_rank() == 0:
        reasoner.save(directory)
    if initialized:
        dist.barrier()
