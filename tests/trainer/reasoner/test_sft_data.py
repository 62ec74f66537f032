"""Completion-only labels, left truncation of long prompts, padding and packing layouts."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sid_index.errors import ConfigError, DataError
from trainer.reasoner.completion_loss import CompletionLoss
from trainer.reasoner.sft_data import (
    IGNORE,
    collate,
    encode_prompts,
    plan_epoch,
    tokenize_samples,
)


def test_labels_cover_the_completion_only(world, make_reasoner) -> None:
    r = make_reasoner()
    tok = r.tokenizer
    samples = world.sft[:4]
    data = tokenize_samples(tok, samples, max_length=512)
    assert data.truncated == data.dropped == 0
    prompts = encode_prompts(tok, [s.prompt for s in samples])
    for i, s in enumerate(samples):
        assert data.prompt_lens[i] == len(prompts[i])
        ids = data.ids[i]
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert tok.decode(ids[data.prompt_lens[i] : -1]) == s.completion
    batch = collate(data, [[0], [1], [2]], tok.pad_token_id, packing=False)
    for row, i in enumerate((0, 1, 2)):
        labels = batch.labels[row]
        n = len(data.ids[i])
        assert (labels[: data.prompt_lens[i]] == IGNORE).all()
        assert (labels[n:] == IGNORE).all()  # padding
        start = data.prompt_lens[i]
        assert labels[start:n].tolist() == data.ids[i][start:].tolist()
        assert int(batch.attention_mask[row].sum()) == n


def test_long_prompts_lose_their_oldest_tokens(world, make_reasoner) -> None:
    tok = make_reasoner().tokenizer
    sample = world.sft[0]
    full = tokenize_samples(tok, [sample], max_length=512)
    n = len(full.ids[0])
    cut = tokenize_samples(tok, [sample], max_length=n - 5)
    assert cut.truncated == 1 and len(cut.ids[0]) == n - 5
    assert cut.ids[0][0] == tok.bos_token_id  # bos kept, then the most recent prompt tokens
    assert cut.ids[0][1:].tolist() == full.ids[0][6:].tolist()
    completion_len = n - int(full.prompt_lens[0])
    with pytest.raises(DataError, match="fits"):
        tokenize_samples(tok, [sample], max_length=completion_len)
    with pytest.raises(ConfigError):
        tokenize_samples(tok, [sample], max_length=2)


def test_packed_samples_do_not_see_each_other(world, make_reasoner) -> None:
    r = make_reasoner()
    tok = r.tokenizer
    data = tokenize_samples(tok, world.sft[:6], max_length=512)
    loss = CompletionLoss(r.model).eval()
    with torch.no_grad():
        separate = sum(
            float(loss(collate(data, [[i]], tok.pad_token_id, packing=False))) for i in range(3)
        )
        packed_batch = collate(data, [[0, 1, 2]], tok.pad_token_id, packing=True)
        packed = float(loss(packed_batch))
    assert packed_batch.attention_mask is None
    assert packed_batch.position_ids[0, len(data.ids[0])] == 0  # positions restart per sample
    assert packed == pytest.approx(separate, rel=1e-4)


def test_plans_cover_every_sample_once(world, make_reasoner) -> None:
    data = tokenize_samples(make_reasoner().tokenizer, world.sft, max_length=512)
    for packing in (False, True):
        plan = plan_epoch(data, 4, 512, packing=packing, rng=np.random.default_rng(1))
        seen = sorted(i for batch in plan for row in batch for i in row)
        assert seen == list(range(len(data)))
        assert all(len(b) <= 4 for b in plan)
        if packing:
            assert all(data.lengths[row].sum() <= 512 for b in plan for row in b)
            assert len(plan) < len(data) / 4  # several samples per row
