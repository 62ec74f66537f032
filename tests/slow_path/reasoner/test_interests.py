"""The history-only interest rules: recency-weighted level-0 mass, the coverage / min-share
cut, narrowing to a level-1 child, the transition sentences — and the rule backend's CoT is
exactly what they read."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sid_index.errors import ConfigError
from sid_index.records import Dataset
from sid_index.sid_index import SIDIndex
from slow_path.cot_format import parse_completion
from slow_path.reasoner import ReasonerConfig, ReasonRequest
from slow_path.reasoner.interests import InterestRules, history_transition, last_item_phrase
from slow_path.reasoner.rule_backend import RuleReasoner


def test_mass_cut_narrowing_and_ties() -> None:
    # Oldest first; half-life 1: weights 1/32, 1/16, 1/8, 1/4, 1/2, 1 (total 63/32).
    codes = np.array([[3, 0, 0], [2, 1, 0], [2, 1, 1], [1, 0, 0], [1, 2, 0], [0, 2, 0]])
    rules = InterestRules(half_life=1.0, coverage=1.0, min_share=0.0)
    prefixes, shares = rules.interests(codes)
    # Level 0 mass: 0 → 32, 1 → 24 (16 under child 2, 8 under child 0), 2 → 6, 3 → 1 (/63).
    assert prefixes == [(0,), (1, 2), (2, 1), (3,)]  # a single item is never narrowed
    np.testing.assert_allclose(shares, np.array([32, 24, 6, 1]) / 63)
    # Child 2 of region 1 holds 2/3 of it: narrowed at 0.6, not at 0.7.
    assert InterestRules(half_life=1.0, narrow_share=0.7, coverage=1.0).interests(codes)[0][1] == (
        1,
    )
    # Coverage: 32/63 < 0.8 so region 1 joins, then 56/63 >= 0.8 stops.
    assert InterestRules(half_life=1.0).interests(codes)[0] == [(0,), (1, 2)]
    # min_share: region 1 holds 24/63 < 0.4 — the first interest is always kept.
    assert InterestRules(half_life=1.0, min_share=0.4).interests(codes)[0] == [(0,)]
    assert InterestRules(half_life=1.0, max_interests=1, coverage=1.0).interests(codes)[0] == [(0,)]
    # Equal mass (a half-life so long every weight is 1.0): the most recent region goes first.
    flat = np.array([[4, 0, 0], [5, 0, 0], [4, 1, 0], [5, 1, 0]])
    assert InterestRules(half_life=1e300, narrow_share=1.0).interests(flat)[0] == [(5,), (4,)]


def test_two_level_sids_narrow_only_when_asked() -> None:
    codes = np.array([[1, 3], [1, 3], [0, 0]])
    assert InterestRules(coverage=1.0).interests(codes)[0] == [(1,), (0,)]
    whole = InterestRules(coverage=1.0, narrow_to_full_sid=True).interests(codes)[0]
    assert whole == [(1, 3), (0,)]


@settings(max_examples=200, deadline=None)
@given(
    history=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 3), st.integers(0, 2)), min_size=1, max_size=30
    ),
    coverage=st.floats(0.05, 1.0),
    min_share=st.floats(0.0, 0.5),
    max_interests=st.integers(1, 5),
)
def test_interest_invariants(
    history: list[tuple[int, int, int]], coverage: float, min_share: float, max_interests: int
) -> None:
    codes = np.array(history, dtype=np.int64)
    rules = InterestRules(max_interests=max_interests, coverage=coverage, min_share=min_share)
    prefixes, shares = rules.interests(codes)
    w = rules.weights(len(codes))
    mass = {int(c): float(w[codes[:, 0] == c].sum() / w.sum()) for c in np.unique(codes[:, 0])}
    assert 1 <= len(prefixes) <= max_interests
    assert len({p[0] for p in prefixes}) == len(prefixes)  # one interest per level-0 region
    assert all(1 <= len(p) <= 2 for p in prefixes)
    assert all((codes[:, : len(p)] == p).all(axis=1).any() for p in prefixes)  # held by history
    np.testing.assert_allclose(shares, [mass[p[0]] for p in prefixes])
    assert (np.diff(shares) <= 1e-12).all() and shares[0] == pytest.approx(max(mass.values()))
    rest = [m for c, m in mass.items() if c not in {p[0] for p in prefixes}]
    if rest and len(prefixes) < max_interests:  # stopped by coverage or by min_share
        assert shares.sum() >= coverage - 1e-12 or max(rest) < min_share


def test_transition_sentences() -> None:
    title = last_item_phrase("The Very Long Title Of A Quiet Desk Lamp")
    assert title.startswith("The Very Long") and last_item_phrase("") == "the last item"
    assert history_transition(title, "Lamps", holds_last=True) == (
        f"after {title}, more Lamps is the most likely next step"
    )
    assert "a return to Lamps" in history_transition(title, "Lamps", holds_last=False)


@pytest.mark.parametrize(
    "kw, name",
    [
        ({"max_interests": 6}, "max_interests"),
        ({"coverage": 0.0}, "coverage"),
        ({"narrow_share": 1.5}, "narrow_share"),
        ({"min_share": -0.1}, "min_share"),
        ({"half_life": 0.0}, "half_life"),
    ],
)
def test_config_validation(kw: dict[str, Any], name: str) -> None:
    with pytest.raises(ConfigError, match=name):
        InterestRules(**kw)


def test_rule_backend_writes_these_interests(sp_index: SIDIndex, sp_dataset: Dataset) -> None:
    r = RuleReasoner(ReasonerConfig(), sp_index)
    requests = [ReasonRequest(s.user_id, s.items) for s in list(sp_dataset.interactions)[:40]]
    rules = InterestRules()
    for req, out in zip(requests, r.reason(requests), strict=True):
        parsed = parse_completion(out.text, level_sizes=r.level_sizes, num_personas=r.num_personas)
        assert parsed.cot is not None
        prefixes, shares = rules.interests(np.asarray(sp_index.sids.codes)[req.items])
        assert [i.sid_prefix for i in parsed.cot.interests] == prefixes
        np.testing.assert_allclose(
            [i.weight for i in parsed.cot.interests], shares / shares.sum(), atol=0.006
        )
