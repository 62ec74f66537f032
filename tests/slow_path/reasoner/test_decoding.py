"""The shared decoding primitives on a tiny random Llama (CPU): `complete` is transformers'
greedy `generate` (left padding, stop tokens), sampling is seeded, and `beam_answers` returns
catalogue items whose scores are the model's log-probabilities."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
)

from fast_path.beam_search import BeamSearchConfig
from fast_path.model_step import HFModelStep, SharedPrefixStep
from sid_index.codes import SemanticIDs
from sid_index.trie import SIDTrie
from slow_path.reasoner.decoding import beam_answers, complete, left_pad, model_step_for

PAD, BOS, EOS = 0, 1, 2
VOCAB = 64
LEVEL_SIZES = (4, 4, 3)
OFFSETS = np.array([40, 44, 48])  # SID tokens: level l's code c is token OFFSETS[l] + c
# Prompts of different lengths (left padding matters), plain tokens only.
ROWS = [[BOS, 5, 9, 11, 30], [BOS, 7], [BOS, 20, 21, 22, 23, 24, 25, 3], [BOS, 8, 8, 8]]


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def lm() -> tuple[Any, Any]:
    """(model, tokenizer): a random 2-layer Llama and the only tokenizer fields decoding reads."""
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
        pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS,
    )  # fmt: skip
    tokenizer = SimpleNamespace(pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS)
    return LlamaForCausalLM(config).eval(), tokenizer


@pytest.fixture(scope="module")
def codes() -> np.ndarray:
    """(20, 3) SID codes of a small catalogue (20 of the 48 possible SIDs)."""
    rng = np.random.default_rng(0)
    every = np.stack(np.meshgrid(*[np.arange(s) for s in LEVEL_SIZES], indexing="ij"), -1)
    return rng.permutation(every.reshape(-1, len(LEVEL_SIZES)))[:20].astype(np.int32)


def _generate(model: Any, rows: list[list[int]], max_new: int, stops: list[int]) -> list[list[int]]:
    """transformers' greedy decoding of left-padded rows, cut before the first stop token."""
    ids, mask = left_pad(rows, PAD, torch.device("cpu"))
    gen = GenerationConfig(
        do_sample=False, num_beams=1, max_new_tokens=max_new, eos_token_id=stops,
        pad_token_id=PAD,
    )  # fmt: skip
    new = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)
    out = []
    for row in new[:, ids.shape[1] :].tolist():
        cut = next((j for j, t in enumerate(row) if t in stops), len(row))
        out.append(row[:cut])
    return out


def test_left_pad() -> None:
    ids, mask = left_pad([[7, 8, 9], [5]], PAD, torch.device("cpu"))
    assert ids.tolist() == [[7, 8, 9], [PAD, PAD, 5]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_greedy_matches_transformers_generate(lm: tuple[Any, Any]) -> None:
    model, tok = lm
    ours, cut = complete(model, tok, ROWS, max_new_tokens=12)
    theirs = _generate(model, ROWS, 12, [EOS])
    assert ours == theirs
    assert cut == [len(t) == 12 for t in theirs]
    # Batching (and so the left padding) does not change a row's thought.
    assert [complete(model, tok, [r], max_new_tokens=12)[0][0] for r in ROWS] == ours


def test_stop_ids_end_a_row_without_being_returned(lm: tuple[Any, Any]) -> None:
    model, tok = lm
    free, _ = complete(model, tok, ROWS, max_new_tokens=16)
    # Stop tokens the model does write (early in rows 0 and 3), but never in row 1.
    stops = sorted({free[0][1], free[3][0]} - set(free[1]))
    ours, cut = complete(model, tok, ROWS, max_new_tokens=16, stop_ids=stops)
    # Rows decode independently: a stopped row is its free thought cut before the stop token.
    expected = [w[: next((j for j, t in enumerate(w) if t in stops), len(w))] for w in free]
    assert ours == expected
    assert cut == [len(e) == 16 for e in expected]
    assert any(cut) and not all(cut)  # both a stopped row and a row cut by the budget
    assert ours == _generate(model, ROWS, 16, [*stops, EOS])
    assert complete(model, tok, ROWS, max_new_tokens=0) == ([[]] * len(ROWS), [True] * len(ROWS))


def test_sampling_is_seeded_and_top_p_narrows_it(lm: tuple[Any, Any]) -> None:
    model, tok = lm

    def sample(seed: int, top_p: float = 1.0) -> list[list[int]]:
        g = torch.Generator().manual_seed(seed)
        kw: dict[str, Any] = {"temperature": 1.0, "top_p": top_p, "generator": g}
        return complete(model, tok, ROWS, max_new_tokens=10, **kw)[0]

    assert sample(3) == sample(3)
    assert sample(3) != sample(4)
    greedy = complete(model, tok, ROWS, max_new_tokens=10)[0]
    assert sample(3) != greedy
    assert sample(3, top_p=1e-6) == greedy  # the nucleus keeps only the best token


def test_beam_answers_are_items_scored_by_the_model(lm: tuple[Any, Any], codes: np.ndarray) -> None:
    model, tok = lm
    trie = SIDTrie.build(SemanticIDs(codes, LEVEL_SIZES))
    step = model_step_for(model)
    cfg = BeamSearchConfig(num_beams=6, num_return=4)
    excluded = [[0, 1, 2], [], [5], list(range(18))]
    items, sids, scores = beam_answers(
        model, tok, ROWS, trie=trie, offsets=OFFSETS, step=step, config=cfg,
        exclusion_sets=excluded,
    )  # fmt: skip
    assert items.shape == (4, 4) and sids.shape == (4, 4, 3) and scores.dtype == np.float32
    for row, ex in enumerate(excluded):
        live = items[row][items[row] >= 0]
        assert len(live) == min(4, 20 - len(ex)) and not set(live.tolist()) & set(ex)
        np.testing.assert_array_equal(sids[row, : len(live)], codes[live])
        assert (np.diff(scores[row, : len(live)]) <= 1e-6).all()
    # The best item's score is the sum of its SID tokens' log-probabilities after the prompt.
    for row, prompt in enumerate(ROWS):
        sid_ids = (OFFSETS + sids[row, 0]).tolist()
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + sid_ids])).logits[0]
        logp = torch.log_softmax(logits.float(), dim=-1)
        n = len(prompt)
        expected = sum(float(logp[n - 1 + j, t]) for j, t in enumerate(sid_ids))
        assert scores[row, 0] == pytest.approx(expected, abs=1e-4)


def test_model_step_for_picks_the_shared_prefix_step(lm: tuple[Any, Any]) -> None:
    assert isinstance(model_step_for(lm[0]), SharedPrefixStep)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=VOCAB, n_embd=16, n_layer=1, n_head=2))
    assert isinstance(model_step_for(gpt2), HFModelStep)
