"""Blending the reasoner's own candidates (a trace's `candidates`) into the fast model's list.

Policies (`BlendPolicy.parse` reads the setting string):

- `none`: the fast model's items only, by summed SID log-probability.
- `interleave`: fast, reasoner, fast, reasoner, ... (fast first); an item already placed is
  skipped and the next one of the same source is taken; when one source runs out the other
  fills the rest. Each item keeps its own source's score (a fast log-probability or the
  reasoner's score), so scores are comparable within a source only; the list order is the
  ranking.
- `score_mix(alpha)`: both lists become probabilities over their own items — a softmax of the
  fast beams' log-probabilities over the returned beams, a softmax of the reasoner's scores
  (the log-probabilities of its constrained answer beams) over its candidates — and an item's
  score is `alpha * p_fast + (1 - alpha) * p_reasoner` (0 where a list lacks the item). Without
  candidates the fast probabilities are used alone, so the order equals `none`'s.

Both lists must already respect the request's filters and hold distinct catalogue indices
(the recommender drops excluded and unknown candidates first); the output never repeats an
item. Everything here is a few dozen items per request: plain numpy, no model.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from sid_index.errors import ConfigError

POLICIES = ("none", "interleave", "score_mix")
_MIX_RE = re.compile(r"^score_mix\(\s*([^)]*?)\s*\)$")


@dataclass(frozen=True, slots=True)
class BlendPolicy:
    """How trace candidates are blended into the fast model's items."""

    kind: str = "none"
    """`none`, `interleave` or `score_mix`."""
    alpha: float = 0.5
    """Weight of the fast model in `score_mix` (the reasoner gets 1 - alpha)."""

    def __post_init__(self) -> None:
        if self.kind not in POLICIES:
            raise ConfigError(f"blend policy {self.kind=} must be one of {POLICIES}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"blend policy {self.alpha=} must be in [0, 1]")

    @classmethod
    def parse(cls, text: str) -> BlendPolicy:
        """Parse `none`, `interleave`, `score_mix` (alpha 0.5) or `score_mix(0.7)`."""
        text = text.strip()
        if text in ("none", "interleave", "score_mix"):
            return cls(kind=text)
        m = _MIX_RE.match(text)
        if m is None:
            raise ConfigError(
                f"blend policy {text!r}: expected none, interleave or score_mix(alpha)"
            )
        try:
            alpha = float(m.group(1))
        except ValueError:
            raise ConfigError(
                f"blend policy {text!r}: alpha {m.group(1)!r} is not a number"
            ) from None
        return cls(kind="score_mix", alpha=alpha)

    def __str__(self) -> str:
        return f"score_mix({self.alpha:g})" if self.kind == "score_mix" else self.kind


@dataclass(frozen=True, slots=True)
class Blended:
    """A blended ranking of one request, best first."""

    items: np.ndarray
    """(n,) int64 distinct catalogue indices."""
    scores: np.ndarray
    """(n,) float64 score of each item under the policy (see the module docstring)."""
    from_fast: np.ndarray
    """(n,) bool: the item came from the fast model (False: a reasoner candidate)."""


def blend(
    policy: BlendPolicy,
    fast_items: np.ndarray,
    fast_scores: np.ndarray,
    cand_items: np.ndarray,
    cand_scores: np.ndarray,
    k: int,
) -> Blended:
    """Blend one request's lists and keep the best `k`.

    Args:
        fast_items: (F,) distinct catalogue indices from the beam search, best first.
        fast_scores: (F,) their summed log-probabilities (finite).
        cand_items: (C,) distinct, filtered reasoner candidates, best first.
        cand_scores: (C,) the reasoner's scores (finite).
        k: most items to return.
    """
    fast_items = np.asarray(fast_items, dtype=np.int64)
    fast_scores = np.asarray(fast_scores, dtype=np.float64)
    cand_items = np.asarray(cand_items, dtype=np.int64)
    cand_scores = np.asarray(cand_scores, dtype=np.float64)
    if policy.kind == "none" or (policy.kind == "interleave" and len(cand_items) == 0):
        n = min(k, len(fast_items))
        return Blended(fast_items[:n], fast_scores[:n], np.ones(n, dtype=bool))
    if policy.kind == "interleave":
        return _interleave(fast_items, fast_scores, cand_items, cand_scores, k)
    return _score_mix(policy.alpha, fast_items, fast_scores, cand_items, cand_scores, k)


def _interleave(
    fast_items: np.ndarray,
    fast_scores: np.ndarray,
    cand_items: np.ndarray,
    cand_scores: np.ndarray,
    k: int,
) -> Blended:
    # Alternating merge of two short lists (<= beams_max items): the Python loop runs at most
    # F + C times per request, cheaper than building the merge with array ops.
    sources = ((fast_items, fast_scores, True), (cand_items, cand_scores, False))
    pos = [0, 0]
    seen: set[int] = set()
    items: list[int] = []
    scores: list[float] = []
    fast: list[bool] = []
    turn = 0
    while len(items) < k and (pos[0] < len(fast_items) or pos[1] < len(cand_items)):
        src_items, src_scores, is_fast = sources[turn]
        while pos[turn] < len(src_items) and int(src_items[pos[turn]]) in seen:
            pos[turn] += 1
        if pos[turn] < len(src_items):
            item = int(src_items[pos[turn]])
            seen.add(item)
            items.append(item)
            scores.append(float(src_scores[pos[turn]]))
            fast.append(is_fast)
            pos[turn] += 1
        turn = 1 - turn
    return Blended(
        np.asarray(items, dtype=np.int64),
        np.asarray(scores, dtype=np.float64),
        np.asarray(fast, dtype=bool),
    )


def _softmax(x: np.ndarray) -> np.ndarray:
    if len(x) == 0:
        return x
    z = np.exp(x - x.max())
    return z / z.sum()


def _score_mix(
    alpha: float,
    fast_items: np.ndarray,
    fast_scores: np.ndarray,
    cand_items: np.ndarray,
    cand_scores: np.ndarray,
    k: int,
) -> Blended:
    w_fast, w_cand = alpha, 1.0 - alpha
    if len(cand_items) == 0:
        w_fast, w_cand = 1.0, 0.0
    elif len(fast_items) == 0:
        w_fast, w_cand = 0.0, 1.0
    # Union in list order: fast items first, then candidates the fast list lacks, so a stable
    # sort breaks score ties in favour of the fast model's order.
    extra = ~np.isin(cand_items, fast_items)
    items = np.concatenate([fast_items, cand_items[extra]])
    mixed = np.zeros(len(items), dtype=np.float64)
    mixed[: len(fast_items)] = w_fast * _softmax(fast_scores)
    p_cand = w_cand * _softmax(cand_scores)
    slot = np.empty(len(cand_items), dtype=np.int64)  # position of each candidate in `items`
    in_fast = ~extra
    if in_fast.any():
        order = np.argsort(fast_items, kind="stable")
        slot[in_fast] = order[np.searchsorted(fast_items, cand_items[in_fast], sorter=order)]
    slot[extra] = len(fast_items) + np.arange(int(extra.sum()))
    np.add.at(mixed, slot, p_cand)
    rank = np.argsort(-mixed, kind="stable")[:k]
    from_fast = rank < len(fast_items)
    return Blended(items[rank], mixed[rank], from_fast)
