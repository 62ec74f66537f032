"""The SID-constrained answer mask (shared by the vLLM logits processors), in plain torch:
against the trie's own reference masks, under greedy decoding of random logits, and driving a
real transformers model's `generate`."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sid_index.codes import format_sid
from sid_index.errors import DataError
from sid_index.sid_index import SIDIndex
from sid_index.trie import SIDTrie
from slow_path.cot_format import special_tokens
from slow_path.reasoner.sid_constraint import AnswerConstraint, AnswerTokens, apply_plan

THINK_END, ANSWER, ANSWER_END = 10, 11, 12
VOCAB = 200


@pytest.fixture(scope="module")
def trie(sp_index: SIDIndex) -> SIDTrie:
    return sp_index.trie


@pytest.fixture(scope="module")
def constraint(trie: SIDTrie) -> AnswerConstraint:
    offsets, at = [], 100
    for size in trie.level_sizes:
        offsets.append(at)
        at += size
    assert at <= VOCAB
    return AnswerConstraint(trie, AnswerTokens(tuple(offsets), THINK_END, ANSWER, ANSWER_END))


def reference_allowed(c: AnswerConstraint, window: list[int]) -> set[int] | None:
    """The allowed next tokens after `window`, from the trie's per-prefix mask (None: free)."""
    if ANSWER not in window:
        return None
    start = len(window) - 1 - window[::-1].index(ANSWER)
    tail = window[start + 1 :]
    if ANSWER_END in tail:
        return None
    levels = c.trie.num_levels
    if len(tail) == levels:
        return {ANSWER_END}
    codes = [t - c.tokens.sid_offsets[i] for i, t in enumerate(tail)]
    if any(not 0 <= x < c.trie.level_sizes[i] for i, x in enumerate(codes)):
        return {ANSWER_END}
    mask = c.trie.allowed_mask_for_prefixes(torch.tensor([codes], dtype=torch.int64).reshape(1, -1))
    allowed = {c.tokens.sid_offsets[len(codes)] + int(i) for i in torch.nonzero(mask[0]).flatten()}
    return allowed or {ANSWER_END}


@st.composite
def windows(draw: Any, c: AnswerConstraint) -> list[int]:
    """A row's last L+1 tokens: junk, maybe an <answer>, then a (valid or broken) SID prefix."""
    levels = c.trie.num_levels
    codes = c.trie.sid_of(torch.tensor([draw(st.integers(0, c.trie.num_items - 1))]))[0].tolist()
    k = draw(st.integers(0, levels))
    sid = [c.tokens.sid_offsets[i] + codes[i] for i in range(k)]
    if k and draw(st.booleans()):  # a broken code somewhere in the prefix
        j = draw(st.integers(0, k - 1))
        sid[j] = draw(st.sampled_from([ANSWER_END, 0, 50, c.tokens.sid_offsets[j] + 99]))
    head = [ANSWER] if draw(st.integers(0, 3)) else []
    junk = draw(st.lists(st.sampled_from([-1, 0, 5, THINK_END, ANSWER_END, 150]), max_size=levels))
    window = (junk + head + sid)[-(levels + 1) :]
    return [-1] * (levels + 1 - len(window)) + window


def test_matches_the_trie_reference_on_every_catalogue_prefix(constraint: AnswerConstraint) -> None:
    trie = constraint.trie
    rows = []
    for item in range(trie.num_items):
        codes = trie.sid_of(torch.tensor([item]))[0].tolist()
        for k in range(trie.num_levels + 1):
            sid = [constraint.tokens.sid_offsets[i] + codes[i] for i in range(k)]
            w = [THINK_END, ANSWER, *sid]
            rows.append(
                [-1] * (constraint.window - len(w[-constraint.window :])) + w[-constraint.window :]
            )
    plan = constraint.plan(torch.tensor(rows))
    dense = plan.dense(len(rows), VOCAB)
    for r, w in enumerate(rows):
        ref = reference_allowed(constraint, w)
        got = set(torch.nonzero(dense[r]).flatten().tolist())
        assert got == (set(range(VOCAB)) if ref is None else ref), w


@settings(max_examples=200, deadline=None)
@given(data=st.data())
def test_matches_the_reference_on_random_windows(data: Any, constraint: AnswerConstraint) -> None:
    batch = data.draw(st.lists(windows(constraint), min_size=1, max_size=8))
    dense = constraint.plan(torch.tensor(batch)).dense(len(batch), VOCAB)
    for r, w in enumerate(batch):
        ref = reference_allowed(constraint, w)
        got = set(torch.nonzero(dense[r]).flatten().tolist())
        assert got == (set(range(VOCAB)) if ref is None else ref), w


