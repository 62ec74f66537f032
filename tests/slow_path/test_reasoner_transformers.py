"""The transformers backend on a tiny randomly initialised Llama with the reasoner's vocabulary
(CPU): output shapes, answers that are catalogue SIDs, the thinking budget, and what the
parser makes of a model that was never trained (every output is a counted parse failure)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sid_index.errors import ReleaseError
from sid_index.records import Dataset
from sid_index.sid_index import SIDIndex
from slow_path.cot_format import parse_completion
from slow_path.reasoner import ReasonerConfig, ReasonRequest, get_reasoner
from slow_path.reasoner.transformers_backend import TransformersReasoner
from slow_path.tasks import answer_rows, build_traces
from slow_path.worker_runtime import UserHistory

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _requests(data: Dataset, n: int) -> list[ReasonRequest]:
    return [ReasonRequest(s.user_id, s.items) for s in list(data.interactions)[:n]]


def test_outputs_are_catalogue_sids(
    sp_index: SIDIndex, sp_dataset: Dataset, sp_tiny_lm: tuple[Any, Any]
) -> None:
    model, tokenizer = sp_tiny_lm
    config = ReasonerConfig(max_think_tokens=12, num_answers=4, batch_size=3)
    r = TransformersReasoner(config, sp_index, model=model, tokenizer=tokenizer)
    assert r.num_personas == 12 and r.level_sizes == sp_index.sids.level_sizes
    requests = _requests(sp_dataset, 7)
    outputs = r.reason(requests)
    assert len(outputs) == 7
    catalogue = {tuple(c) for c in np.asarray(sp_index.sids.codes).tolist()}
    levels = sp_index.sids.num_levels
    for out in outputs:
        assert len(out.answers) == 4 and len(out.scores) == 4
        assert all(a in catalogue for a in out.answers) and len(set(out.answers)) == 4
        assert all(np.isfinite(out.scores)) and list(out.scores) == sorted(out.scores, reverse=True)
        parsed = parse_completion(out.text, level_sizes=r.level_sizes, num_personas=12)
        assert parsed.answer == out.answers[0]  # the text's answer is the best beam
        assert "</think><answer>" in out.text and out.text.endswith("</answer>")
        # Budget: at most 12 thought tokens + 1 stop token + the L answer codes.
        assert levels <= out.num_tokens <= 12 + 1 + levels
    # Batching does not change what a user gets.
    single = r.reason(requests[:1])[0]
    assert single.answers == outputs[0].answers and single.text == outputs[0].text


def test_untrained_output_is_a_counted_parse_failure(
    sp_index: SIDIndex, sp_dataset: Dataset, sp_tiny_lm: tuple[Any, Any]
) -> None:
    model, tokenizer = sp_tiny_lm
    r = TransformersReasoner(ReasonerConfig(max_think_tokens=8, num_answers=2), sp_index,
                             model=model, tokenizer=tokenizer)  # fmt: skip
    requests = _requests(sp_dataset, 4)
    outputs = r.reason(requests)
    histories = {q.user_id: UserHistory(q.items, "f" * 16) for q in requests}
    traces, failed = build_traces(
        r, answer_rows(sp_index), sp_index.catalog.item_ids, requests, outputs, histories, 1.0
    )
    # A random model writes no persona or interest block: nothing usable, every user fails.
    assert traces == [] and sorted(failed) == sorted(q.user_id for q in requests)
    assert all("chain of thought" in why or "persona" in why for why in failed.values())


def test_non_thinking_and_zero_budget(
    sp_index: SIDIndex, sp_dataset: Dataset, sp_tiny_lm: tuple[Any, Any]
) -> None:
    model, tokenizer = sp_tiny_lm
    levels = sp_index.sids.num_levels
    answer_only = TransformersReasoner(
        ReasonerConfig(thinking=False, num_answers=2), sp_index, model=model, tokenizer=tokenizer
    ).reason(_requests(sp_dataset, 2))
    for out in answer_only:
        assert "<think>" not in out.text and out.num_tokens == levels
        assert (
            parse_completion(out.text, level_sizes=sp_index.sids.level_sizes, num_personas=1).answer
            == out.answers[0]
        )
    no_budget = TransformersReasoner(
        ReasonerConfig(max_think_tokens=0, num_answers=1),
        sp_index,
        model=model,
        tokenizer=tokenizer,
    ).reason(_requests(sp_dataset, 2))
    assert all(o.text.startswith("</think><answer>") and o.num_tokens == levels for o in no_budget)


def test_loads_a_saved_model_directory(
    sp_index: SIDIndex, sp_dataset: Dataset, sp_tiny_lm: tuple[Any, Any], tmp_path: Path
) -> None:
    model, tokenizer = sp_tiny_lm
    model.save_pretrained(tmp_path / "reasoner")
    tokenizer.save_pretrained(tmp_path / "reasoner")
    config = ReasonerConfig(release_dir=tmp_path, max_think_tokens=4, num_answers=2)
    loaded = get_reasoner("transformers", config, index=sp_index)
    in_memory = TransformersReasoner(config, sp_index, model=model, tokenizer=tokenizer)
    requests = _requests(sp_dataset, 2)
    assert [o.answers for o in loaded.reason(requests)] == [
        o.answers for o in in_memory.reason(requests)
    ]
    with pytest.raises(ReleaseError, match=r"no config\.json"):
        get_reasoner(
            "transformers", ReasonerConfig(release_dir=tmp_path / "nowhere"), index=sp_index
        )


def test_a_trainer_built_reasoner_directory_loads(
    sp_index: SIDIndex, sp_dataset: Dataset, tmp_path: Path
) -> None:
    """The reasoner engineer's scratch model (its tokenizer layout) works with this backend."""
    reasoner_model = pytest.importorskip("trainer.reasoner.model")
    arch = reasoner_model.ScratchArch(
        num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=2, intermediate_size=64,
        bpe_vocab_size=300,
    )  # fmt: skip
    built = reasoner_model.build_scratch(
        arch, sp_index.catalog.titles, sp_index.sids.level_sizes, num_personas=5
    )
    built.save(tmp_path / "reasoner")
    r = get_reasoner(
        "transformers", ReasonerConfig(release_dir=tmp_path, max_think_tokens=4, num_answers=3),
        index=sp_index,
    )  # fmt: skip
    assert r.num_personas == 5
    out = r.reason(_requests(sp_dataset, 2))
    catalogue = {tuple(c) for c in np.asarray(sp_index.sids.codes).tolist()}
    assert all(a in catalogue for o in out for a in o.answers)
