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


def test_item_tokens_follow_the_sid_range_and_hash_by_bucket(tmp_path: Path) -> None:
    v = FastVocab(level_sizes=(4, 3, 2), num_personas=5, item_buckets=6)
    assert v.item_offset == 21 and v.size == 27 and v.tokens_per_item == 4
    assert v.sid_offsets.tolist() == [12, 16, 19]  # SID ids do not move
    assert v.item_tokens(np.array([0, 5, 6, 13])).tolist() == [21, 26, 21, 22]
    assert v.token_strings()[21] == "<i_0>" and len(v.token_strings()) == v.size
    v.save(tmp_path)
    assert FastVocab.load(tmp_path) == v
    with pytest.raises(ConfigError):
        v.item_tokens(np.array([-1]))
    with pytest.raises(ConfigError):
        FastVocab(level_sizes=(4,), item_buckets=-1)
    with pytest.raises(ConfigError):
        FastVocab(level_sizes=(4, 3, 2)).item_tokens(np.array([0]))


def test_vocab_files_from_before_item_tokens_still_load(tmp_path: Path) -> None:
    (tmp_path / "fast_vocab.json").write_text('{"level_sizes": [4, 3], "num_personas": 2}')
    v = FastVocab.load(tmp_path)
    assert v.item_buckets == 0 and v.tokens_per_item == 2 and v.size == 7 + 2 + 7


def test_prompt_with_item_tokens_puts_each_after_its_sid_and_the_trace_after_an_item() -> None:
    v = FastVocab(level_sizes=(4, 3, 2), num_personas=5, item_buckets=10)
    hist = np.array([[1, 2, 0], [3, 0, 1]])
    items = np.array([7, 12])
    trace = TraceTokens(persona_id=2, interests=((1,),))
    t = trace_token_ids(v, trace)
    assert encode(v, hist, items=items).tolist() == [BOS, 13, 18, 19, 28, 15, 16, 20, 23]
    p = encode(v, hist, trace, trace_at=1, items=items)
    assert p[1:5].tolist() == [13, 18, 19, 28]
    assert p[5 : 5 + len(t)].tolist() == t.tolist()
    assert p[5 + len(t) :].tolist() == [15, 16, 20, 23]
    assert encode(v, hist[:0], items=items[:0]).tolist() == [BOS]
    with pytest.raises(ConfigError, match="item tokens"):
        encode(v, hist)
    with pytest.raises(ConfigError, match="item tokens"):
        encode(v, hist, items=items[:1])
