"""Blend policies: parsing, the three orders, scores, dedup."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fast_path.blending import BlendPolicy, blend
from fast_path.settings import RecommenderSettings
from sid_index.errors import ConfigError

NONE = BlendPolicy.parse("none")
INTERLEAVE = BlendPolicy.parse("interleave")


def _arr(*xs: float) -> np.ndarray:
    return np.asarray(xs, dtype=np.float64)


def _ids(*xs: int) -> np.ndarray:
    return np.asarray(xs, dtype=np.int64)


@pytest.mark.parametrize(
    ("text", "kind", "alpha"),
    [
        ("none", "none", 0.5),
        (" interleave ", "interleave", 0.5),
        ("score_mix", "score_mix", 0.5),
        ("score_mix(0.7)", "score_mix", 0.7),
        ("score_mix( 1 )", "score_mix", 1.0),
    ],
)
def test_parse(text: str, kind: str, alpha: float) -> None:
    p = BlendPolicy.parse(text)
    assert (p.kind, p.alpha) == (kind, alpha)
    assert BlendPolicy.parse(str(p)) == p


@pytest.mark.parametrize("text", ["mix", "score_mix(1.5)", "score_mix(x)", "score_mix(-0.1)", ""])
def test_parse_rejects_with_the_value(text: str) -> None:
    with pytest.raises(ConfigError, match="blend policy"):
        BlendPolicy.parse(text)


def test_settings_reject_a_bad_policy_naming_it() -> None:
    with pytest.raises(ConfigError, match="blend"):
        RecommenderSettings.load(blend="score_mix(2)")
    assert RecommenderSettings.load(blend="score_mix(0.25)").blend_policy.alpha == 0.25


def test_none_ignores_candidates_and_cuts_to_k() -> None:
    out = blend(NONE, _ids(5, 3, 9), _arr(-1, -2, -3), _ids(7, 8), _arr(0, -1), k=2)
    assert out.items.tolist() == [5, 3]
    assert out.scores.tolist() == [-1, -2]
    assert out.from_fast.all()


def test_interleave_alternates_dedups_and_fills_from_the_longer_list() -> None:
    fast, fast_s = _ids(1, 2, 3, 4), _arr(-1, -2, -3, -4)
    cand, cand_s = _ids(2, 9, 8), _arr(5, 4, 3)  # 2 is also the fast model's second item
    out = blend(INTERLEAVE, fast, fast_s, cand, cand_s, k=10)
    # fast 1, cand 2, fast (2 taken → 3), cand 9, fast 4, cand 8
    assert out.items.tolist() == [1, 2, 3, 9, 4, 8]
    assert out.from_fast.tolist() == [True, False, True, False, True, False]
    assert out.scores.tolist() == [-1, 5, -3, 4, -4, 3]
    short = blend(INTERLEAVE, fast, fast_s, _ids(9), _arr(1), k=4)
    assert short.items.tolist() == [1, 9, 2, 3]
    assert blend(INTERLEAVE, fast, fast_s, cand, cand_s, k=3).items.tolist() == [1, 2, 3]


def test_interleave_without_candidates_equals_none() -> None:
    fast, fast_s = _ids(4, 2, 7), _arr(-0.5, -1, -2)
    a = blend(INTERLEAVE, fast, fast_s, _ids(), _arr(), k=3)
    b = blend(NONE, fast, fast_s, _ids(), _arr(), k=3)
    assert a.items.tolist() == b.items.tolist() and a.scores.tolist() == b.scores.tolist()


def test_score_mix_is_the_weighted_sum_of_both_softmaxes() -> None:
    fast, fast_s = _ids(1, 2, 3), _arr(-1.0, -2.0, -4.0)
    cand, cand_s = _ids(3, 4), _arr(2.0, 1.0)
    alpha = 0.3
    out = blend(BlendPolicy("score_mix", alpha), fast, fast_s, cand, cand_s, k=10)
    p_fast = np.exp(fast_s) / np.exp(fast_s).sum()
    p_cand = np.exp(cand_s) / np.exp(cand_s).sum()
    expect = {
        1: alpha * p_fast[0],
        2: alpha * p_fast[1],
        3: alpha * p_fast[2] + (1 - alpha) * p_cand[0],
        4: (1 - alpha) * p_cand[1],
    }
    order = sorted(expect, key=lambda i: -expect[i])
    assert out.items.tolist() == order
    np.testing.assert_allclose(out.scores, [expect[i] for i in order])
    assert out.from_fast.tolist() == [i != 4 for i in order]
    assert np.isclose(out.scores.sum(), 1.0)  # a blend of two distributions


def test_score_mix_extremes() -> None:
    fast, fast_s = _ids(1, 2, 3), _arr(-1.0, -2.0, -4.0)
    cand, cand_s = _ids(9, 3, 8), _arr(3.0, 2.0, 1.0)
    only_fast = blend(BlendPolicy("score_mix", 1.0), fast, fast_s, cand, cand_s, k=3)
    assert only_fast.items.tolist() == [1, 2, 3]
    only_cand = blend(BlendPolicy("score_mix", 0.0), fast, fast_s, cand, cand_s, k=3)
    assert only_cand.items.tolist() == [9, 3, 8]
    assert only_cand.from_fast.tolist() == [False, True, False]  # 3 was decoded too
    no_cand = blend(BlendPolicy("score_mix", 0.2), fast, fast_s, _ids(), _arr(), k=3)
    assert no_cand.items.tolist() == [1, 2, 3]
    np.testing.assert_allclose(no_cand.scores.sum(), 1.0)


@settings(max_examples=60, deadline=None)
@given(
    fast=st.lists(st.integers(0, 30), max_size=12, unique=True),
    cand=st.lists(st.integers(0, 30), max_size=12, unique=True),
    k=st.integers(1, 20),
    policy=st.sampled_from(["none", "interleave", "score_mix(0.6)"]),
    data=st.data(),
)
def test_never_repeats_never_invents_and_respects_k(
    fast: list[int], cand: list[int], k: int, policy: str, data: st.DataObject
) -> None:
    fast_s = np.sort(
        data.draw(st.lists(st.floats(-30, 0), min_size=len(fast), max_size=len(fast)))
    )[::-1]
    cand_s = data.draw(st.lists(st.floats(-5, 5), min_size=len(cand), max_size=len(cand)))
    p = BlendPolicy.parse(policy)
    out = blend(p, _ids(*fast), np.asarray(fast_s), _ids(*cand), _arr(*cand_s), k)
    items = out.items.tolist()
    assert len(items) == len(set(items))
    assert set(items) <= set(fast) | set(cand)
    expected_len = min(k, len(fast) if p.kind == "none" else len(set(fast) | set(cand)))
    assert len(items) == expected_len
    for item, from_fast in zip(items, out.from_fast.tolist(), strict=True):
        assert item in (fast if from_fast else cand)
    if p.kind == "score_mix":
        assert (np.diff(out.scores) <= 1e-12).all()
