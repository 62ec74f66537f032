"""The vLLM backend. Its engine needs vLLM and a CUDA GPU (skipped otherwise, with the reason);
the parts that run inside vLLM's engine — rebuilding the SID constraint from request
arguments, planning and masking per constraint group — are plain torch and run everywhere."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch

from sid_index.records import Dataset
from sid_index.sid_index import SIDIndex
from slow_path.reasoner import ReasonerConfig, ReasonRequest, get_reasoner
from slow_path.reasoner.sid_constraint import AnswerTokens
from slow_path.reasoner.vllm_backend import (
    EXTRA_KEY,
    _apply_groups,
    _constraint_of,
    _score,
    _sid,
    constraint_args,
    load_constraint,
    parse_constraint_args,
)

HAS_VLLM = importlib.util.find_spec("vllm") is not None
HAS_CUDA = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(
    not (HAS_VLLM and HAS_CUDA),
    reason=f"needs vLLM and a CUDA GPU (vllm installed: {HAS_VLLM}, CUDA: {HAS_CUDA})",
)

TOKENS = AnswerTokens((100, 108, 116), think_end=10, answer=11, answer_end=12)


@pytest.fixture(scope="module")
def args(sp_release: Path, sp_index: SIDIndex) -> dict[str, Any]:
    assert sp_index.sids.level_sizes[:2] == (8, 8)
    return constraint_args(sp_release / "sid_index", TOKENS)


def test_request_arguments_round_trip_and_validate(args: dict[str, Any]) -> None:
    assert parse_constraint_args(args) == (args["sid_index"], (100, 108, 116), 10, 11, 12)
    for bad in ({}, {**args, "offsets": "x"}, {**args, "answer": -1}, "nope"):
        with pytest.raises(ValueError, match=EXTRA_KEY):
            parse_constraint_args(bad)


def test_engine_side_constraint_matches_the_index(args: dict[str, Any], sp_index: SIDIndex) -> None:
    c = _constraint_of(SimpleNamespace(extra_args={EXTRA_KEY: args}))
    assert c is not None and c is load_constraint(*parse_constraint_args(args))  # cached
    assert c.trie.num_items == len(sp_index)
    assert _constraint_of(SimpleNamespace(extra_args=None)) is None
    assert _constraint_of(SimpleNamespace(extra_args={"other": 1})) is None


def test_grouped_masking_touches_only_constrained_rows(args: dict[str, Any]) -> None:
    c = load_constraint(*parse_constraint_args(args))
    logits = torch.randn(5, 200)
    before = logits.clone()
    windows = torch.full((2, c.window), -1, dtype=torch.int64)
    windows[:, -1] = TOKENS.answer  # both rows start their answer
    _apply_groups(logits, [1, 3], [c, c], windows)
    torch.testing.assert_close(logits[[0, 2, 4]], before[[0, 2, 4]])
    for row in (1, 3):
        allowed = torch.isfinite(logits[row]).nonzero().flatten()
        assert 0 < len(allowed) <= 8 and bool(((allowed >= 100) & (allowed < 108)).all())


def test_answer_decoding_helpers() -> None:
    offsets = np.array([100, 108, 116])
    assert _sid([103, 110, 120, 12], offsets) == (3, 2, 4)
    assert _sid([103, 110], offsets) is None
    assert _score(SimpleNamespace(cumulative_logprob=-2.5)) == -2.5
    assert _score(SimpleNamespace(cumulative_logprob=None)) == 0.0


@needs_gpu
def test_vllm_backend_on_a_gpu(
    sp_release: Path, sp_index: SIDIndex, sp_dataset: Dataset, sp_tiny_lm: tuple[Any, Any],
    tmp_path: Path,
) -> None:  # fmt: skip
    import shutil

    release = tmp_path / "release"
    shutil.copytree(sp_release, release)
    model, tokenizer = sp_tiny_lm
    model.save_pretrained(release / "reasoner")
    tokenizer.save_pretrained(release / "reasoner")
    r = get_reasoner(
        "vllm", ReasonerConfig(release_dir=release, max_think_tokens=8, num_answers=3),
        index=sp_index,
    )  # fmt: skip
    requests = [ReasonRequest(s.user_id, s.items) for s in list(sp_dataset.interactions)[:8]]
    outputs = r.reason(requests)
    catalogue = {tuple(x) for x in np.asarray(sp_index.sids.codes).tolist()}
    assert len(outputs) == 8
    for out in outputs:
        assert 1 <= len(out.answers) <= 3 and all(a in catalogue for a in out.answers)
        assert out.text.endswith("</answer>")
