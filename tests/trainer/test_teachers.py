"""Trace teachers: dominant SID prefixes and the persona oracle."""

from __future__ import annotations

import numpy as np
import pytest

from sid_index.errors import ConfigError
from trainer.teachers import DominantPrefixTeacher, PersonaOracleTeacher

CODES = np.array([[0, 1, 0], [0, 2, 0], [1, 0, 0], [1, 1, 0], [2, 0, 0], [2, 0, 1]], dtype=np.int32)


def test_dominant_prefixes_are_recency_weighted_counts() -> None:
    t = DominantPrefixTeacher(CODES, prefix_len=1, max_interests=2, half_life=1.0)
    # prefix 0 twice long ago, prefix 2 once most recently: recency wins with half_life=1
    hist = np.array([0, 1, 2, 4])
    assert t.interests(hist) == ((2,), (1,))
    t_slow = DominantPrefixTeacher(CODES, prefix_len=1, max_interests=3, half_life=1e9)
    assert t_slow.interests(hist) == ((0,), (2,), (1,))  # equal counts: most recent first
    t2 = DominantPrefixTeacher(CODES, prefix_len=2, max_interests=1)
    assert t2.interests(np.array([4, 5, 0])) == ((2, 0),)
    assert t.trace(0, np.array([], dtype=np.int64)) is None
    trace = t.trace(0, hist)
    assert trace is not None and trace.persona_id is None


def test_persona_oracle_uses_planted_persona() -> None:
    base = DominantPrefixTeacher(CODES)
    t = PersonaOracleTeacher(np.array([7, 3]), base)
    tr = t.trace(1, np.array([2, 3]))
    assert tr is not None and tr.persona_id == 3 and tr.interests == ((1,),)


@pytest.mark.parametrize("kw", [{"prefix_len": 0}, {"prefix_len": 3}, {"max_interests": 6}])
def test_bad_config_is_rejected(kw: dict[str, int]) -> None:
    with pytest.raises(ConfigError):
        DominantPrefixTeacher(CODES, **kw)
