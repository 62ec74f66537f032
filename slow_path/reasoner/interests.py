"""History interests: the history-only Interest Expansion rules, in one place.

The slow path's rule backend (`rule_backend.RuleReasoner`) and the trainer's rule CoT teacher
(`trainer/cot/rule_teacher.py`) read a user's interests from the history the same way:

- each history item weighs `0.5 ** (age / half_life)` (the most recent item 1);
- the level-0 SID prefixes are ranked by their share of that mass, ties going to the prefix
  seen most recently; they are taken heaviest first until they cover `coverage` of the mass,
  each after the first holding at least `min_share`, at most `max_interests`;
- a prefix whose mass sits mostly (>= `narrow_share`) in one level-1 child is narrowed to that
  level-0+1 prefix.

The teacher adds an expansion interest from training-set statistics on top; the backend ranks
candidate items under the interests. Both name the move to an interest the history holds with
`history_transition`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sid_index.errors import ConfigError
from slow_path.cot_format import MAX_INTERESTS, short_title
from slow_path.reasoner.personas import recency_weights

TITLE_WORDS = 6
"""Words of the most recent item's title quoted in a transition sentence."""


@dataclass(frozen=True, slots=True)
class InterestRules:
    """How a history's interests are read from its items' SIDs (see the module docstring)."""

    max_interests: int = MAX_INTERESTS
    """At most this many interests (1..5)."""
    coverage: float = 0.8
    """Interests are added until they cover this share of the recency-weighted history mass."""
    min_share: float = 0.08
    """An interest beyond the first needs at least this share of the mass."""
    narrow_share: float = 0.6
    """A level-0 prefix is narrowed to a level-1 child holding this share of its mass."""
    half_life: float = 8.0
    """Recency half-life in items: an item `half_life` steps back counts half."""
    narrow_to_full_sid: bool = False
    """Narrow also when SIDs have 2 levels, so the narrowed prefix is a whole SID (which the
    CoT parser rejects as an interest). The trainer's rule teacher has always done so and sets
    it to keep its output unchanged; the rule backend keeps interests shorter than a SID."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_interests <= MAX_INTERESTS:
            raise ConfigError(f"{self.max_interests=} must be in [1, {MAX_INTERESTS}]")
        if not 0.0 < self.coverage <= 1.0:
            raise ConfigError(f"{self.coverage=} must be in (0, 1]")
        if not 0.0 < self.narrow_share <= 1.0:
            raise ConfigError(f"{self.narrow_share=} must be in (0, 1]")
        if not 0.0 <= self.min_share <= 1.0:
            raise ConfigError(f"{self.min_share=} must be in [0, 1]")
        if self.half_life <= 0:
            raise ConfigError(f"{self.half_life=} must be > 0")

    def weights(self, length: int) -> np.ndarray:
        """(T,) recency weight of each history position, oldest first (1 for the most recent)."""
        return recency_weights(length, self.half_life)

    def interests(self, codes: np.ndarray) -> tuple[list[tuple[int, ...]], np.ndarray]:
        """The interests a history holds, best first.

        Args:
            codes: (T, L) SID codes of the history items, oldest first (T >= 1).

        Returns:
            the interests' SID prefixes (1 or 2 codes each) and (n,) float64 their shares of
            the history's weighted mass (not renormalized: they sum to <= 1).
        """
        w = self.weights(len(codes))  # (T,)
        top0, inverse = np.unique(codes[:, 0], return_inverse=True)
        inverse = inverse.reshape(-1)  # (T,) group of each item
        share = np.bincount(inverse, weights=w, minlength=len(top0)) / w.sum()  # (G,)
        last_seen = np.zeros(len(top0))
        np.maximum.at(last_seen, inverse, np.arange(len(codes), dtype=np.float64))
        can_narrow = self.narrow_to_full_sid or codes.shape[1] >= 3
        prefixes: list[tuple[int, ...]] = []
        kept: list[float] = []
        covered = 0.0
        for g in np.lexsort((-last_seen, -share)).tolist():  # mass first, then the most recent
            if prefixes and (share[g] < self.min_share or covered >= self.coverage):
                break
            prefix: tuple[int, ...] = (int(top0[g]),)
            members = inverse == g
            if can_narrow and members.sum() >= 2:
                kids, kid_inv = np.unique(codes[members, 1], return_inverse=True)
                kid_mass = np.bincount(kid_inv.reshape(-1), weights=w[members])
                if kid_mass.max() >= self.narrow_share * kid_mass.sum():
                    prefix = (prefix[0], int(kids[kid_mass.argmax()]))
            prefixes.append(prefix)
            kept.append(float(share[g]))
            covered += float(share[g])
            if len(prefixes) == self.max_interests:
                break
        return prefixes, np.asarray(kept, dtype=np.float64)


def last_item_phrase(title: str) -> str:
    """How a transition sentence names the most recent item: the start of its title."""
    return short_title(title, TITLE_WORDS) or "the last item"


def history_transition(last_item: str, label: str, *, holds_last: bool) -> str:
    """The transition sentence toward an interest the history holds.

    Args:
        last_item: the most recent item as `last_item_phrase` names it.
        label: the interest's label.
        holds_last: the most recent item lies under the interest (the user continues).
    """
    if holds_last:
        return f"after {last_item}, more {label} is the most likely next step"
    return f"after {last_item}, a return to {label}, a steady interest in the history"
