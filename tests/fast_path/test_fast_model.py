"""Fast model vocabulary, prompt encoding and save/load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fast_path.fast_model import FastModel, FastModelConfig, build_model
from fast_path.prompt import TraceTokens, encode, left_pad, trace_token_ids
from fast_path.vocab import BOS, INTEREST, PAD, PERSONA_UNK, TRACE, TRACE_END, FastVocab
from sid_index.errors import ConfigError, ReleaseError


def test_vocab_layout_is_contiguous_and_spelled() -> None:
    v = FastVocab(level_sizes=(4, 3, 2), num_personas=5)
    assert v.size == 7 + 5 + 9
    assert v.sid_offsets.tolist() == [12, 16, 19]
    strings = v.token_strings()
    assert len(strings) == v.size
    assert strings[12] == "<a_0>" and strings[16] == "<b_0>" and strings[20] == "<c_1>"
    assert v.persona_token(4) == 11 and v.persona_token(5) == PERSONA_UNK
    assert v.persona_token(None) == PERSONA_UNK
    with pytest.raises(ConfigError):
        FastVocab(level_sizes=())


def test_prompt_puts_trace_after_the_items_it_covers() -> None:
    v = FastVocab(level_sizes=(4, 3, 2), num_personas=5)
    hist = np.array([[1, 2, 0], [3, 0, 1]])
    trace = TraceTokens(persona_id=2, interests=((1,), (3, 2), (0, 1, 1)))
    t = trace_token_ids(v, trace)
    # a full SID as an interest is cut to L-1 levels
    assert t.tolist() == [TRACE, 9, INTEREST, 13, INTEREST, 15, 18, INTEREST, 12, 17, TRACE_END]
    p = encode(v, hist, trace, trace_at=1)
    assert p[0] == BOS
    assert p[1:4].tolist() == [13, 18, 19]
    assert p[4 : 4 + len(t)].tolist() == t.tolist()
    assert p[4 + len(t) :].tolist() == [15, 16, 20]
    assert encode(v, hist).tolist() == [BOS, 13, 18, 19, 15, 16, 20]
    ids, mask = left_pad([p, encode(v, hist)])
    assert ids.shape == mask.shape == (2, len(p))
    assert ids[1, : len(p) - 7].eq(PAD).all() and mask[1].sum() == 7


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_save_load_round_trip_gives_identical_logits(tmp_path: Path, arch: str) -> None:
    torch.manual_seed(0)
    v = FastVocab(level_sizes=(8, 8, 4), num_personas=3)
    cfg = FastModelConfig(
        arch=arch,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_positions=64,
    )
    fm = FastModel(build_model(v, cfg).eval(), v, cfg)
    fm.save(tmp_path / "fm")
    assert (tmp_path / "fm" / "model.safetensors").is_file()
    loaded = FastModel.load(tmp_path / "fm")
    ids = torch.from_numpy(encode(v, np.array([[1, 2, 3], [4, 5, 0]])))[None]
    with torch.inference_mode():
        a = fm.model(input_ids=ids).logits
        b = loaded.model(input_ids=ids).logits
    torch.testing.assert_close(a, b)
    assert loaded.vocab == v and loaded.config == cfg
    assert loaded.model.generation_config.do_sample is False


def test_load_refuses_non_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError):
        FastModel.load(tmp_path)
