"""The rule backend: format-exact text through the real parser, valid unseen answers,
determinism, and persona assignment identical to the trainer's persona model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sid_index.errors import DataError
from sid_index.records import Dataset
from sid_index.sid_index import SIDIndex
from slow_path.cot_format import parse_completion, to_trace
from slow_path.reasoner import ReasonerConfig, ReasonRequest
from slow_path.reasoner.personas import PersonaAssigner
from slow_path.reasoner.rule_backend import RuleReasoner


def _requests(data: Dataset, n: int) -> list[ReasonRequest]:
    return [ReasonRequest(s.user_id, s.items) for s in list(data.interactions)[:n]]


def test_every_output_parses_cleanly(sp_index: SIDIndex, sp_dataset: Dataset) -> None:
    r = RuleReasoner(ReasonerConfig(num_answers=5), sp_index)
    requests = _requests(sp_dataset, 200)
    outputs = r.reason(requests)
    assert len(outputs) == len(requests)
    codes = {tuple(c) for c in sp_index.sids.codes.tolist()}
    for req, out in zip(requests, outputs, strict=True):
        parsed = parse_completion(out.text, level_sizes=r.level_sizes, num_personas=r.num_personas)
        assert parsed.problems == (), (out.text, parsed.problems)
        assert parsed.cot is not None and 1 <= len(parsed.cot.interests) <= 5
        assert parsed.answer == out.answers[0]
        assert 1 <= len(out.answers) <= 5 and len(out.scores) == len(out.answers)
        assert list(out.scores) == sorted(out.scores, reverse=True)
        assert all(a in codes for a in out.answers)
        seen = {tuple(sp_index.sids.codes[i]) for i in req.items.tolist()}
        assert not seen & set(out.answers) or len(out.answers) == 1
        total = sum(i.weight for i in parsed.cot.interests)
        assert total == pytest.approx(1.0, abs=0.03)
        trace = to_trace(parsed, user_id=req.user_id, model_version="v", history_fingerprint="f",
                         text=out.text)  # fmt: skip
        trace.check_prefixes(r.level_sizes)


def test_deterministic_and_batch_independent(sp_index: SIDIndex, sp_dataset: Dataset) -> None:
    r = RuleReasoner(ReasonerConfig(), sp_index)
    requests = _requests(sp_dataset, 20)
    whole = r.reason(requests)
    one_by_one = [r.reason([q])[0] for q in requests]
    assert whole == one_by_one == RuleReasoner(ReasonerConfig(), sp_index).reason(requests)


def test_next_interest_holds_the_last_item(sp_index: SIDIndex, sp_dataset: Dataset) -> None:
    r = RuleReasoner(ReasonerConfig(), sp_index)
    for req, out in zip(
        _requests(sp_dataset, 50), r.reason(_requests(sp_dataset, 50)), strict=True
    ):
        parsed = parse_completion(out.text, level_sizes=r.level_sizes, num_personas=r.num_personas)
        assert parsed.cot is not None and parsed.cot.next_interest is not None
        last = tuple(sp_index.sids.codes[req.items[-1]].tolist())
        prefixes = [i.sid_prefix for i in parsed.cot.interests]
        if any(last[: len(p)] == p for p in prefixes):
            chosen = prefixes[parsed.cot.next_interest]
            assert last[: len(chosen)] == chosen
            # The text's answer comes from the next interest, unless all of it was seen.
            codes = sp_index.sids.codes
            under = np.flatnonzero((codes[:, : len(chosen)] == chosen).all(axis=1))
            if np.setdiff1d(under, req.items).size:
                assert out.answers[0][: len(chosen)] == chosen


def test_non_thinking_and_zero_answers(sp_index: SIDIndex, sp_dataset: Dataset) -> None:
    out = RuleReasoner(ReasonerConfig(thinking=False, num_answers=0), sp_index).reason(
        _requests(sp_dataset, 1)
    )[0]
    assert out.answers == () and out.text.endswith("</answer>") and "<persona>" not in out.text


def test_persona_model_file_matches_the_trainer(
    sp_index: SIDIndex, sp_dataset: Dataset, tmp_path: Path
) -> None:
    personas = pytest.importorskip("trainer.cot.personas")
    config = personas.PersonaConfig(num_personas=6, n_init=2, seed=3)
    features = personas.features_for(sp_index.catalog, sp_index.sids.codes, config)
    histories = [s.items for s in sp_dataset.interactions]
    model = personas.PersonaModel.fit(features, histories, config)
    path = tmp_path / "personas.json"
    model.save(path)
    mine = PersonaAssigner.load(path, sp_index.catalog, np.asarray(sp_index.sids.codes))
    np.testing.assert_array_equal(mine.assign_many(histories), model.assign_many(histories))
    r = RuleReasoner(ReasonerConfig(persona_model=path), sp_index)
    assert r.num_personas == 6 and r.persona_names == model.names
    out = r.reason(_requests(sp_dataset, 3))
    for q, o in zip(_requests(sp_dataset, 3), out, strict=True):
        parsed = parse_completion(o.text, level_sizes=r.level_sizes, num_personas=6)
        assert parsed.cot is not None and parsed.cot.persona_id == model.assign(q.items)
        assert parsed.cot.persona_name.startswith(model.names[parsed.cot.persona_id][:10])


def test_bad_persona_model_file(sp_index: SIDIndex, tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text("not json")
    with pytest.raises(DataError, match="not a persona model"):
        RuleReasoner(ReasonerConfig(persona_model=path), sp_index)
    doc = {"format_version": 1, "feature_keys": ["cat:Nowhere"], "centroids": [[1.0]],
           "names": ["x"], "descriptions": ["d"]}  # fmt: skip
    path.write_text(json.dumps(doc))
    with pytest.raises(DataError, match="none of its 1 features"):
        RuleReasoner(ReasonerConfig(persona_model=path), sp_index)
