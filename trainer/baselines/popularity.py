"""Most-popular baseline: recommend the items with the most training interactions.

Protocol choice, stated explicitly: by default the history is NOT excluded
(`exclude_seen=False`). That is the standard for leave-one-out on the Amazon 5-core sets
(TIGER, P5, LC-Rec and the published SASRec numbers all rank every catalogue item, and a
user's held-out item can repeat an earlier one). `exclude_seen=True` drops each user's own
history from their list, for comparison only; reports must say which one they used.
"""

from __future__ import annotations

import numpy as np

from sid_index.datasets.splits import LeaveOneOutSplit
from sid_index.errors import ConfigError, DataError
from trainer.metrics import RankingMetrics, ranking_metrics


def item_popularity(items: np.ndarray, num_items: int) -> np.ndarray:
    """Interaction count of every catalogue item.

    Args:
        items: (nnz,) int catalogue indices of the TRAINING interactions only (never the
            valid/test targets, or the baseline peeks at the answers).
        num_items: catalogue size N.
    Returns:
        (N,) int64 counts.
    """
    items = np.asarray(items)
    if num_items < 1:
        raise ConfigError(f"{num_items=} must be >= 1")
    if items.size and (int(items.min()) < 0 or int(items.max()) >= num_items):
        raise DataError(
            f"training interactions reference items outside [0, {num_items}): "
            f"min={int(items.min())} max={int(items.max())}"
        )
    return np.bincount(items.astype(np.int64), minlength=num_items).astype(np.int64)


def popularity_order(counts: np.ndarray) -> np.ndarray:
    """(N,) item indices, most popular first; ties go to the lower index (deterministic)."""
    return np.argsort(-np.asarray(counts, dtype=np.int64), kind="stable")


def popularity_topk(
    counts: np.ndarray,
    k: int,
    num_users: int,
    *,
    exclude_seen: bool = False,
    history_indptr: np.ndarray | None = None,
    history_items: np.ndarray | None = None,
) -> np.ndarray:
    """Top-k most popular items for each of `num_users` users.

    Args:
        counts: (N,) item popularity from `item_popularity`.
        k: list length (<= N).
        num_users: U, the number of rows to return.
        exclude_seen: drop each user's history items from their list (needs the history).
        history_indptr: (U + 1,) CSR offsets of the users' histories (only with exclude_seen).
        history_items: (nnz,) catalogue indices of the histories (only with exclude_seen).
    Returns:
        (U, k) int64 catalogue indices, best first; -1 pads a row only when a user has seen
        so much of the catalogue that fewer than k unseen items remain.
    """
    counts = np.asarray(counts)
    n = counts.shape[0]
    if not 1 <= k <= n:
        raise ConfigError(f"{k=} must be in [1, {n}] (the catalogue size)")
    if num_users < 0:
        raise ConfigError(f"{num_users=} must be >= 0")
    order = popularity_order(counts)
    if not exclude_seen:
        return np.broadcast_to(order[:k], (num_users, k)).copy()
    if history_indptr is None or history_items is None:
        raise ConfigError("exclude_seen=True needs history_indptr and history_items")
    indptr = np.asarray(history_indptr, dtype=np.int64)
    hist = np.asarray(history_items, dtype=np.int64)
    if indptr.shape != (num_users + 1,) or int(indptr[-1]) != len(hist):
        raise DataError(
            f"history CSR does not match {num_users} users: indptr shape {indptr.shape}, "
            f"indptr[-1]={int(indptr[-1]) if indptr.size else None}, {len(hist)} items"
        )
    # Only the first k + (longest history) popular items can ever reach a list, so mark
    # seen items inside that candidate window and keep the first k unmarked per row.
    width = min(n, k + int(np.diff(indptr).max(initial=0)))
    rank_of = np.empty(n, dtype=np.int64)
    rank_of[order] = np.arange(n)
    user = np.repeat(np.arange(num_users), np.diff(indptr))  # (nnz,)
    rank = rank_of[hist]
    inside = rank < width
    seen = np.zeros((num_users, width), dtype=bool)
    seen[user[inside], rank[inside]] = True
    # Stable argsort of the seen flags puts unseen columns first, in popularity order.
    cols = np.argsort(seen, axis=1, kind="stable")[:, :k]  # (U, k)
    out = order[cols]
    out[np.take_along_axis(seen, cols, axis=1)] = -1
    return out


def evaluate_popularity(
    split: LeaveOneOutSplit,
    num_items: int,
    *,
    ks: tuple[int, ...] = (5, 10),
    exclude_seen: bool = False,
) -> tuple[RankingMetrics, RankingMetrics]:
    """Most-popular on a leave-one-out split: (valid, test) metrics over the full catalogue.

    Counts come from the train parts only, for both stages. With `exclude_seen`, the valid
    history is the train part and the test history is train part + valid target.
    """
    counts = item_popularity(split.train_items, num_items)
    k = max(ks)
    out = []
    for samples in (split.valid_inputs(), split.test_inputs()):
        top = popularity_topk(
            counts,
            k,
            len(samples),
            exclude_seen=exclude_seen,
            history_indptr=samples.indptr,
            history_items=samples.items,
        )
        out.append(ranking_metrics(top, samples.targets, ks))
    return out[0], out[1]
