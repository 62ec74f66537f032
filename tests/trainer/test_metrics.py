"""Exactness of Recall@k / NDCG@k on hand-made top-K lists."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sid_index.errors import ConfigError, DataError
from trainer.metrics import (
    RankingMetrics,
    hit_ranks,
    metrics_from_ranks,
    paired_difference,
    per_user_gain,
    ranking_metrics,
)


def test_hand_made_values_are_exact() -> None:
    topk = np.array([[3, 1, 2], [0, 5, 6], [7, 8, 9], [4, -1, -1]], dtype=np.int64)
    targets = np.array([1, 6, 0, 4], dtype=np.int64)
    m = ranking_metrics(topk, targets, ks=(1, 3))
    assert m.num_users == 4
    assert m.recall == {1: 0.25, 3: 0.75}
    assert m.ndcg[1] == pytest.approx(0.25, abs=1e-12)
    expected = (1 / math.log2(3) + 1 / math.log2(4) + 0.0 + 1.0) / 4
    assert m.ndcg[3] == pytest.approx(expected, abs=1e-12)
    assert m.to_dict() == {
        "recall@1": 0.25,
        "ndcg@1": m.ndcg[1],
        "recall@3": 0.75,
        "ndcg@3": m.ndcg[3],
        "num_users": 4,
    }
    assert RankingMetrics.from_dict(m.to_dict()) == m
    with pytest.raises(DataError, match="bad ranking-metrics"):
        RankingMetrics.from_dict({"recall@5": 0.1})


def test_hit_ranks_first_occurrence_and_empty_slots() -> None:
    topk = np.array([[2, 2, 5], [-1, -1, -1], [9, 4, 4]], dtype=np.int64)
    targets = np.array([2, 0, 4], dtype=np.int64)
    assert hit_ranks(topk, targets).tolist() == [0, -1, 1]


def test_empty_slots_never_count_as_hits() -> None:
    # An all-empty list is a miss for every target, including item 0.
    topk = np.full((3, 10), -1, dtype=np.int64)
    m = ranking_metrics(topk, np.array([0, 1, 2]), ks=(5, 10))
    assert m.recall == {5: 0.0, 10: 0.0}
    assert m.ndcg == {5: 0.0, 10: 0.0}


def test_rank_boundary_between_cutoffs() -> None:
    # Target at 0-based rank 5 is in the top 10 but not the top 5.
    row = np.arange(10, dtype=np.int64)
    m = ranking_metrics(row[None, :], np.array([5]), ks=(5, 10))
    assert m.recall == {5: 0.0, 10: 1.0}
    assert m.ndcg[5] == 0.0
    assert m.ndcg[10] == pytest.approx(1 / math.log2(7), abs=1e-12)


def test_ks_larger_than_k_is_config_error() -> None:
    with pytest.raises(ConfigError, match="exceeds the top-K width 5"):
        ranking_metrics(np.zeros((2, 5), dtype=np.int64), np.array([0, 1]), ks=(5, 10))
    with pytest.raises(ConfigError, match="ks="):
        ranking_metrics(np.zeros((2, 5), dtype=np.int64), np.array([0, 1]), ks=(0,))
    with pytest.raises(ConfigError):
        metrics_from_ranks(np.array([0, 1]), ks=(20,), max_k=10)


def test_bad_shapes_are_data_errors() -> None:
    with pytest.raises(DataError, match="targets has shape"):
        ranking_metrics(np.zeros((2, 10), dtype=np.int64), np.array([0, 1, 2]))
    with pytest.raises(DataError, match=">= 0"):
        ranking_metrics(np.zeros((1, 10), dtype=np.int64), np.array([-1]))
    with pytest.raises(DataError, match="zero users"):
        ranking_metrics(np.zeros((0, 10), dtype=np.int64), np.zeros(0, dtype=np.int64))
    with pytest.raises(DataError, match="integer"):
        ranking_metrics(np.zeros((1, 10)), np.array([0]))


def test_vectorized_matches_reference_loop() -> None:
    rng = np.random.default_rng(0)
    topk = rng.integers(-1, 30, size=(200, 10))
    targets = rng.integers(0, 30, size=200)
    m = ranking_metrics(topk, targets, ks=(5, 10))
    for k in (5, 10):
        rec, ndcg = 0.0, 0.0
        for row, t in zip(topk, targets, strict=True):
            pos = [i for i, x in enumerate(row[:k]) if x == t]
            if pos:
                rec += 1
                ndcg += 1 / math.log2(pos[0] + 2)
        assert m.recall[k] == pytest.approx(rec / 200, abs=1e-12)
        assert m.ndcg[k] == pytest.approx(ndcg / 200, abs=1e-12)


def test_paired_difference_on_hand_made_ranks() -> None:
    a = metrics_from_ranks(np.array([0, 1, -1, 12, 3]), (5, 10), max_k=20)
    b = metrics_from_ranks(np.array([0, -1, -1, 2, 9]), (5, 10), max_k=20)
    np.testing.assert_array_equal(per_user_gain(a.ranks, 10, "recall"), [1, 1, 0, 0, 1])
    diff, se = paired_difference(a, b, 10, "recall")
    d = np.array([0.0, 1.0, 0.0, -1.0, 0.0])  # per-user a - b at Recall@10
    assert diff == pytest.approx(a.recall[10] - b.recall[10]) == pytest.approx(d.mean())
    assert se == pytest.approx(d.std(ddof=1) / math.sqrt(5))
    diff, _ = paired_difference(a, b, 5, "ndcg")
    assert diff == pytest.approx(a.ndcg[5] - b.ndcg[5])
    # Identical models: no difference and no error.
    assert paired_difference(a, a, 10) == (0.0, 0.0)


def test_paired_difference_needs_the_same_users() -> None:
    a = metrics_from_ranks(np.array([0, 1]), (5,))
    with pytest.raises(DataError, match="different users"):
        paired_difference(a, metrics_from_ranks(np.array([0, 1, 2]), (5,)), 5)
    with pytest.raises(DataError, match="per-user ranks"):
        paired_difference(a, RankingMetrics({5: 0.5}, {5: 0.5}, 2), 5)
    with pytest.raises(ConfigError, match="metric"):
        per_user_gain(np.array([0]), 5, "mrr")
