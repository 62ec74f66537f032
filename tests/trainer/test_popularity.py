"""Most-popular baseline: counts, ranking, and optional exclusion of seen items."""

from __future__ import annotations

import numpy as np
import pytest

from sid_index.datasets.splits import LeaveOneOutSplit
from sid_index.errors import ConfigError, DataError
from sid_index.records import Interactions
from trainer.baselines.popularity import (
    evaluate_popularity,
    item_popularity,
    popularity_order,
    popularity_topk,
)
from trainer.metrics import ranking_metrics


def test_counts_and_order_with_ties() -> None:
    items = np.array([3, 1, 3, 0, 3, 1, 4, 4], dtype=np.int64)
    counts = item_popularity(items, num_items=6)
    assert counts.tolist() == [1, 2, 0, 3, 2, 0]
    # Ties (items 1 and 4; items 2 and 5) go to the lower index.
    assert popularity_order(counts).tolist() == [3, 1, 4, 0, 2, 5]


def test_topk_without_exclusion_is_the_same_list_for_everyone() -> None:
    counts = np.array([1, 2, 0, 3, 2, 0])
    top = popularity_topk(counts, 3, num_users=2)
    assert top.tolist() == [[3, 1, 4], [3, 1, 4]]
    assert top.dtype == np.int64
    m = ranking_metrics(top, np.array([1, 0]), ks=(1, 3))
    assert m.recall == {1: 0.0, 3: 0.5}


def test_topk_excluding_seen_items() -> None:
    counts = np.array([1, 2, 0, 3, 2, 0])
    # user 0 saw items 3 and 4; user 1 saw nothing; user 2 saw 3, 1, 4, 0 and 2.
    indptr = np.array([0, 2, 2, 7])
    hist = np.array([3, 4, 3, 1, 4, 0, 2])
    top = popularity_topk(
        counts, 3, 3, exclude_seen=True, history_indptr=indptr, history_items=hist
    )
    assert top.tolist() == [[1, 0, 2], [3, 1, 4], [5, -1, -1]]


def test_exclusion_matches_reference_loop() -> None:
    rng = np.random.default_rng(1)
    n, users = 40, 50
    counts = rng.integers(0, 20, n)
    lengths = rng.integers(0, 15, users)
    indptr = np.concatenate([[0], np.cumsum(lengths)])
    hist = rng.integers(0, n, int(indptr[-1]))
    top = popularity_topk(
        counts, 10, users, exclude_seen=True, history_indptr=indptr, history_items=hist
    )
    order = popularity_order(counts).tolist()
    for u in range(users):
        seen = set(hist[indptr[u] : indptr[u + 1]].tolist())
        assert top[u].tolist() == [i for i in order if i not in seen][:10]


def test_bad_input() -> None:
    with pytest.raises(DataError, match="outside"):
        item_popularity(np.array([0, 7]), num_items=5)
    with pytest.raises(ConfigError, match="k="):
        popularity_topk(np.ones(4), 5, 1)
    with pytest.raises(ConfigError, match="needs history"):
        popularity_topk(np.ones(4), 2, 1, exclude_seen=True)
    with pytest.raises(DataError, match="does not match"):
        popularity_topk(
            np.ones(4), 2, 2, exclude_seen=True,
            history_indptr=np.array([0, 1]), history_items=np.array([0]),
        )  # fmt: skip


def test_evaluate_popularity_on_a_split() -> None:
    # Items 0 and 1 dominate the train parts; every user's held-out items are 0 then 2.
    seqs = [[1, 0, 1, 0, 2], [0, 1, 1, 0, 2], [1, 1, 0, 0, 2]]
    interactions = Interactions(
        user_ids=["a", "b", "c"],
        indptr=np.array([0, 5, 10, 15]),
        items=np.concatenate([np.array(s) for s in seqs]).astype(np.int64),
    )
    split = LeaveOneOutSplit.from_interactions(interactions)
    valid, test = evaluate_popularity(split, num_items=4, ks=(1, 3))
    # Train counts: item 1 → 6, item 0 → 3, items 2 and 3 → 0: the list is [1, 0, 2].
    assert valid.recall == {1: 0.0, 3: 1.0}  # valid target 0 sits at rank 1
    assert test.recall == {1: 0.0, 3: 1.0}  # test target 2 sits at rank 2
    # Excluding seen items: valid histories hold 1 and 0 → [2, 3, -1]; target 0 is a miss.
    valid_x, test_x = evaluate_popularity(split, num_items=4, ks=(1, 3), exclude_seen=True)
    assert valid_x.recall == {1: 0.0, 3: 0.0}
    assert test_x.recall == {1: 1.0, 3: 1.0}
