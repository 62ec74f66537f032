"""GRPO pieces on hand-made tensors: clipping per token type, clip fractions, non-hit group
down-weighting, the k3 KL."""

from __future__ import annotations

import math

import pytest
import torch

from sid_index.errors import ConfigError
from trainer.rl.grpo import GRPOConfig, clipped_surrogate, group_advantages, grpo_loss, k3_kl
from trainer.rl.scoring import TokenLogProbs


def test_clipped_surrogate_values_and_clip_mask() -> None:
    ratio = torch.tensor([1.5, 1.5, 0.5, 0.5, 1.05])
    adv = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    old = torch.zeros(5)
    loss, clipped = clipped_surrogate(torch.log(ratio), old, adv, 0.2)
    # A > 0 caps the gain at 1.2; A < 0 with r < 0.8 caps the loss reduction at 0.8.
    torch.testing.assert_close(loss, torch.tensor([-1.2, 1.5, -0.5, 0.8, -1.05]))
    assert clipped.tolist() == [True, False, False, True, False]


def test_clipped_tokens_get_no_gradient() -> None:
    logp = torch.log(torch.tensor([1.5, 1.05])).requires_grad_(True)
    loss, _ = clipped_surrogate(logp, torch.zeros(2), torch.ones(2), 0.2)
    loss.sum().backward()
    assert logp.grad is not None
    assert logp.grad[0] == 0.0 and logp.grad[1] == pytest.approx(-1.05)


def test_k3_kl() -> None:
    logp = torch.tensor([-1.0, -2.0, -0.5])
    ref = torch.tensor([-1.0, -1.0, -1.5])
    d = ref - logp
    torch.testing.assert_close(k3_kl(logp, ref), torch.exp(d) - d - 1)
    assert k3_kl(logp, ref)[0] == 0.0 and bool((k3_kl(logp, ref) >= 0).all())


def test_group_advantages_normalize_and_down_weight_groups_without_a_hit() -> None:
    rewards = torch.tensor(
        [
            [[1.0, 0.0], [0.0, 0.0]],  # prompt 0: a hit somewhere
            [[0.3, 0.1], [0.2, 0.2]],  # prompt 1: no hit (coverage/diversity only)
        ]
    )  # (P=2, G=2, M=2)
    cfg = GRPOConfig(miss_weight=0.25, std_eps=1e-8)
    adv = group_advantages(rewards, torch.tensor([True, False]), cfg)
    # prompt 0: mean 0.25, std sqrt(3)/4
    z0 = torch.tensor([0.75, -0.25, -0.25, -0.25]) / (math.sqrt(3) / 4)
    z1 = torch.tensor([0.1, -0.1, 0.0, 0.0]) / math.sqrt(0.005)
    torch.testing.assert_close(adv.lists, torch.stack([z0, 0.25 * z1]).view(4, 2))
    torch.testing.assert_close(adv.traces, adv.lists.mean(dim=1))
    torch.testing.assert_close(adv.weights, torch.tensor([1.0, 1.0, 0.25, 0.25]))
    # A constant group gets zero advantages, not NaN.
    flat = group_advantages(torch.ones(1, 2, 3), torch.tensor([True]), cfg)
    assert bool((flat.lists == 0).all())


def _batch(reason_ratio: float, item_ratio: float) -> tuple[TokenLogProbs, TokenLogProbs]:
    """One trace: 3 reasoning tokens, a pool of 2 items × 2 SID levels."""
    old = TokenLogProbs(torch.full((1, 3), -1.0), torch.full((1, 2, 2), -2.0))
    new = TokenLogProbs(old.reason + math.log(reason_ratio), old.items + math.log(item_ratio))
    return new, old


