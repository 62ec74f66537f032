"""Set-wise reward parts on hand-made lists (exact values)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sid_index.errors import ConfigError, DataError
from slow_path.cot_format import CoT, CoTInterest, ParsedCompletion
from trainer.rl.rewards import (
    RewardConfig,
    coverage,
    diversity,
    format_score,
    history_interests,
    rank_gain,
    score_lists,
    trace_interests,
)

# Four items with 3-level SIDs; items 0 and 1 share the level-0 code 5 and the prefix (5, 1).
CODES = np.array([[5, 1, 0], [5, 1, 1], [5, 2, 0], [7, 0, 0], [2, 3, 3]])


def test_rank_gain_ndcg_and_reciprocal_rank() -> None:
    lists = np.array([[3, 1, 2], [1, 3, 2], [1, 2, 3], [0, 1, -1], [-1, -1, -1]])
    targets = np.array([3, 3, 3, 4, 0])
    ndcg = rank_gain(lists, targets, "ndcg")
    np.testing.assert_allclose(ndcg, [1.0, 1 / math.log2(3), 0.5, 0.0, 0.0])
    rr = rank_gain(lists, targets, "rr")
    np.testing.assert_allclose(rr, [1.0, 0.5, 1 / 3, 0.0, 0.0])
    with pytest.raises(ConfigError, match="rank gain"):
        rank_gain(lists, targets, "dcg")


def test_coverage_counts_interests_with_a_listed_item_under_them() -> None:
    sids = CODES[[[0, 3], [4, 4]]]  # (2 lists, 2 items, 3 levels)
    interests = np.full((2, 3, 3), -1)
    interests[0, 0, :1] = [5]  # covered by item 0
    interests[0, 1, :2] = [5, 2]  # not covered (item 0 is (5, 1, ...))
    interests[0, 2, :1] = [7]  # covered by item 3
    interests[1, 0, :2] = [2, 3]  # covered by item 4
    np.testing.assert_allclose(coverage(sids, interests), [2 / 3, 1.0])


def test_coverage_ignores_empty_slots_and_rows_without_interests() -> None:
    sids = np.full((2, 2, 3), -1)
    sids[0, 0] = CODES[2]
    interests = np.full((2, 1, 3), -1)
    interests[0, 0, :1] = [5]
    # Row 1 has no interests at all: 0 rather than NaN.
    np.testing.assert_allclose(coverage(sids, interests), [1.0, 0.0])
    with pytest.raises(DataError):
        coverage(sids, interests[:1])


def test_diversity_is_distinct_prefixes_over_k() -> None:
    sids = np.stack([CODES[[0, 1, 2, 3]], CODES[[0, 0, 0, 0]]])
    sids[1, 3] = -1  # an empty slot counts as nothing
    np.testing.assert_allclose(diversity(sids, 1), [2 / 4, 1 / 4])
    np.testing.assert_allclose(diversity(sids, 2), [3 / 4, 1 / 4])
    np.testing.assert_allclose(diversity(sids, 3), [4 / 4, 1 / 4])


def _parsed(interests: int, problems: tuple[str, ...] = ()) -> ParsedCompletion:
    cot = CoT(1, "p", tuple(CoTInterest((5, 1), 0.5, "x") for _ in range(interests)), None, "t")
    return ParsedCompletion(cot, (5, 1, 0), problems)


def test_format_score() -> None:
    parsed = [
        _parsed(2),
        _parsed(1, ("missing </think>",)),
        ParsedCompletion(None, None, ("garbled",)),
        _parsed(0),  # a persona but no interest is not a usable thought
    ]
    np.testing.assert_allclose(format_score(parsed), [1.0, 0.5, 0.0, 0.0])


def test_history_interests_most_frequent_then_most_recent() -> None:
    histories = [np.array([3, 0, 4, 1, 3]), np.array([4, 2]), np.array([], dtype=np.int64)]
    got = history_interests(histories, CODES, depth=1, top=2)
    # user 0: level-0 codes 7, 5, 2, 5, 7 -> 5 and 7 twice each; 7 was seen last.
    assert got[0].tolist() == [[7, -1, -1], [5, -1, -1]]
    # user 1: 2 and 5 once each; 5 (item 2) is the more recent.
    assert got[1].tolist() == [[5, -1, -1], [2, -1, -1]]
    assert (got[2] == -1).all()
    two = history_interests(histories[:1], CODES, depth=2, top=1)
    assert two[0].tolist() == [[7, 0, -1]]


def test_trace_interests_pads_prefixes() -> None:
    got = trace_interests([_parsed(2), ParsedCompletion(None, None, ())], 3)
    assert got.shape == (2, 5, 3)
    assert got[0, :2].tolist() == [[5, 1, -1], [5, 1, -1]]
    assert (got[0, 2:] == -1).all() and (got[1] == -1).all()


def test_score_lists_weights_the_parts() -> None:
    cfg = RewardConfig(
        hit_weight=1.0, coverage_weight=0.5, diversity_weight=0.25, format_weight=0.1
    )
    lists = np.array([[1, 3], [2, 0]])
    interests = np.full((2, 1, 3), -1)
    interests[:, 0, 0] = 7
    r = score_lists(lists, CODES[lists], np.array([3, 4]), interests, np.array([1.0, 0.5]), cfg)
    gain = 1 / math.log2(3)
    np.testing.assert_allclose(r.hit, [gain, 0.0])
    np.testing.assert_allclose(r.coverage, [1.0, 0.0])
    np.testing.assert_allclose(r.diversity, [1.0, 0.5])
    np.testing.assert_allclose(r.total, [gain + 0.5 + 0.25 + 0.1, 0.125 + 0.05])
    assert r.is_hit.tolist() == [True, False]
    assert r.means()["reward/hit_rate"] == 0.5


@pytest.mark.parametrize(
    "kwargs",
    [{"hit_weight": -1.0}, {"rank_gain": "x"}, {"interest_source": "oracle"},
     {"diversity_depth": 0}, {"max_interests": 6}],
)  # fmt: skip
def test_reward_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        RewardConfig(**kwargs)  # type: ignore[arg-type]
