"""Two-stage rollouts and their token scoring against plain full-sequence forwards."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from sid_index.errors import DataError
from trainer.reasoner.generate import sid_offsets_of
from trainer.reasoner.model import Reasoner
from trainer.reasoner.tokenizer import token_ids
from trainer.rl.prompts import build_prompts, with_thinking
from trainer.rl.rewards import RewardConfig
from trainer.rl.rollout import RolloutConfig, rollout, sample_lists
from trainer.rl.scoring import score_tokens, scoring_batch

CFG = RolloutConfig(group_size=2, lists_per_trace=3, list_size=4, pool_size=6, max_think_tokens=6)


def test_sample_lists_beam_first_then_distinct_pool_samples() -> None:
    scores = torch.tensor([[-1.0, -2.0, -3.0, -4.0, float("-inf")]])
    lists = sample_lists(scores, 50, 3, 1.0, torch.Generator().manual_seed(0))
    assert lists.shape == (1, 50, 3)
    assert lists[0, 0].tolist() == [0, 1, 2]
    for row in lists[0].tolist():
        assert len(set(row)) == 3 and 4 not in row  # distinct, never the empty slot
    # Plackett-Luce: the best item is listed first more often than the worst.
    firsts = lists[0, 1:, 0]
    assert int((firsts == 0).sum()) > int((firsts == 3).sum())
    # A pool with fewer valid items than K leaves -1 slots.
    short = sample_lists(scores[:, 2:], 2, 3, 1.0)
    assert short[0, 0].tolist() == [0, 1, -1]
    assert sorted(short[0, 1].tolist()) == [-1, 0, 1]


def test_rollout_shapes_and_rewards(world, make_reasoner: Callable[..., Reasoner]) -> None:
    reasoner = make_reasoner()
    prompts = world.prompts[:3]
    ro = rollout(
        reasoner, prompts, trie=world.trie, codes=world.codes, config=CFG, reward=RewardConfig(),
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    assert ro.num_rows == 6 and ro.num_prompts == 3
    assert ro.prompt_index.tolist() == [0, 0, 1, 1, 2, 2]
    assert ro.lists.shape == (6, 3, 4) and ro.pool_items.shape == (6, 6)
    assert ro.rewards.total.shape == (6, 3)
    assert all(len(t) <= 6 for t in ro.thought_ids)
    # List 0 is the beam's own top K; every listed item comes from the trace's pool.
    assert (ro.lists[:, 0] == torch.arange(4)).all()
    for r in range(6):
        pool = set(ro.pool_items[r].tolist())
        assert set(ro.list_items[r].reshape(-1).tolist()) <= pool
    pairs = zip(ro.targets, ro.list_items, strict=True)
    hits = np.array([[t in row for row in lists] for t, lists in pairs])
    assert (hits == ro.rewards.is_hit).all()
    assert ro.group_rewards().shape == (3, 2, 3) and ro.group_hit().shape == (3,)


def test_rollout_rejects_non_thinking_prompts(world, make_reasoner) -> None:
    plain = with_thinking(world.prompts[:1], world.codes, world.dataset.catalog, thinking=False)
    with pytest.raises(DataError, match="thinking prompt"):
        rollout(make_reasoner(), plain, trie=world.trie, codes=world.codes, config=CFG,
                reward=RewardConfig())  # fmt: skip


def test_scoring_matches_full_sequence_forward(world, make_reasoner) -> None:
    reasoner = make_reasoner(seed=1)
    tok = reasoner.tokenizer
    ro = rollout(
        reasoner, world.prompts[:3], trie=world.trie, codes=world.codes, config=CFG,
        reward=RewardConfig(), generator=torch.Generator().manual_seed(1),
    )  # fmt: skip
    close = token_ids(tok, ["</think>", "<answer>"])
    offsets = torch.from_numpy(sid_offsets_of(tok, world.trie.level_sizes))
    batch = scoring_batch(ro, int(tok.pad_token_id), close)
    lp = score_tokens(reasoner.model, batch, offsets)
    # The pool items' summed SID log-probs are the beam search's own scores.
    valid = ro.pool_items >= 0
    torch.testing.assert_close(lp.items.sum(-1)[valid], ro.pool_scores[valid], atol=1e-4, rtol=0)
    for row, w in [(1, 2), (4, 0)]:
        seq = ro.prompt_ids[row] + ro.thought_ids[row] + close
        seq += (offsets + ro.pool_sids[row, w]).tolist()
        with torch.no_grad():
            full = torch.log_softmax(reasoner.model(torch.tensor([seq])).logits[0].float(), -1)
        n0, nt = len(ro.prompt_ids[row]), len(ro.thought_ids[row]) + int(ro.stopped[row])
        want = [full[n0 + j - 1, seq[n0 + j]] for j in range(nt)]
        torch.testing.assert_close(lp.reason[row, :nt], torch.stack(want), atol=1e-4, rtol=0)
        base = len(seq) - 3
        items = torch.stack([full[base + lv - 1, seq[base + lv]] for lv in range(3)])
        torch.testing.assert_close(lp.items[row, w], items, atol=1e-4, rtol=0)
    # A row subset scores the same (left padding trimmed) and gradients reach the weights.
    rows = torch.tensor([1, 3])
    sub = score_tokens(reasoner.model, batch.select(rows), offsets)
    torch.testing.assert_close(sub.items.detach(), lp.items[rows].detach(), atol=1e-4, rtol=0)
    torch.testing.assert_close(sub.reason.detach(), lp.reason[rows].detach(), atol=1e-4, rtol=0)
    (sub.items.sum() + sub.reason.sum()).backward()
    grad = reasoner.model.get_input_embeddings().weight.grad
    assert grad is not None and float(grad.abs().sum()) > 0


def test_build_prompts_parts_and_domains(world) -> None:
    cat = world.dataset.catalog
    train = build_prompts(world.split, cat, world.codes, part="train", max_history=3)
    test = build_prompts(world.split, cat, world.codes, part="test", max_history=3)
    video = build_prompts(world.split, cat, world.codes, part="valid", domain="video")
    assert all(p.prompt.endswith("<think>") for p in train) and len(test) == len(world.split)
    assert all(len(p.history) <= 3 for p in train + test)
    assert video and all(cat.domains[p.target] == "video" for p in video)
    # The test prompt's history ends with the valid target; the target is the test item.
    u = test[0].user
    assert test[0].history[-1] == world.split.valid_targets[u]
    assert test[0].target == world.split.test_targets[u]
