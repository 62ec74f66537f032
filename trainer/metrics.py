"""Top-K ranking metrics for leave-one-out evaluation (one relevant item per user).

Every recommender in the project (most-popular, SASRec, the fast SID decoder, the reasoner)
produces a (U, K) matrix of catalogue indices, best first, ranked over the FULL catalogue;
this module turns it into Recall@k and NDCG@k. With a single relevant item, Recall@k is the
hit rate and NDCG@k = 1 / log2(rank + 2) for a 0-based hit rank < k (the ideal DCG is 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from sid_index.errors import ConfigError, DataError

KS = (5, 10)
"""The cut-offs every report uses (Recall/NDCG@5 and @10)."""

EMPTY_SLOT = -1
"""Marks an unfilled position in a top-K row (e.g. a decoder that found fewer than K items)."""


@dataclass(frozen=True, slots=True)
class RankingMetrics:
    """Recall@k and NDCG@k averaged over users."""

    recall: dict[int, float]
    """k → mean Recall@k (the fraction of users whose target is in their top k)."""
    ndcg: dict[int, float]
    """k → mean NDCG@k."""
    num_users: int
    """How many users were averaged."""
    ranks: np.ndarray | None = field(default=None, compare=False, repr=False)
    """(U,) the per-user 0-based hit ranks behind the means (-1 = miss), when known: what a
    paired comparison of two models on the same users needs (`paired_difference`)."""

    def to_dict(self) -> dict[str, float | int]:
        """Flat `{"recall@5": ..., "ndcg@5": ..., ..., "num_users": U}`, ks ascending."""
        out: dict[str, float | int] = {}
        for k in sorted(self.recall):
            out[f"recall@{k}"] = self.recall[k]
            out[f"ndcg@{k}"] = self.ndcg[k]
        out["num_users"] = self.num_users
        return out

    @classmethod
    def from_dict(cls, row: dict[str, float | int]) -> RankingMetrics:
        """Inverse of `to_dict` (raises DataError on a malformed row)."""
        try:
            ks = sorted(int(key.split("@")[1]) for key in row if key.startswith("recall@"))
            return cls(
                recall={k: float(row[f"recall@{k}"]) for k in ks},
                ndcg={k: float(row[f"ndcg@{k}"]) for k in ks},
                num_users=int(row["num_users"]),
            )
        except (KeyError, ValueError, IndexError) as exc:
            raise DataError(f"bad ranking-metrics record {row!r} ({exc})") from None

    def __str__(self) -> str:
        parts = [
            f"R@{k}={self.recall[k]:.4f} N@{k}={self.ndcg[k]:.4f}" for k in sorted(self.recall)
        ]
        return " ".join(parts) + f" (users={self.num_users})"


def hit_ranks(topk: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """0-based rank of each user's target in their top-K row, -1 where it is absent.

    Args:
        topk: (U, K) int catalogue indices, best first; EMPTY_SLOT (-1) for unfilled slots.
        targets: (U,) int catalogue indices (must be >= 0).
    Returns:
        (U,) int64 ranks; a target listed twice counts at its first (best) position.
    """
    topk = np.asarray(topk)
    targets = np.asarray(targets)
    if topk.ndim != 2:
        raise DataError(f"topk must be a (U, K) matrix, got shape {topk.shape}")
    if targets.shape != (topk.shape[0],):
        raise DataError(f"targets has shape {targets.shape}, expected ({topk.shape[0]},)")
    if not (np.issubdtype(topk.dtype, np.integer) and np.issubdtype(targets.dtype, np.integer)):
        raise DataError(f"topk ({topk.dtype}) and targets ({targets.dtype}) must be integer")
    if targets.size and int(targets.min()) < 0:
        raise DataError(f"targets must be catalogue indices >= 0, found {int(targets.min())}")
    # Targets are >= 0, so an EMPTY_SLOT never matches: no separate masking needed.
    hits = topk == targets[:, None]  # (U, K)
    any_hit = hits.any(axis=1)
    return np.where(any_hit, hits.argmax(axis=1), -1).astype(np.int64)


def metrics_from_ranks(
    ranks: np.ndarray, ks: Sequence[int] = (5, 10), *, max_k: int | None = None
) -> RankingMetrics:
    """Recall@k / NDCG@k from per-user 0-based hit ranks (-1 = miss).

    Args:
        ranks: (U,) int hit ranks from `hit_ranks`.
        ks: cut-offs to report.
        max_k: the K the ranks were computed over; a cut-off above it is a ConfigError,
            because a top-K list cannot tell a miss from a hit at rank >= K.
    """
    ks = _check_ks(ks, max_k)
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.ndim != 1:
        raise DataError(f"ranks must be (U,), got shape {ranks.shape}")
    num_users = int(ranks.shape[0])
    if num_users == 0:
        raise DataError("cannot compute ranking metrics over zero users")
    recall = {k: float(per_user_gain(ranks, k, "recall").mean()) for k in ks}
    ndcg = {k: float(per_user_gain(ranks, k, "ndcg").mean()) for k in ks}
    return RankingMetrics(recall=recall, ndcg=ndcg, num_users=num_users, ranks=ranks)


def per_user_gain(ranks: np.ndarray, k: int, metric: str) -> np.ndarray:
    """(U,) each user's Recall@k ("recall": 0/1) or NDCG@k ("ndcg") from hit ranks."""
    ranks = np.asarray(ranks, dtype=np.int64)
    within = (ranks >= 0) & (ranks < k)
    if metric == "recall":
        return within.astype(np.float64)
    if metric == "ndcg":  # 1/log2(rank+2) within k; the clip keeps log2 finite for misses
        return np.where(within, 1.0 / np.log2(np.clip(ranks, 0, None) + 2.0), 0.0)
    raise ConfigError(f"{metric=} must be 'recall' or 'ndcg'")


