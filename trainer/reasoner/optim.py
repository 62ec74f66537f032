"""The reasoner stages' optimizer: AdamW parameter groups, the learning-rate schedule, and
row masks (train only some rows of a matrix — the alignment warm-up's new token embeddings).

A row-masked matrix's other rows get their gradient zeroed before every step and carry no
weight decay (decoupled decay would shrink them even with a zero gradient), so AdamW leaves
them bit-for-bit unchanged: zero gradients keep both moments at zero and the update at zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True, slots=True)
class RowMask:
    """Train only `rows` of `param` (a (V, H) matrix)."""

    param: nn.Parameter
    rows: torch.Tensor
    """(V,) bool: rows that may change."""

    def apply(self) -> None:
        """Zero the gradient of the frozen rows (call after backward, before the step)."""
        if self.param.grad is not None:
            self.param.grad.mul_(self.rows.to(self.param.grad.device)[:, None])


def lr_factor(step: int, total: int, warmup_steps: int, min_ratio: float) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to `min_ratio`."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    frac = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * frac))


def adamw(
    model: nn.Module, lr: float, weight_decay: float, row_masks: Sequence[RowMask]
) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; decay on matrices that are not row-masked."""
    masked = {id(m.param) for m in row_masks}
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        # Decay would shrink the frozen rows of a row-masked matrix: exempt the whole matrix.
        (decay if p.ndim >= 2 and id(p) not in masked else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))
