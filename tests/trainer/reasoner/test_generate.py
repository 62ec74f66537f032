"""Decoding: thoughts within budget, answers that are always catalogue items, exact scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import GenerationConfig

from sid_index.errors import ConfigError, DataError
from slow_path.cot_format import ANSWER, THINK_END, parse_completion
from trainer.reasoner.generate import ReasonConfig, complete, decode_items, reason
from trainer.reasoner.sft_data import encode_prompts


@pytest.fixture(scope="module")
def reasoner(make_reasoner):
    return make_reasoner(seed=1)


def _prompts(world, thinking: bool, n: int = 5) -> list[str]:
    return [s.prompt for s in world.sft if s.thinking == thinking][:n]


@pytest.mark.parametrize("thinking", [True, False])
def test_answers_are_catalogue_items_best_first(world, reasoner, thinking: bool) -> None:
    prompts = _prompts(world, thinking)
    seen = [list(range(i, i + 6)) for i in range(len(prompts))]  # items 0..10 excluded in turn
    cfg = ReasonConfig(thinking=thinking, max_think_tokens=12, num_answers=8, batch_size=3)
    outs = reason(
        reasoner.model, reasoner.tokenizer, prompts, trie=world.trie, config=cfg,
        exclusion_sets=seen,
    )  # fmt: skip
    assert len(outs) == len(prompts)
    for out, excluded in zip(outs, seen, strict=True):
        assert (out.items >= 0).all() and len(set(out.items.tolist())) == 8
        np.testing.assert_array_equal(out.sids, world.codes[out.items])
        assert not set(out.items.tolist()) & set(excluded)
        assert (np.diff(out.scores) <= 1e-6).all() and np.isfinite(out.scores).all()
        assert out.think_tokens <= 12
        parsed = parse_completion(out.text, level_sizes=world.sids.level_sizes, num_personas=6)
        assert parsed.answer == tuple(out.sids[0].tolist())
        if not thinking:
            assert out.thought == "" and out.think_tokens == 0


def test_thinking_budget_and_forced_close(world, reasoner) -> None:
    prompts = _prompts(world, True, 4)
    outs = reason(
        reasoner.model, reasoner.tokenizer, prompts, trie=world.trie,
        config=ReasonConfig(thinking=True, max_think_tokens=3, num_answers=2),
    )  # fmt: skip
    for o in outs:
        assert o.think_tokens <= 3
        assert o.hit_budget == (o.think_tokens == 3)
        assert o.text.startswith(o.thought + THINK_END + ANSWER)
    zero = reason(
        reasoner.model, reasoner.tokenizer, prompts[:1], trie=world.trie,
        config=ReasonConfig(thinking=True, max_think_tokens=0, num_answers=2),
    )  # fmt: skip
    assert zero[0].thought == "" and zero[0].hit_budget


def test_answer_scores_are_the_models_log_probabilities(world, reasoner) -> None:
    tok, model = reasoner.tokenizer, reasoner.model
    prompt = _prompts(world, True, 1)[0]
    out = reason(
        model, tok, [prompt], trie=world.trie,
        config=ReasonConfig(thinking=True, max_think_tokens=6, num_answers=3),
    )[0]  # fmt: skip
    context = encode_prompts(tok, [prompt])[0] + tok.encode(
        out.thought + THINK_END + ANSWER, add_special_tokens=False
    )
    for rank in range(3):
        sid_ids = reasoner.vocab.sid_token_ids(out.sids[rank]).tolist()
        ids = torch.tensor([context + sid_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), dim=-1)
        n = len(context)
        expected = sum(float(logp[n - 1 + j, t]) for j, t in enumerate(sid_ids))
        assert out.scores[rank] == pytest.approx(expected, abs=2e-4)


def test_greedy_thoughts_match_transformers_generate(world, reasoner) -> None:
    tok, model = reasoner.tokenizer, reasoner.model
    rows = encode_prompts(tok, _prompts(world, True, 3))  # different lengths: left padding
    ours, cut = complete(model, tok, rows, max_new_tokens=8)
    width = max(len(r) for r in rows)
    ids = torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])
    gen = GenerationConfig(
        max_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )  # fmt: skip
    ref = model.generate(input_ids=ids, attention_mask=mask, generation_config=gen)[:, width:]
    for mine, theirs, was_cut in zip(ours, ref.tolist(), cut, strict=True):
        stop = theirs.index(tok.eos_token_id) if tok.eos_token_id in theirs else len(theirs)
        assert mine == theirs[:stop]
        assert was_cut == (stop == 8)


def test_sampled_thoughts_are_reproducible(world, reasoner) -> None:
    prompts = _prompts(world, True, 3)
    cfg = ReasonConfig(
        thinking=True, max_think_tokens=10, num_answers=2, temperature=1.0, top_p=0.9
    )

    def run(seed: int) -> list[str]:
        g = torch.Generator().manual_seed(seed)
        return [
            o.thought
            for o in reason(
                reasoner.model, reasoner.tokenizer, prompts, trie=world.trie, config=cfg,
                generator=g,
            )
        ]  # fmt: skip

    assert run(0) == run(0)


def test_decode_items_after_any_prompt(world, reasoner) -> None:
    items, sids, _ = decode_items(
        reasoner.model, reasoner.tokenizer, ["items related to x:", "hello"], trie=world.trie,
        num_answers=4,
    )  # fmt: skip
    assert items.shape == (2, 4) and (items >= 0).all()
    np.testing.assert_array_equal(sids, world.codes[items])


def test_bad_prompts_and_configs(world, reasoner) -> None:
    with pytest.raises(DataError, match="<think>"):
        reason(
            reasoner.model, reasoner.tokenizer, _prompts(world, False, 1), trie=world.trie,
            config=ReasonConfig(thinking=True),
        )  # fmt: skip
    with pytest.raises(ConfigError):
        ReasonConfig(num_beams=2, num_answers=5)
    with pytest.raises(ConfigError):
        ReasonConfig(top_p=0.0)
