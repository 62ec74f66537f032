"""Constrained beam search: exactly transformers' `generate` beams, exclusions, invariants.

Models are tiny random-initialised Llama / Qwen2 / GPT-2 decoders whose vocab is a few special
tokens, some filler tokens and the SID tokens of every level. The reference is
`model.generate(num_beams=…, prefix_allowed_tokens_fn=fn)` with a fully explicit generation
config, where `fn` allows exactly the valid next SID tokens (from a plain dict of prefixes).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from transformers import (
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from fast_path.beam_search import BeamSearchConfig, BeamSearchResult, constrained_beam_search
from fast_path.model_step import HFModelStep, SharedPrefixStep
from sid_index.codes import SemanticIDs
from sid_index.errors import ConfigError, DataError
from sid_index.trie import Exclusion, SIDTrie

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL = 6  # pad, bos, eos and three filler tokens that are never SID tokens


def _catalogue(sizes: tuple[int, ...], n: int, seed: int, chain: bool = False) -> np.ndarray:
    """(n, L) unique random codes; with `chain`, half the first-level codes get one child."""
    rng = np.random.default_rng(seed)
    rows: set[tuple[int, ...]] = set()
    while len(rows) < n:
        row = tuple(int(rng.integers(0, s)) for s in sizes)
        if chain and row[0] % 2 == 1:
            row = (row[0], *[0] * (len(sizes) - 1))  # one child per level below odd roots
        rows.add(row)
    codes = np.array(sorted(rows), dtype=np.int32)
    return codes[rng.permutation(len(codes))]


# (level sizes, items, seed, single-child chains, dense table budget, levels reversed in vocab)
TRIES = {
    "3lvl": ((8, 6, 5), 60, 0, False, 1 << 22, False),
    "4lvl-chains": ((4, 3, 2, 3), 20, 1, True, 1 << 22, True),
    "wide-root-csr": ((16, 4), 40, 2, False, 0, False),
    "tiny": ((5, 7, 3), 6, 3, False, 1 << 22, False),
}


@cache
def _trie(name: str) -> tuple[SIDTrie, np.ndarray, np.ndarray, int]:
    """Trie, codes, token offsets (L,), vocab size."""
    sizes, n, seed, chain, dense, reverse = TRIES[name]
    codes = _catalogue(sizes, n, seed, chain)
    trie = SIDTrie.build(SemanticIDs(codes, sizes), dense_entries=dense)
    order = list(range(len(sizes)))[::-1] if reverse else list(range(len(sizes)))
    offsets = np.zeros(len(sizes), dtype=np.int64)
    start = NUM_SPECIAL
    for lvl in order:
        offsets[lvl] = start
        start += sizes[lvl]
    return trie, codes, offsets, start


# (architecture, hidden, layers, heads, kv heads, seed)
MODELS = {
    "llama-gqa": ("llama", 32, 2, 4, 2, 0),
    "qwen2": ("qwen2", 48, 1, 4, 4, 1),
    "llama-deep": ("llama", 64, 3, 8, 2, 2),
    "gpt2": ("gpt2", 32, 2, 4, 4, 3),
}


@cache
def _model(name: str, vocab: int) -> PreTrainedModel:
    arch, hidden, layers, heads, kv_heads, seed = MODELS[name]
    torch.manual_seed(seed)
    special = dict(pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS)
    # A wide init spreads the logits, so no two hypotheses tie to within float error.
    if arch == "gpt2":
        config = GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_positions=64,
            initializer_range=0.3, **special,
        )  # fmt: skip
        return GPT2LMHeadModel(config).eval()
    common = dict(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, intermediate_size=2 * hidden,
        max_position_embeddings=64, initializer_range=0.3, tie_word_embeddings=False, **special,
    )  # fmt: skip
    if arch == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**common)).eval()
    return LlamaForCausalLM(LlamaConfig(**common)).eval()


def _prompts(vocab: int, lengths: list[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded (B, T) prompts of the given lengths over the non-special tokens."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.full((len(lengths), width), PAD, dtype=torch.int64)
    mask = torch.zeros((len(lengths), width), dtype=torch.int64)
    for b, n in enumerate(lengths):
        ids[b, width - n :] = torch.randint(3, vocab, (n,), generator=g)
        mask[b, width - n :] = 1
    return ids, mask


def _hf_beams(
    model: PreTrainedModel,
    ids: torch.Tensor,
    mask: torch.Tensor,
    codes: np.ndarray,
    sizes: tuple[int, ...],
    offsets: np.ndarray,
    cfg: BeamSearchConfig,
    excluded: list[set[int]] | None = None,
    early_stopping: bool | str = False,
    length_penalty: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """transformers' beams as (B, K, L) codes and (B, K) summed log-probs; slots that hold
    no real hypothesis (score about -1e9: fewer valid items than beams) become -1 / -inf."""
    batch, prompt_len = ids.shape
    num_levels = len(sizes)
    allowed: list[dict[tuple[int, ...], set[int]]] = []
    for b in range(batch):
        table: dict[tuple[int, ...], set[int]] = {}
        for item, row in enumerate(codes.tolist()):
            if excluded is None or item not in excluded[b]:
                for t in range(num_levels):
                    table.setdefault(tuple(row[:t]), set()).add(row[t])
        allowed.append(table)

    def fn(batch_id: int, sent: torch.Tensor) -> list[int]:
        gen = sent[prompt_len:].tolist()
        t = len(gen)
        prefix = tuple(tok - int(offsets[lvl]) for lvl, tok in enumerate(gen))
        codes_next = allowed[batch_id].get(prefix)
        if not codes_next:
            # Only padding beams (score -1e9) get here; keep them SID-shaped so they never end
            # early (an empty list is an error in transformers 5).
            return list(range(int(offsets[t]), int(offsets[t]) + sizes[t]))
        return [int(offsets[t]) + c for c in sorted(codes_next)]

    gen_config = GenerationConfig(
        num_beams=cfg.num_beams, num_return_sequences=cfg.num_return, max_new_tokens=num_levels,
        min_new_tokens=num_levels, do_sample=False, early_stopping=early_stopping,
        length_penalty=length_penalty, pad_token_id=PAD, eos_token_id=EOS, bos_token_id=BOS,
        return_dict_in_generate=True, output_scores=True,
    )  # fmt: skip
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=mask,
            generation_config=gen_config,
            prefix_allowed_tokens_fn=fn,
        )
    tokens = out.sequences[:, prompt_len:].view(batch, cfg.num_return, num_levels)
    sids = tokens - torch.from_numpy(offsets)
    scores = out.sequences_scores.view(batch, cfg.num_return) * num_levels**length_penalty
    real = scores > -1e6
    return torch.where(real[..., None], sids, -1), torch.where(real, scores, float("-inf"))


def _assert_same(ours: BeamSearchResult, sids: torch.Tensor, scores: torch.Tensor) -> None:
    assert torch.equal(ours.sids, sids), f"ours {ours.sids.tolist()} != hf {sids.tolist()}"
    real = torch.isfinite(scores)
    assert torch.equal(torch.isfinite(ours.scores), real)
    assert torch.allclose(ours.scores[real], scores[real], atol=1e-4, rtol=0)


def _assert_items_match_sids(ours: BeamSearchResult, codes: np.ndarray) -> None:
    valid = ours.items >= 0
    got = torch.from_numpy(codes.astype(np.int64))[ours.items[valid]]
    assert torch.equal(got, ours.sids[valid])


STEPS = {"hf": HFModelStep, "shared": SharedPrefixStep}
CASES = [
    # model, trie, beams, K, prompt lengths, adapter
    ("llama-gqa", "3lvl", 4, 4, [7, 4, 6], "hf"),
    ("llama-gqa", "3lvl", 10, 5, [7, 4, 6], "shared"),
    ("llama-gqa", "4lvl-chains", 8, 8, [5], "shared"),
    ("llama-gqa", "tiny", 8, 6, [3, 9], "hf"),
    ("llama-gqa", "tiny", 10, 10, [3, 9], "shared"),
    ("qwen2", "3lvl", 8, 3, [8, 2, 5, 5], "hf"),
    ("qwen2", "4lvl-chains", 10, 7, [6, 3], "shared"),
    ("qwen2", "wide-root-csr", 4, 2, [4, 4], "shared"),
    ("llama-deep", "wide-root-csr", 10, 10, [9, 1, 5], "hf"),
    ("llama-deep", "3lvl", 8, 8, [9, 1, 5], "shared"),
    ("llama-deep", "4lvl-chains", 4, 1, [2], "shared"),
    ("gpt2", "3lvl", 8, 4, [6, 3], "hf"),
    ("gpt2", "4lvl-chains", 10, 6, [4, 7], "hf"),
]


@pytest.mark.parametrize(("model_name", "trie_name", "beams", "k", "lengths", "adapter"), CASES)
def test_matches_transformers_generate(
    model_name: str, trie_name: str, beams: int, k: int, lengths: list[int], adapter: str
) -> None:
    trie, codes, offsets, vocab = _trie(trie_name)
    model = _model(model_name, vocab)
    ids, mask = _prompts(vocab, lengths, seed=beams + k)
    cfg = BeamSearchConfig(num_beams=beams, num_return=k)
    ours = constrained_beam_search(STEPS[adapter](model), ids, mask, trie, offsets, cfg)
    sids, scores = _hf_beams(model, ids, mask, codes, trie.level_sizes, offsets, cfg)
    _assert_same(ours, sids, scores)
    _assert_items_match_sids(ours, codes)


@pytest.mark.parametrize(("early_stopping", "length_penalty"), [(True, 0.5), ("never", -1.0)])
def test_length_penalty_and_early_stopping_cannot_reorder(
    early_stopping: bool | str, length_penalty: float
) -> None:
    trie, codes, offsets, vocab = _trie("3lvl")
    model = _model("llama-gqa", vocab)
    ids, mask = _prompts(vocab, [5, 8], seed=7)
    cfg = BeamSearchConfig(num_beams=6, num_return=6)
    ours = constrained_beam_search(SharedPrefixStep(model), ids, mask, trie, offsets, cfg)
    sids, scores = _hf_beams(
        model, ids, mask, codes, trie.level_sizes, offsets, cfg, None, early_stopping,
        length_penalty,
    )  # fmt: skip
    _assert_same(ours, sids, scores)


@pytest.mark.parametrize("adapter", ["hf", "shared"])
def test_exclusions_match_transformers_and_return_the_next_best(adapter: str) -> None:
    trie, codes, offsets, vocab = _trie("3lvl")
    model = _model("qwen2", vocab)
    ids, mask = _prompts(vocab, [6, 3, 8], seed=11)
    cfg = BeamSearchConfig(num_beams=8, num_return=5)
    step = STEPS[adapter](model)
    free = constrained_beam_search(step, ids, mask, trie, offsets, cfg)
    # Request 0: its top two; request 1: everything under the best first-level code (a whole
    # subtree dies); request 2: nothing.
    subtree = set(np.flatnonzero(codes[:, 0] == int(free.sids[1, 0, 0])).tolist())
    excluded = [set(free.items[0, :2].tolist()), subtree, set()]
    excl = Exclusion.build(trie, [sorted(s) for s in excluded])
    ours = constrained_beam_search(step, ids, mask, trie, offsets, cfg, excl)
    sids, scores = _hf_beams(model, ids, mask, codes, trie.level_sizes, offsets, cfg, excluded)
    _assert_same(ours, sids, scores)
    for b, ex in enumerate(excluded):
        assert not set(ours.items[b].tolist()) & ex
    assert torch.equal(ours.items[0, :3], free.items[0, 2:])  # the next best move up
    assert torch.equal(ours.items[2], free.items[2])
    assert bool((ours.sids[1, :, 0] != free.sids[1, 0, 0]).all())


def test_fewer_valid_items_than_requested_pads_with_minus_one() -> None:
    trie, _, offsets, vocab = _trie("tiny")  # 6 items
    model = _model("llama-gqa", vocab)
    ids, mask = _prompts(vocab, [4, 7], seed=3)
    excl = Exclusion.build(trie, [[0, 1, 2], list(range(6))])  # 3 left, then none at all
    cfg = BeamSearchConfig(num_beams=10, num_return=8)
    ours = constrained_beam_search(SharedPrefixStep(model), ids, mask, trie, offsets, cfg, excl)
    assert sorted(ours.items[0, :3].tolist()) == [3, 4, 5]
    assert ours.items[0, 3:].tolist() == [-1] * 5 and ours.items[1].tolist() == [-1] * 8
    assert bool((ours.sids[0, 3:] == -1).all()) and bool(torch.isinf(ours.scores[0, 3:]).all())
    assert bool(torch.isinf(ours.scores[1]).all())


def test_shared_prefix_step_matches_the_transformers_cache() -> None:
    """Logits of both adapters agree while rows are expanded, reordered and dropped."""
    vocab = 40
    model = _model("llama-gqa", vocab)
    ids, mask = _prompts(vocab, [5, 2, 7], seed=5)
    hf, shared = HFModelStep(model), SharedPrefixStep(model)
    (la, ca), (lb, cb) = hf.prefill(ids, mask), shared.prefill(ids, mask)
    torch.testing.assert_close(la, lb)
    g = torch.Generator().manual_seed(0)
    parents = [
        torch.tensor([0, 0, 1, 2, 2, 2]),  # expand requests into beams
        torch.tensor([5, 0, 3, 3]),  # reorder, duplicate, drop rows
        torch.tensor([1, 2, 0]),  # requests out of order
    ]
    for parent in parents:
        tokens = torch.randint(3, vocab, (len(parent),), generator=g)
        la, ca = hf.step(tokens, ca, parent)
        lb, cb = shared.step(tokens, cb, parent)
        torch.testing.assert_close(la, lb, atol=1e-5, rtol=1e-5)


def _teacher_forced_scores(
    model: PreTrainedModel, ids: torch.Tensor, mask: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """(B, M) summed log-probs of (M, L) token sequences after each prompt, no cache."""
    batch, m = ids.shape[0], tokens.shape[0]
    full = torch.cat([ids.repeat_interleave(m, 0), tokens.repeat(batch, 1)], dim=1)
    full_mask = torch.cat(
        [mask.repeat_interleave(m, 0), torch.ones_like(tokens.repeat(batch, 1))], 1
    )
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(input_ids=full, attention_mask=full_mask, position_ids=pos).logits
    logp = torch.log_softmax(logits[:, ids.shape[1] - 1 : -1].float(), dim=-1)
    picked = logp.gather(2, tokens.repeat(batch, 1)[:, :, None])[..., 0]
    return picked.sum(dim=1).view(batch, m)


HYP_SIZES = (5, 4, 3)
HYP_OFFSETS = np.array([NUM_SPECIAL, NUM_SPECIAL + 5, NUM_SPECIAL + 9])
HYP_VOCAB = NUM_SPECIAL + sum(HYP_SIZES)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rows=st.lists(
        st.tuples(*(st.integers(0, s - 1) for s in HYP_SIZES)), min_size=1, max_size=25, unique=True
    ),
    beams=st.integers(1, 12),
    data=st.data(),
)
def test_invariants(rows: list[tuple[int, ...]], beams: int, data: st.DataObject) -> None:
    """Valid, distinct, non-excluded items with true, non-increasing scores; exhaustive beams
    give the exact top-K."""
    codes = np.asarray(rows, dtype=np.int32)
    trie = SIDTrie.build(SemanticIDs(codes, HYP_SIZES))
    k = data.draw(st.integers(1, beams))
    lengths = data.draw(st.lists(st.integers(1, 6), min_size=1, max_size=3))
    item = st.integers(0, len(rows) - 1)
    excluded = [data.draw(st.sets(item, max_size=len(rows))) for _ in lengths]
    model = _model("llama-gqa", HYP_VOCAB)
    ids, mask = _prompts(HYP_VOCAB, lengths, seed=len(rows))
    excl = Exclusion.build(trie, [sorted(s) for s in excluded])
    cfg = BeamSearchConfig(num_beams=beams, num_return=k)
    ours = constrained_beam_search(
        SharedPrefixStep(model), ids, mask, trie, offsets := HYP_OFFSETS, cfg, excl
    )
    _assert_items_match_sids(ours, codes)
    exact = _teacher_forced_scores(model, ids, mask, torch.from_numpy(codes + offsets))  # (B, N)
    for b, ex in enumerate(excluded):
        got = [i for i in ours.items[b].tolist() if i >= 0]
        n_allowed = len(rows) - len(ex)
        assert len(got) == min(k, n_allowed) and len(set(got)) == len(got)
        assert ours.items[b, len(got) :].tolist() == [-1] * (k - len(got))  # padding at the end
        assert not set(got) & ex
        s = ours.scores[b, : len(got)]
        assert bool((s[:-1] >= s[1:]).all())
        torch.testing.assert_close(s, exact[b, got], atol=1e-4, rtol=0)
        if beams >= len(rows):  # nothing was ever pruned: the exact best k items
            allowed = torch.tensor(sorted(set(range(len(rows))) - ex), dtype=torch.int64)
            if len(allowed):
                best = allowed[exact[b, allowed].argsort(descending=True)[: len(got)]]
                assert got == best.tolist()


def test_config_and_input_validation() -> None:
    with pytest.raises(ConfigError, match=r"self\.num_beams=0"):
        BeamSearchConfig(num_beams=0, num_return=1)
    with pytest.raises(ConfigError, match=r"self\.num_return=5"):
        BeamSearchConfig(num_beams=4, num_return=5)
    trie, _, offsets, vocab = _trie("3lvl")
    model = _model("llama-gqa", vocab)
    step = HFModelStep(model)
    ids, mask = _prompts(vocab, [3, 4], seed=0)
    cfg = BeamSearchConfig(num_beams=2, num_return=2)
    with pytest.raises(DataError, match="token_offsets has 2 entries for 3 levels"):
        constrained_beam_search(step, ids, mask, trie, offsets[:2], cfg)
    with pytest.raises(DataError, match="outside the vocab"):
        constrained_beam_search(step, ids, mask, trie, offsets + vocab, cfg)
    with pytest.raises(DataError, match="exclusion built for 1 requests"):
        constrained_beam_search(step, ids, mask, trie, offsets, cfg, Exclusion.build(trie, [[0]]))
    with pytest.raises(DataError, match="empty batch"):
        constrained_beam_search(step, ids[:0], mask[:0], trie, offsets, cfg)
    with pytest.raises(DataError, match="at least one attended token"):
        constrained_beam_search(step, ids, torch.zeros_like(mask), trie, offsets, cfg)
    with pytest.raises(ConfigError, match="model_type='gpt2'"):
        SharedPrefixStep(_model("gpt2", vocab))


def test_normalize_over_leaves_trailing_read_only_tokens_out_of_the_softmax() -> None:
    """A fast model with item tokens (ids after the SIDs, never predicted) is decoded with
    log-probabilities over the decodable ids only: the scores are the teacher-forced
    log-softmax over that slice, and the trailing tokens' logits cannot change them."""
    trie, codes, offsets, vocab = _trie("3lvl")
    extra = 9  # read-only tokens after the SIDs, like item tokens
    model = _model("llama-gqa", vocab + extra)
    ids, mask = _prompts(vocab, [5, 3], seed=4)
    cfg = BeamSearchConfig(num_beams=len(codes), num_return=6)  # exhaustive: exact top 6
    ours = constrained_beam_search(
        HFModelStep(model), ids, mask, trie, offsets, cfg, normalize_over=vocab
    )
    tokens = torch.from_numpy(offsets + codes)  # (N, L) token ids of every item
    full = torch.cat([ids.repeat_interleave(len(codes), 0), tokens.repeat(2, 1)], dim=1)
    full_mask = torch.cat(
        [mask.repeat_interleave(len(codes), 0), torch.ones_like(tokens.repeat(2, 1))], 1
    )
    pos = (full_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.inference_mode():
        logits = model(input_ids=full, attention_mask=full_mask, position_ids=pos).logits
    logp = torch.log_softmax(logits[:, ids.shape[1] - 1 : -1, :vocab].float(), dim=-1)
    truth = logp.gather(2, tokens.repeat(2, 1)[:, :, None])[..., 0].sum(1).view(2, -1)
    for b in range(2):
        want = truth[b].topk(6)
        assert ours.items[b].tolist() == want.indices.tolist()
        torch.testing.assert_close(ours.scores[b], want.values, atol=1e-4, rtol=1e-4)
    plain = constrained_beam_search(HFModelStep(model), ids, mask, trie, offsets, cfg)
    assert not torch.allclose(plain.scores, ours.scores)  # the full softmax differs