def test_reasoning_and_item_tokens_are_clipped_with_their_own_range() -> None:
    cfg = GRPOConfig(clip_reason=0.2, clip_item=0.1, kl_coef=0.0)
    lists = torch.tensor([[[0, 1], [1, -1]]])  # 2 lists: items {0, 1} and {1}
    mask = torch.tensor([[True, True, False]])
    adv = group_advantages(torch.tensor([[[1.0, 0.0]]]), torch.tensor([True]), cfg)
    # ratio 1.15 on every token: outside the item range (1.1), inside the reasoning one (1.2)
    new, old = _batch(1.15, 1.15)
    parts = grpo_loss(new, old, None, mask, lists, adv, cfg)
    assert parts.clip_frac_reason == 0.0
    assert parts.clip_frac_item == pytest.approx(2 / 3)  # list 0's 4 tokens (A>0) of 6
    # ratio 1.25: both ranges are exceeded where the advantage is positive; list 1 has A < 0
    # (never clipped above 1+c) and the trace's mean advantage is 0.
    new, old = _batch(1.25, 1.25)
    parts = grpo_loss(new, old, None, mask, lists, adv, cfg)
    assert parts.clip_frac_reason == 0.0
    assert parts.clip_frac_item == pytest.approx(2 / 3)
    a = float(adv.lists[0, 0])  # +1, -1 after normalization
    # Loss: items of list 0 capped at 1.1·A, list 1 (A < 0) unclipped 1.25·A; reasoning A = 0.
    expected = -(4 * 1.1 * a + 2 * 1.25 * -a) / (2 + 6)
    assert parts.pg == pytest.approx(expected, rel=1e-5)
    assert parts.ratio_mean == pytest.approx(1.25, rel=1e-5)


@pytest.mark.parametrize(
    ("ratio", "reason_frac", "item_frac"),
    [(1.05, 0.0, 0.0), (1.15, 0.0, 0.5), (1.3, 0.5, 0.5), (0.85, 0.0, 0.5), (0.7, 0.5, 0.5)],
)
def test_clip_fractions_per_token_type(ratio: float, reason_frac: float, item_frac: float) -> None:
    """Two traces of one prompt (A = +1 and -1), every token at the same ratio: a ratio
    between the item range (0.1) and the reasoning range (0.2) clips item tokens only."""
    cfg = GRPOConfig(clip_reason=0.2, clip_item=0.1, kl_coef=0.0)
    lists = torch.tensor([[[0, 1]], [[0, 1]]])
    mask = torch.ones(2, 3, dtype=torch.bool)
    adv = group_advantages(torch.tensor([[[1.0], [0.0]]]), torch.tensor([True]), cfg)
    old = TokenLogProbs(torch.full((2, 3), -1.0), torch.full((2, 2, 2), -2.0))
    new = TokenLogProbs(old.reason + math.log(ratio), old.items + math.log(ratio))
    parts = grpo_loss(new, old, None, mask, lists, adv, cfg)
    # Only the trace whose advantage pushes the ratio further out is clipped: A > 0 above 1+c,
    # A < 0 below 1-c.
    assert parts.clip_frac_reason == pytest.approx(reason_frac)
    assert parts.clip_frac_item == pytest.approx(item_frac)


def test_kl_term_and_miss_weight_scale_the_loss() -> None:
    lists = torch.tensor([[[0, 1]], [[1, 0]]])
    mask = torch.ones(2, 2, dtype=torch.bool)
    rewards = torch.tensor([[[0.4], [0.2]]])
    old = TokenLogProbs(torch.full((2, 2), -1.0), torch.full((2, 2, 1), -2.0))
    ref = TokenLogProbs(torch.full((2, 2), -1.5), torch.full((2, 2, 1), -2.5))
    hit = GRPOConfig(kl_coef=0.0, miss_weight=0.5)
    full = grpo_loss(
        old, old, None, mask, lists, group_advantages(rewards, torch.tensor([True]), hit), hit
    )
    miss = grpo_loss(
        old, old, None, mask, lists, group_advantages(rewards, torch.tensor([False]), hit), hit
    )
    assert miss.pg == pytest.approx(0.5 * full.pg)
    cfg = GRPOConfig(kl_coef=0.1)
    adv = group_advantages(rewards, torch.tensor([True]), cfg)
    parts = grpo_loss(old, old, ref, mask, lists, adv, cfg)
    d = -0.5
    assert parts.kl == pytest.approx(math.exp(d) - d - 1, rel=1e-5)
    assert float(parts.loss) == pytest.approx(parts.pg + 0.1 * parts.kl, rel=1e-5)


@pytest.mark.parametrize(
    "kwargs", [{"clip_reason": 0.0}, {"clip_item": 1.0}, {"miss_weight": 1.5}, {"kl_coef": -1}]
)
def test_grpo_config_validation(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        GRPOConfig(**kwargs)  # type: ignore[arg-type]
