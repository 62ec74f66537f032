"""RL prompts: a user's recent history rendered as a reasoner prompt, plus the true next item.

Cut from a leave-one-out split the way the rest of the trainer does it:

- "train": the last train item is the target, the items before it the history (what RL
  optimizes on; the valid and test targets stay unseen);
- "valid": the whole train part → the valid target (RL's per-step evaluation);
- "test": train part + valid target → the test target (final numbers).

A prompt belongs to the domain of its target item; `domain=` keeps one domain's prompts (a
domain expert is trained on those only).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sid_index.datasets.splits import LeaveOneOutSplit
from sid_index.errors import ConfigError, DataError
from sid_index.records import Catalog
from slow_path.cot_format import PromptItem, render_prompt

PARTS = ("train", "valid", "test")


@dataclass(frozen=True, slots=True)
class RLPrompt:
    """One prompt of the RL stage (thinking or not) and its held-out answer."""

    prompt: str
    """`render_prompt(history, thinking=...)`."""
    history: np.ndarray
    """(h,) int64 catalogue indices shown in the prompt, oldest first."""
    target: int
    """Catalogue index of the true next item."""
    domain: str
    """Domain of the target item."""
    user: int
    """Row of the user in the split."""


def build_prompts(
    split: LeaveOneOutSplit,
    catalog: Catalog,
    codes: np.ndarray,
    *,
    part: str = "train",
    max_history: int = 20,
    domain: str | None = None,
    thinking: bool = True,
    limit: int | None = None,
    seed: int = 0,
) -> list[RLPrompt]:
    """Prompts of one split part (see the module docstring).

    Args:
        codes: (N, L) SID codes of the catalogue.
        domain: keep only prompts whose target lies in this domain (None: all).
        limit: keep a seeded random subset of at most this many prompts.
    """
    if part not in PARTS:
        raise ConfigError(f"{part=} must be one of {PARTS}")
    if max_history < 1:
        raise ConfigError(f"{max_history=} must be >= 1")
    if domain is not None and domain not in set(catalog.domains):
        raise ConfigError(
            f"domain {domain!r} is not in the catalogue (domains: {catalog.domain_names()})"
        )
    if part == "train":
        lengths = split.train_lengths()
        users = np.flatnonzero(lengths >= 2)  # need one history item before the target
        ends = split.train_indptr[users + 1] - 1  # index of the target in train_items
        targets = split.train_items[ends]
        starts = np.maximum(split.train_indptr[users], ends - max_history)
        histories = [split.train_items[s:e] for s, e in zip(starts, ends, strict=True)]
    else:
        samples = (split.valid_inputs if part == "valid" else split.test_inputs)(max_history)
        users = samples.users
        targets = samples.targets
        histories = [samples.history(j) for j in range(len(samples))]
    keep = np.arange(len(users))
    if domain is not None:
        keep = np.asarray(
            [j for j in keep.tolist() if catalog.domains[int(targets[j])] == domain], np.int64
        )
    if limit is not None and len(keep) > limit:
        keep = np.sort(np.random.default_rng([seed, 31]).choice(keep, size=limit, replace=False))
    codes = np.asarray(codes)
    out = []
    for j in keep.tolist():
        hist = np.asarray(histories[j], dtype=np.int64)
        items = [PromptItem(tuple(codes[i].tolist()), catalog.titles[i]) for i in hist.tolist()]
        t = int(targets[j])
        out.append(
            RLPrompt(
                render_prompt(items, thinking=thinking), hist, t, catalog.domains[t], int(users[j])
            )
        )
    return out


def with_thinking(
    prompts: Sequence[RLPrompt], codes: np.ndarray, catalog: Catalog, *, thinking: bool
) -> list[RLPrompt]:
    """The same prompts rendered in the other mode (thinking or not)."""
    codes = np.asarray(codes)
    out = []
    for p in prompts:
        items = [
            PromptItem(tuple(codes[i].tolist()), catalog.titles[i]) for i in p.history.tolist()
        ]
        out.append(
            RLPrompt(render_prompt(items, thinking=thinking), p.history, p.target, p.domain, p.user)
        )
    return out


def targets_of(prompts: Sequence[RLPrompt]) -> np.ndarray:
    """(P,) int64 target of each prompt (DataError when empty)."""
    if not prompts:
        raise DataError("no prompts (is the domain filter too narrow?)")
    return np.asarray([p.target for p in prompts], dtype=np.int64)