def paired_difference(
    a: RankingMetrics, b: RankingMetrics, k: int, metric: str = "recall"
) -> tuple[float, float]:
    """Mean and standard error of `a - b` in Recall@k / NDCG@k over the same users.

    Pairing removes the between-user variance both models share, so the error is far smaller
    than that of two independent means: the right yardstick for "does the trace help" when
    one model is evaluated with and without it on the same users. Both need `ranks` of the
    same length, in the same user order.
    """
    if a.ranks is None or b.ranks is None:
        raise DataError("paired_difference needs per-user ranks on both sides")
    if a.ranks.shape != b.ranks.shape:
        raise DataError(f"different users: {a.ranks.shape} vs {b.ranks.shape}")
    diff = per_user_gain(a.ranks, k, metric) - per_user_gain(b.ranks, k, metric)
    n = len(diff)
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return float(diff.mean()), se


def ranking_metrics(
    topk: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (5, 10)
) -> RankingMetrics:
    """Recall@k and NDCG@k of top-K lists against one target per user.

    Args:
        topk: (U, K) int64 catalogue indices ranked over the full catalogue, best first;
            -1 marks an empty slot.
        targets: (U,) int64 the held-out item of each user.
        ks: cut-offs; each must be <= K (ConfigError otherwise).
    """
    topk = np.asarray(topk)
    if topk.ndim != 2:
        raise DataError(f"topk must be a (U, K) matrix, got shape {topk.shape}")
    _check_ks(ks, topk.shape[1])
    return metrics_from_ranks(hit_ranks(topk, targets), ks, max_k=topk.shape[1])


def _check_ks(ks: Sequence[int], max_k: int | None) -> tuple[int, ...]:
    out = tuple(int(k) for k in ks)
    if not out:
        raise ConfigError(f"{ks=} must name at least one cut-off")
    if min(out) < 1:
        raise ConfigError(f"{ks=}: every cut-off must be >= 1")
    if max_k is not None and max(out) > max_k:
        raise ConfigError(f"{ks=}: cut-off {max(out)} exceeds the top-K width {max_k}")
    return out