def test_greedy_decoding_of_random_logits_yields_catalogue_sids(
    constraint: AnswerConstraint,
) -> None:
    gen = torch.Generator().manual_seed(0)
    batch, levels = 64, constraint.trie.num_levels
    seqs = torch.full((batch, constraint.window), -1, dtype=torch.int64)
    seqs[:, -1] = ANSWER
    for _ in range(levels + 1):
        logits = torch.randn(batch, VOCAB, generator=gen)
        apply_plan(logits, constraint.plan(seqs[:, -constraint.window :]))
        seqs = torch.cat([seqs, logits.argmax(dim=1, keepdim=True)], dim=1)
    assert bool((seqs[:, -1] == ANSWER_END).all())
    codes = seqs[:, -levels - 1 : -1] - torch.tensor(constraint.tokens.sid_offsets)
    catalogue = {
        tuple(c) for c in constraint.trie.sid_of(torch.arange(constraint.trie.num_items)).tolist()
    }
    assert all(tuple(c) in catalogue for c in codes.tolist())


def test_apply_plan_keeps_allowed_logits_and_leaves_free_rows(constraint: AnswerConstraint) -> None:
    logits = torch.randn(3, VOCAB)
    before = logits.clone()
    windows = torch.full((3, constraint.window), -1, dtype=torch.int64)
    windows[0, -1] = ANSWER  # constrained: level-0 codes
    windows[2, -1] = 5  # free
    windows[1, -1] = THINK_END  # free
    plan = constraint.plan(windows)
    assert plan.rows.tolist() == [0]
    apply_plan(logits, plan)
    torch.testing.assert_close(logits[1:], before[1:])
    allowed = plan.tokens[0].unique()
    torch.testing.assert_close(logits[0, allowed], before[0, allowed])
    others = torch.ones(VOCAB, dtype=torch.bool)
    others[allowed] = False
    assert bool(torch.isneginf(logits[0, others]).all())


def test_rejects_a_wrong_window_width(constraint: AnswerConstraint) -> None:
    with pytest.raises(DataError, match="window"):
        constraint.plan(torch.zeros(2, constraint.window + 1, dtype=torch.int64))


def test_answer_tokens_from_a_vocabulary(sp_index: SIDIndex) -> None:
    sizes = sp_index.sids.level_sizes
    vocab = {t: i for i, t in enumerate(special_tokens(sizes, 3))}
    tokens = AnswerTokens.from_vocab(vocab, sizes)
    assert tokens.answer == vocab["<answer>"] and tokens.answer_end == vocab["</answer>"]
    assert tokens.sid_offsets[1] == vocab["<b_0>"]
    with pytest.raises(DataError, match="lacks"):
        AnswerTokens.from_vocab({k: v for k, v in vocab.items() if k != "<c_3>"}, sizes)
    shuffled = dict(vocab)
    shuffled["<b_0>"], shuffled["<b_1>"] = vocab["<b_1>"], vocab["<b_0>"]
    with pytest.raises(DataError, match="contiguous"):
        AnswerTokens.from_vocab(shuffled, sizes)


def test_drives_a_transformers_model_to_catalogue_sids(
    sp_index: SIDIndex, sp_tiny_lm: tuple[Any, Any], one_torch_thread: None
) -> None:
    from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

    model, tokenizer = sp_tiny_lm
    tokens = AnswerTokens.from_vocab(tokenizer.get_vocab(), sp_index.sids.level_sizes)
    c = AnswerConstraint(sp_index.trie, tokens)

    class Masked(LogitsProcessor):  # type: ignore[misc]
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
            return apply_plan(scores, c.plan(input_ids[:, -c.window :]))

    tail = "</user><think></think><answer>"
    prompts = [f"<user>history: {format_sid(sp_index.sids.codes[i])} x{tail}" for i in range(6)]
    enc = tokenizer(prompts, return_tensors="pt", padding=True, padding_side="left")
    out = model.generate(
        **enc,
        logits_processor=LogitsProcessorList([Masked()]),
        generation_config=GenerationConfig(
            do_sample=False, max_new_tokens=c.window, eos_token_id=[tokens.answer_end],
            pad_token_id=tokenizer.pad_token_id,
        ),
    )  # fmt: skip
    new = out[:, enc["input_ids"].shape[1] :]
    levels = sp_index.sids.num_levels
    assert bool((new[:, levels] == tokens.answer_end).all())
    codes = (new[:, :levels] - torch.tensor(tokens.sid_offsets)).numpy()
    catalogue = {tuple(x) for x in np.asarray(sp_index.sids.codes).tolist()}
    assert all(tuple(x) in catalogue for x in codes.tolist())
