"""Trace teachers: where the fast model's training traces come from.

The fast model is trained with traces that summarise the history *before* the items it must
predict. Until the reasoner exists they come from:

- `DominantPrefixTeacher`: data-derived — the user's dominant SID prefixes (recency-weighted),
  i.e. the coarse semantic categories the user keeps coming back to, as interest hypotheses;
- `PersonaOracleTeacher`: the synthetic generator's ground-truth persona plus those interests
  (an upper bound that proves the planted persona signal can be found);
- the reasoner's parsed traces replace both through the same `TraceTeacher` protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fast_path.prompt import MAX_INTERESTS, TraceTokens
from sid_index.errors import ConfigError


class TraceTeacher(Protocol):
    """Produces the trace for a user given the history it may look at."""

    @property
    def name(self) -> str:
        """Short name recorded with results (e.g. "rule")."""
        ...

    def trace(self, user: int, history: np.ndarray) -> TraceTokens | None:
        """Trace for `user` computed from `history` ((T,) catalogue indices, oldest first);
        None when the teacher has nothing to say (e.g. empty history)."""
        ...


@dataclass(frozen=True)
class DominantPrefixTeacher:
    """Interests = the user's most frequent SID prefixes, recency-weighted; no persona."""

    codes: np.ndarray
    """(N, L) SID codes of the catalogue."""
    prefix_len: int = 1
    """Levels per interest prefix (1 = the coarsest semantic cluster)."""
    max_interests: int = 3
    """At most this many interests (1..5)."""
    half_life: float = 8.0
    """Recency half-life in items: an item `half_life` steps back counts half."""
    name: str = "dominant-prefix"

    def __post_init__(self) -> None:
        if not 1 <= self.prefix_len < self.codes.shape[1]:
            raise ConfigError(f"{self.prefix_len=} must be in [1, {self.codes.shape[1] - 1}]")
        if not 1 <= self.max_interests <= MAX_INTERESTS:
            raise ConfigError(f"{self.max_interests=} must be in [1, {MAX_INTERESTS}]")
        if self.half_life <= 0:
            raise ConfigError(f"{self.half_life=} must be > 0")

    def interests(self, history: np.ndarray) -> tuple[tuple[int, ...], ...]:
        """Top prefixes of `history` by recency-weighted count, best first (ties: most recent)."""
        if len(history) == 0:
            return ()
        prefixes = self.codes[history, : self.prefix_len]  # (T, p)
        age = np.arange(len(history) - 1, -1, -1, dtype=np.float64)
        weight = 0.5 ** (age / self.half_life)
        uniq, inverse = np.unique(prefixes, axis=0, return_inverse=True)
        score = np.bincount(inverse.reshape(-1), weights=weight, minlength=len(uniq))
        order = np.argsort(-score, kind="stable")[: self.max_interests]
        return tuple(tuple(int(c) for c in uniq[i]) for i in order)

    def trace(self, user: int, history: np.ndarray) -> TraceTokens | None:
        if len(history) == 0:
            return None
        return TraceTokens(persona_id=None, interests=self.interests(history))


@dataclass(frozen=True)
class PersonaOracleTeacher:
    """Ground-truth persona (synthetic data only) plus data-derived interests."""

    personas: np.ndarray
    """(U,) planted persona id per user index."""
    interests_from: DominantPrefixTeacher
    name: str = "persona-oracle"

    def trace(self, user: int, history: np.ndarray) -> TraceTokens | None:
        return TraceTokens(
            persona_id=int(self.personas[user]),
            interests=self.interests_from.interests(history),
        )
