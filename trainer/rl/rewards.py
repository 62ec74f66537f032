"""Set-wise rewards of the reasoner's RL stage: a whole candidate list is scored at once.

A rollout answers a prompt with a list of K catalogue items (best first). Its reward is a
weighted sum of four parts, each in [0, 1]:

- hit: rank-aware hit of the true next item — `1 / log2(rank + 2)` ("ndcg", the NDCG of a
  single relevant item) or `1 / (rank + 1)` ("rr", reciprocal rank) for a 0-based rank < K,
  else 0;
- coverage: the share of the user's interests (SID prefixes) that at least one listed item
  falls under. The interests come from the history (its most frequent prefixes, recency
  breaking ties) or from the trace's own `<interest>` blocks;
- diversity: distinct SID prefixes of `diversity_depth` levels among the listed items, / K;
- format: 1 for a thought that parses without problems, 0.5 for a usable thought with
  problems (a dropped block, a cut at the budget), 0 when nothing usable remains.

Interests travel as padded prefix arrays: `(N, I, L)` int64 codes where an interest of depth
d < L has -1 in its last L - d columns and an absent interest is all -1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sid_index.errors import ConfigError, DataError
from slow_path.cot_format import MAX_INTERESTS, ParsedCompletion
from trainer.metrics import hit_ranks

RANK_GAINS = ("ndcg", "rr")
INTEREST_SOURCES = ("history", "trace")


@dataclass(frozen=True, slots=True)
class RewardConfig:
    """Weights and shape of the set-wise reward."""

    hit_weight: float = 1.0
    """Weight of the rank-aware hit of the true next item."""
    coverage_weight: float = 0.2
    """Weight of the share of the user's interests the list covers."""
    diversity_weight: float = 0.1
    """Weight of the share of distinct SID prefixes in the list."""
    format_weight: float = 0.1
    """Weight of the format reward of the thought."""
    rank_gain: str = "ndcg"
    """"ndcg": 1/log2(rank+2); "rr": 1/(rank+1)."""
    diversity_depth: int = 1
    """Prefix length (levels) whose distinct values count as diverse."""
    interest_source: str = "history"
    """"history": the history's top prefixes; "trace": the thought's `<interest>` prefixes."""
    interest_depth: int = 1
    """Prefix length of the history interests."""
    max_interests: int = 3
    """History interests kept per user (the most frequent prefixes)."""

    def __post_init__(self) -> None:
        for name in ("hit_weight", "coverage_weight", "diversity_weight", "format_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if self.rank_gain not in RANK_GAINS:
            raise ConfigError(f"{self.rank_gain=} must be one of {RANK_GAINS}")
        if self.interest_source not in INTEREST_SOURCES:
            raise ConfigError(f"{self.interest_source=} must be one of {INTEREST_SOURCES}")
        if min(self.diversity_depth, self.interest_depth) < 1:
            raise ConfigError(f"{self.diversity_depth=} and {self.interest_depth=} must be >= 1")
        if not 1 <= self.max_interests <= MAX_INTERESTS:
            raise ConfigError(f"{self.max_interests=} must be in [1, {MAX_INTERESTS}]")


@dataclass(frozen=True, slots=True)
class RewardBreakdown:
    """Per-list rewards (any leading shape, e.g. (R, M) = traces × lists)."""

    total: np.ndarray
    """Weighted sum of the parts (float64)."""
    hit: np.ndarray
    """Rank-aware hit gain in [0, 1]."""
    coverage: np.ndarray
    """Share of interests covered in [0, 1]."""
    diversity: np.ndarray
    """Distinct prefixes / K in [0, 1]."""
    format: np.ndarray
    """Format score of the list's thought in {0, 0.5, 1}."""

    @property
    def is_hit(self) -> np.ndarray:
        """Bool: the list contains the true next item."""
        return self.hit > 0

    def means(self, prefix: str = "reward/") -> dict[str, float]:
        """Mean of every part (for the metrics log)."""
        return {
            f"{prefix}total": float(self.total.mean()),
            f"{prefix}hit": float(self.hit.mean()),
            f"{prefix}hit_rate": float(self.is_hit.mean()),
            f"{prefix}coverage": float(self.coverage.mean()),
            f"{prefix}diversity": float(self.diversity.mean()),
            f"{prefix}format": float(self.format.mean()),
        }


def rank_gain(lists: np.ndarray, targets: np.ndarray, kind: str = "ndcg") -> np.ndarray:
    """(N, K) lists of catalogue indices (-1 = empty slot) and (N,) targets → (N,) gains."""
    if kind not in RANK_GAINS:
        raise ConfigError(f"rank gain {kind!r} must be one of {RANK_GAINS}")
    ranks = hit_ranks(np.asarray(lists, dtype=np.int64), np.asarray(targets, dtype=np.int64))
    r = np.clip(ranks, 0, None).astype(np.float64)
    gain = 1.0 / np.log2(r + 2.0) if kind == "ndcg" else 1.0 / (r + 1.0)
    return np.where(ranks >= 0, gain, 0.0)


def coverage(list_sids: np.ndarray, interests: np.ndarray) -> np.ndarray:
    """Share of each row's interests that some listed item falls under.

    Args:
        list_sids: (N, K, L) SID codes of the listed items; -1 rows are empty slots.
        interests: (N, I, L) padded interest prefixes (see the module docstring).
    Returns:
        (N,) float64 in [0, 1]; 0 for a row without interests.
    """
    list_sids, interests = _check_sids(list_sids, interests)
    present = interests[:, :, 0] >= 0  # (N, I)
    free = interests < 0  # (N, I, L) levels past the prefix match anything
    # (N, I, K, L): does item k agree with interest i on every level of its prefix?
    agree = (list_sids[:, None, :, :] == interests[:, :, None, :]) | free[:, :, None, :]
    valid_item = list_sids[:, :, 0] >= 0  # (N, K)
    covered = (agree.all(axis=3) & valid_item[:, None, :]).any(axis=2) & present  # (N, I)
    count = present.sum(axis=1)
    return np.where(count > 0, covered.sum(axis=1) / np.maximum(count, 1), 0.0)


def diversity(list_sids: np.ndarray, depth: int) -> np.ndarray:
    """(N, K, L) listed SIDs → (N,) distinct `depth`-level prefixes among valid items / K."""
    list_sids = np.asarray(list_sids, dtype=np.int64)
    if list_sids.ndim != 3 or not 1 <= depth <= list_sids.shape[2]:
        raise DataError(f"list_sids {list_sids.shape} needs (N, K, L) with L >= {depth=}")
    n, k, _ = list_sids.shape
    prefix = list_sids[:, :, :depth]
    base = int(prefix.max(initial=0)) + 1
    # Mixed-radix key of each prefix; empty slots get -1 and are not counted.
    key = np.zeros((n, k), dtype=np.int64)
    for level in range(depth):
        key = key * base + prefix[:, :, level]
    valid = list_sids[:, :, 0] >= 0
    key = np.sort(np.where(valid, key, -1), axis=1)
    new = np.ones((n, k), dtype=bool)
    new[:, 1:] = key[:, 1:] != key[:, :-1]
    return (new & (key >= 0)).sum(axis=1) / k


def format_score(parsed: Sequence[ParsedCompletion]) -> np.ndarray:
    """(N,) 1 for a clean thought, 0.5 for a usable one with problems, 0 for none."""
    return np.asarray(
        [
            0.0 if p.cot is None or not p.cot.interests else 0.5 if p.problems else 1.0
            for p in parsed
        ],
        dtype=np.float64,
    )


def history_interests(
    histories: Sequence[np.ndarray], codes: np.ndarray, *, depth: int, top: int
) -> np.ndarray:
    """The `top` most frequent `depth`-level prefixes of each history (recency breaks ties).

    Args:
        histories: per user, (h,) catalogue indices, oldest first.
        codes: (N_items, L) SID codes of the catalogue.
    Returns:
        (U, top, L) padded interests (see the module docstring).
    """
    codes = np.asarray(codes, dtype=np.int64)
    num_levels = codes.shape[1]
    if not 1 <= depth < num_levels + 1:
        raise ConfigError(f"{depth=} must be in [1, {num_levels}]")
    out = np.full((len(histories), top, num_levels), -1, dtype=np.int64)
    for u, hist in enumerate(histories):
        if len(hist) == 0:
            continue
        pre = codes[np.asarray(hist, dtype=np.int64), :depth]  # (h, depth)
        uniq, inverse, counts = np.unique(pre, axis=0, return_inverse=True, return_counts=True)
        last_seen = np.zeros(len(uniq), dtype=np.int64)
        np.maximum.at(last_seen, inverse.reshape(-1), np.arange(len(pre)))
        order = np.lexsort((-last_seen, -counts))[:top]  # count desc, then most recent
        out[u, : len(order), :depth] = uniq[order]
    return out


def trace_interests(parsed: Sequence[ParsedCompletion], num_levels: int) -> np.ndarray:
    """(N, MAX_INTERESTS, L) padded interest prefixes written in each parsed thought."""
    out = np.full((len(parsed), MAX_INTERESTS, num_levels), -1, dtype=np.int64)
    for n, p in enumerate(parsed):
        if p.cot is None:
            continue
        for i, interest in enumerate(p.cot.interests[:MAX_INTERESTS]):
            prefix = interest.sid_prefix[:num_levels]
            out[n, i, : len(prefix)] = prefix
    return out


def score_lists(
    lists: np.ndarray,
    list_sids: np.ndarray,
    targets: np.ndarray,
    interests: np.ndarray,
    formats: np.ndarray,
    config: RewardConfig,
) -> RewardBreakdown:
    """Set-wise rewards of N candidate lists.

    Args:
        lists: (N, K) catalogue indices, best first; -1 = empty slot.
        list_sids: (N, K, L) their SID codes (-1 in empty slots).
        targets: (N,) the true next item of each list's user.
        interests: (N, I, L) padded interests of each list's user (or its trace).
        formats: (N,) format score of each list's thought (`format_score`).
    """
    lists = np.asarray(lists, dtype=np.int64)
    if lists.ndim != 2 or np.asarray(list_sids).shape[:2] != lists.shape:
        raise DataError(f"lists {lists.shape} and list_sids {np.shape(list_sids)} disagree")
    formats = np.asarray(formats, dtype=np.float64)
    if formats.shape != (lists.shape[0],):
        raise DataError(f"formats has shape {formats.shape}, expected ({lists.shape[0]},)")
    hit = rank_gain(lists, targets, config.rank_gain)
    cov = coverage(list_sids, interests)
    div = diversity(list_sids, min(config.diversity_depth, np.shape(list_sids)[2]))
    total = (
        config.hit_weight * hit
        + config.coverage_weight * cov
        + config.diversity_weight * div
        + config.format_weight * formats
    )
    return RewardBreakdown(total, hit, cov, div, formats)


def _check_sids(list_sids: np.ndarray, interests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    list_sids = np.asarray(list_sids, dtype=np.int64)
    interests = np.asarray(interests, dtype=np.int64)
    if list_sids.ndim != 3 or interests.ndim != 3:
        raise DataError(f"list_sids {list_sids.shape} and interests {interests.shape} must be 3-D")
    if interests.shape[0] != list_sids.shape[0] or interests.shape[2] != list_sids.shape[2]:
        raise DataError(
            f"interests {interests.shape} do not match list_sids {list_sids.shape} (N and L)"
        )
    return list_sids, interests
