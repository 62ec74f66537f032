"""Persona summaries (the beauty_personas check) on tiny generated summaries: loading,
keywords, held-out agreement, the summary as persona description, co-occurrence groups."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sid_index.errors import DataError
from slow_path.cot_format import CoT, CoTInterest
from trainer.cot.persona_summaries import (
    cooccurrence_groups,
    keyword_agreement,
    keyword_names,
    load_persona_summaries,
    summary_keywords,
    with_summary,
)

THEMES = [
    "nail polish manicure glitter",
    "shampoo scalp conditioner frizz",
    "serum retinol wrinkles hydration",
    "lipstick palette eyeliner mascara",
]
FILLER = ("the", "user", "values", "quality", "products", "with", "care", "and", "enjoys")


def _summaries(n: int, seed: int = 0) -> tuple[dict[str, str], dict[str, int]]:
    """Users with a planted theme; each summary uses some of its theme's words plus filler."""
    rng = np.random.default_rng(seed)
    summaries, persona = {}, {}
    for u in range(n):
        p = int(rng.integers(len(THEMES)))
        words = rng.choice(THEMES[p].split(), size=2, replace=False).tolist()
        words += rng.choice(FILLER, size=6).tolist()
        words += rng.choice(" ".join(THEMES).split(), size=1).tolist()  # a stray theme word
        summaries[str(u)] = " ".join(rng.permutation(words).tolist()) + "."
        persona[str(u)] = p
    return summaries, persona


def test_keywords_and_agreement_find_the_planted_themes() -> None:
    summaries, persona = _summaries(800)
    keywords = summary_keywords(summaries, persona, len(THEMES), top=4)
    for p, theme in enumerate(THEMES):
        assert set(keywords[p][:3]) <= set(theme.split()), keywords[p]
    assert keyword_names(keywords)[0].count("&") == 1 and keyword_names([[]]) == ["persona 0"]
    agree, _ = keyword_agreement(summaries, persona, len(THEMES), seed=1)
    assert agree.users > 100 and agree.lift > 2.0
    values = np.random.default_rng(2).permutation(list(persona.values())).tolist()
    shuffled = dict(zip(persona, values, strict=True))
    null, _ = keyword_agreement(summaries, shuffled, len(THEMES), seed=1)
    assert null.lift < 1.5 < agree.lift


def test_load_and_errors(tmp_path: Path) -> None:
    (tmp_path / "sequential_data_processed.txt").write_text("1 1 2 3\n2 4 2\n")
    doc = {"1": {"user_summary": "Loves nail polish.", "item_ids": ["1"]}}
    (tmp_path / "user_summaries.part01.json").write_text(json.dumps(doc))
    data = load_persona_summaries(tmp_path)
    assert data.sequences == {"1": ["1", "2", "3"], "2": ["4", "2"]}
    assert data.summaries == {"1": "Loves nail polish."}
    (tmp_path / "user_summaries.part02.json").write_text('{"2": "not an object"}')
    with pytest.raises(DataError, match="part02"):
        load_persona_summaries(tmp_path)
    with pytest.raises(DataError, match="no such file"):
        load_persona_summaries(tmp_path / "missing")
    with pytest.raises(DataError, match="no user"):
        summary_keywords({}, {"1": 0}, 1)


def test_with_summary_describes_the_persona() -> None:
    cot = CoT(2, "nail fan: mostly Nails", (CoTInterest((1,), 1.0, "nails"),), 0, "more nails")
    out = with_summary(cot, "The user loves <b>glossy</b> nail art. They also buy files.", 5)
    assert out.persona_name == "nail fan: The user loves b glossy"
    assert out.interests == cot.interests and out.persona_id == 2


def test_cooccurrence_groups_separate_disjoint_catalogues() -> None:
    rng = np.random.default_rng(0)
    # Users buy only from items 0-19 or only from items 20-39.
    seqs = [rng.integers(0, 20, 8) + 20 * (u % 2) for u in range(200)]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seqs])])
    groups = cooccurrence_groups(indptr, np.concatenate(seqs), 41, 2, seed=0)
    assert groups[40] == -1  # never seen
    assert len(set(groups[:20].tolist())) == 1 and len(set(groups[20:40].tolist())) == 1
    assert groups[0] != groups[20]
    with pytest.raises(DataError, match="fewer than"):
        cooccurrence_groups(indptr, np.concatenate(seqs), 41, 50)
