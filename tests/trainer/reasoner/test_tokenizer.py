"""Vocabulary extension: scratch BPE + format tokens, and a local HF base model extended."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from sid_index.codes import format_sid, sid_token
from sid_index.errors import ConfigError, ReleaseError
from slow_path.cot_format import special_tokens
from trainer.reasoner.model import is_reasoner_dir, load_reasoner, prepare_reasoner
from trainer.reasoner.tokenizer import (
    ReasonerVocab,
    extend_tokenizer,
    format_tokens,
    load_tokenizer,
    save_tokenizer,
    train_bpe,
)

LEVELS = (8, 4, 8)
PERSONAS = 6


def _check_every_token_is_one_id(tokenizer, vocab: ReasonerVocab) -> None:
    tokens = format_tokens(LEVELS, PERSONAS)
    assert tokens == special_tokens(LEVELS, PERSONAS)
    for tok in tokens:
        ids = tokenizer.encode(tok, add_special_tokens=False)
        assert len(ids) == 1, tok
        assert tokenizer.decode(ids) == tok
    for level, size in enumerate(LEVELS):
        for code in (0, size - 1):
            assert tokenizer.convert_tokens_to_ids(sid_token(level, code)) == (
                vocab.sid_offsets[level] + code
            )


def test_scratch_tokenizer_keeps_format_tokens_whole(world, tmp_path: Path) -> None:
    reasoner = prepare_reasoner("scratch:tiny", LEVELS, PERSONAS, corpus_texts=world.texts())
    tok, vocab = reasoner.tokenizer, reasoner.vocab
    _check_every_token_is_one_id(tok, vocab)
    # Every format token is new; the BPE rows below are not.
    assert vocab.new_token_ranges == ((len(tok) - len(format_tokens(LEVELS, PERSONAS)), len(tok)),)
    # Round trip of a whole prompt + completion, markup and free text mixed, spaces kept.
    text = world.sft[0].prompt + world.sft[0].completion
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert tok.decode(ids, skip_special_tokens=True) == text  # vLLM's default keeps SID tokens
    # SID tokens never merge with their neighbours.
    sid = format_sid(world.codes[3])
    assert tok.encode(f"x{sid}y", add_special_tokens=False)[1:4] == list(
        vocab.sid_token_ids(world.codes[3])
    )
    save_tokenizer(tmp_path, tok, vocab)
    tok2, vocab2 = load_tokenizer(tmp_path)
    assert vocab2 == vocab and tok2.encode(text, add_special_tokens=False) == ids


def test_scratch_model_has_the_full_vocabulary(make_reasoner) -> None:
    reasoner = make_reasoner()
    assert reasoner.model.get_input_embeddings().weight.shape[0] == len(reasoner.tokenizer)
    assert reasoner.model.generation_config.do_sample is False


def _save_base_model(tmp_path: Path, texts: list[str], *, tie: bool) -> Path:
    """A tiny 'pre-trained' Llama with its own BPE tokenizer, as a local HF directory."""
    tok = train_bpe(texts, 400)
    config = LlamaConfig(
        vocab_size=len(tok) + 12,  # padded vocabulary: spare rows, like Qwen's
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
        intermediate_size=64, tie_word_embeddings=tie, pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    base = tmp_path / f"base-{tie}"
    model.save_pretrained(base)
    tok.save_pretrained(base)
    return base


@pytest.mark.parametrize("tie", [True, False])
def test_base_model_vocabulary_extension(world, tmp_path: Path, tie: bool) -> None:
    texts = [t for t in world.dataset.catalog.texts]
    base = _save_base_model(tmp_path, texts, tie=tie)
    old = LlamaForCausalLM.from_pretrained(base)
    old_in = old.get_input_embeddings().weight.detach().clone()
    old_out = old.get_output_embeddings().weight.detach().clone()
    old_len = len(train_bpe(texts, 400))

    titles = world.dataset.catalog.titles
    reasoner = prepare_reasoner(str(base), LEVELS, PERSONAS, sid_codes=world.codes, titles=titles)
    tok, vocab, model = reasoner.tokenizer, reasoner.vocab, reasoner.model
    _check_every_token_is_one_id(tok, vocab)
    emb = model.get_input_embeddings().weight.detach()
    n_new = len(format_tokens(LEVELS, PERSONAS))
    assert len(tok) == old_len + n_new
    assert emb.shape[0] == old_len + n_new  # grew past the 12 spare rows
    assert vocab.new_token_ranges == ((old_len, old_len + n_new),)
    torch.testing.assert_close(emb[:old_len], old_in[:old_len], rtol=0, atol=0)
    out = model.get_output_embeddings().weight.detach()
    torch.testing.assert_close(out[:old_len], old_out[:old_len], rtol=0, atol=0)
    assert (out.data_ptr() == emb.data_ptr()) == tie

    # A SID row starts at the mean of its items' mean title-token embeddings.
    level, code = 0, int(world.codes[0, 0])
    members = np.flatnonzero(world.codes[:, level] == code)
    vecs = [old_in[tok.encode(titles[i], add_special_tokens=False)].mean(0) for i in members]
    expected = torch.stack(vecs).mean(0)
    torch.testing.assert_close(emb[vocab.sid_offsets[level] + code], expected, rtol=1e-5, atol=1e-6)
    # Markers start at the mean of the base model's trained rows.
    think = tok.convert_tokens_to_ids("<think>")
    torch.testing.assert_close(emb[think], old_in[:old_len].mean(0), rtol=1e-5, atol=1e-6)

    # Saved as a reasoner directory, it loads back identically.
    reasoner.save(tmp_path / "r")
    assert is_reasoner_dir(tmp_path / "r")
    again = load_reasoner(tmp_path / "r")
    assert again.vocab == vocab
    torch.testing.assert_close(again.model.get_input_embeddings().weight, emb)
    # And a reasoner directory is accepted as a base (SFT starts from the aligned one).
    assert prepare_reasoner(str(tmp_path / "r"), LEVELS, PERSONAS).vocab == vocab
    with pytest.raises(ConfigError, match="SID levels"):
        prepare_reasoner(str(tmp_path / "r"), (8, 4), PERSONAS)


def test_extension_is_idempotent_for_existing_tokens(world) -> None:
    tok = train_bpe(world.texts(), 400)
    first = extend_tokenizer(tok, LEVELS, PERSONAS)
    again = extend_tokenizer(tok, LEVELS, PERSONAS)
    assert again.sid_offsets == first.sid_offsets and again.new_token_ranges == ()


def test_bad_inputs_raise_project_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        prepare_reasoner("scratch:huge", LEVELS, PERSONAS, corpus_texts=["x"])
    with pytest.raises(ConfigError):
        prepare_reasoner("scratch:tiny", LEVELS, PERSONAS)  # no corpus for the BPE
    with pytest.raises(ReleaseError):
        prepare_reasoner(str(tmp_path), LEVELS, PERSONAS)  # not a model directory
    with pytest.raises(ReleaseError):
        load_reasoner(tmp_path)
    with pytest.raises(ConfigError):
        format_tokens((), PERSONAS)
