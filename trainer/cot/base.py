"""What a chain-of-thought teacher is: the `CoTTeacher` protocol and its output record.

A teacher writes the three-part CoT (persona → interests → transition) for one training
example. Teachers are pluggable: `RuleTeacher` derives it from the data, `LLMTeacher` asks an
OpenAI-compatible endpoint (falling back to another teacher when the endpoint fails).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from sid_index.errors import ReasonrecError
from slow_path.cot_format import CoT


class TeacherError(ReasonrecError):
    """A teacher could not produce a valid chain of thought (after its retries)."""


@dataclass(frozen=True, slots=True)
class TeacherCoT:
    """A teacher's chain of thought for one example, with how it was made."""

    cot: CoT
    """The chain of thought (1..5 interests, `next_interest` set)."""
    hindsight: bool
    """True when the teacher looked at the true next item to pick the transition (and possibly
    to add the interest it comes from): a training rationale, not a prediction."""
    predicted_next: int | None
    """The teacher's history-only choice of next interest (index into `cot.interests`), so the
    gap between prediction and hindsight can be measured; None when it made none."""
    source: str
    """Name of the teacher that wrote it (e.g. "rule", "llm:qwen3", "rule (fallback)")."""
    added_by_hindsight: bool = False
    """True when the chosen interest exists only because the teacher saw the next item (it
    was added, or widened from a level-0+1 prefix, to cover it)."""


class CoTTeacher(Protocol):
    """Writes the chain of thought for a (user, history, next item) example."""

    name: str

    def explain(self, user: int, history: np.ndarray, target: int | None) -> TeacherCoT | None:
        """CoT for `user` from `history` ((T,) catalogue indices, oldest first).

        Args:
            user: row of the user in the source `Interactions` (for persona look-ups).
            target: the true next item (training examples), or None to predict from history.

        Returns:
            The CoT, or None when the teacher has nothing to say (e.g. an empty history).
        """
        ...
