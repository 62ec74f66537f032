"""The GRPO objective of the reasoner, adapted to set-wise recommendation.

A prompt's group is its G × M trajectories (thought g, list m). Advantages are group-relative:
`A_gm = (r_gm - mean) / (std + eps)` over the group. The tokens a trajectory chose are

- the reasoning tokens of its thought — shared by the M lists of that thought, so they take
  the mean advantage of those lists (the same gradient as counting the thought once per
  trajectory, scaled by 1/M);
- the item tokens: the L SID tokens of each of its K items, with the list's own advantage.

The surrogate is PPO's clipped ratio objective per token against the rollout policy, with
SEPARATE clip ranges: reasoning tokens are free text and tolerate larger steps
(`clip_reason`), item tokens move the ranking directly and get a tighter range (`clip_item`).
Groups in which no list hits the true next item carry only a ranking signal from coverage,
diversity and format, so their advantages are multiplied by `miss_weight` (< 1).
A k3 estimate of KL(policy ‖ SFT reference), `exp(ref - logp) - (ref - logp) - 1`, over the
reasoning tokens and the SID tokens of the listed items keeps the policy near the reference.

The loss is a token mean (DAPO style): long thoughts are not down-weighted per token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sid_index.errors import ConfigError, DataError
from trainer.rl.scoring import TokenLogProbs


@dataclass(frozen=True, slots=True)
class GRPOConfig:
    """Clip ranges, non-hit down-weighting and KL of the policy update."""

    clip_reason: float = 0.2
    """PPO clip range of reasoning tokens: ratios outside [1-c, 1+c] stop pulling."""
    clip_item: float = 0.1
    """PPO clip range of item (SID) tokens."""
    miss_weight: float = 0.3
    """Advantage multiplier of groups in which no candidate list hits the true next item."""
    kl_coef: float = 0.02
    """Weight of the k3 KL estimate to the frozen reference (0: no reference needed)."""
    std_eps: float = 1e-4
    """Added to the group's reward std before dividing (a constant group gets A = 0)."""
    item_weight: float = 1.0
    """Weight of the item-token surrogate relative to the reasoning-token surrogate."""

    def __post_init__(self) -> None:
        for name in ("clip_reason", "clip_item"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in (0, 1)")
        if not 0.0 <= self.miss_weight <= 1.0:
            raise ConfigError(f"{self.miss_weight=} must be in [0, 1]")
        if self.kl_coef < 0 or self.item_weight < 0:
            raise ConfigError(f"{self.kl_coef=} and {self.item_weight=} must be >= 0")
        if not self.std_eps > 0:
            raise ConfigError(f"{self.std_eps=} must be > 0")


@dataclass(frozen=True, slots=True)
class Advantages:
    """Per-trace-row advantages of a rollout batch (rows prompt-major, as in `Rollouts`)."""

    lists: torch.Tensor
    """(R, M) advantage of each list (down-weighted in non-hit groups)."""
    traces: torch.Tensor
    """(R,) advantage of each thought: the mean over its lists."""
    weights: torch.Tensor
    """(R,) the group weight applied (1, or miss_weight for a non-hit group)."""

    def select(self, rows: torch.Tensor) -> Advantages:
        return Advantages(self.lists[rows], self.traces[rows], self.weights[rows])

    def to(self, device: torch.device) -> Advantages:
        return Advantages(self.lists.to(device), self.traces.to(device), self.weights.to(device))


@dataclass(frozen=True, slots=True)
class LossParts:
    """The loss of one minibatch and what the metrics log reports of it."""

    loss: torch.Tensor
    """Scalar to backpropagate."""
    pg: float
    """Surrogate part (token mean)."""
    kl: float
    """Mean k3 KL per token (reasoning + listed item tokens)."""
    clip_frac_reason: float
    """Share of reasoning tokens whose clipped term was the active one."""
    clip_frac_item: float
    """Share of item tokens whose clipped term was the active one."""
    ratio_mean: float
    """Mean probability ratio over all action tokens."""


def group_advantages(rewards: torch.Tensor, group_hit: torch.Tensor, cfg: GRPOConfig) -> Advantages:
    """Group-relative advantages.

    Args:
        rewards: (P, G, M) total reward of each list.
        group_hit: (P,) bool, some list of the group contains the true next item.
    """
    if rewards.ndim != 3 or group_hit.shape != rewards.shape[:1]:
        raise DataError(f"rewards {tuple(rewards.shape)} / group_hit {tuple(group_hit.shape)}")
    p, g, m = rewards.shape
    flat = rewards.reshape(p, g * m).float()
    mean = flat.mean(dim=1, keepdim=True)
    std = flat.std(dim=1, keepdim=True, unbiased=False)
    adv = ((flat - mean) / (std + cfg.std_eps)).view(p, g, m)
    weight = torch.where(group_hit, 1.0, cfg.miss_weight)  # (P,)
    adv = adv * weight[:, None, None]
    return Advantages(
        lists=adv.reshape(p * g, m),
        traces=adv.mean(dim=2).reshape(p * g),
        weights=weight.repeat_interleave(g),
    )


def clipped_surrogate(
    logp: torch.Tensor, old_logp: torch.Tensor, adv: torch.Tensor, clip: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's per-token loss `-min(r·A, clip(r, 1-c, 1+c)·A)` and where the clip is active.

    Returns:
        (loss, clipped), both shaped like `logp`; `clipped` is True where the clipped term is
        strictly smaller (the token gets no gradient from the ratio).
    """
    ratio = torch.exp(logp - old_logp)
    plain = ratio * adv
    clipped = torch.clamp(ratio, 1.0 - clip, 1.0 + clip) * adv
    return -torch.minimum(plain, clipped), clipped < plain


def k3_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token k3 estimate of KL(policy ‖ reference) at sampled tokens (>= 0, unbiased)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1.0


def grpo_loss(
    new: TokenLogProbs,
    old: TokenLogProbs,
    ref: TokenLogProbs | None,
    reason_mask: torch.Tensor,
    lists: torch.Tensor,
    adv: Advantages,
    cfg: GRPOConfig,
) -> LossParts:
    """The GRPO loss of a minibatch of trace rows.

    Args:
        new, old, ref: log-probs under the policy being trained, the rollout policy and the
            frozen reference (None when `kl_coef` is 0); reason (R, Tr), items (R, W, L).
        reason_mask: (R, Tr) bool real reasoning tokens.
        lists: (R, M, K) pool positions of each list's items, -1 = empty.
        adv: the rows' advantages.
    """
    r, m, k = lists.shape
    levels = new.items.shape[2]
    # Reasoning tokens: the thought's (mean) advantage on every token.
    a_reason = adv.traces[:, None].expand_as(new.reason)
    pg_r, clip_r = clipped_surrogate(new.reason, old.reason, a_reason, cfg.clip_reason)
    # Item tokens: every (list, item, level) entry, gathered from the pool's log-probs.
    idx = lists.clamp(min=0).view(r, m * k, 1).expand(-1, -1, levels)

    def pick(lp: torch.Tensor) -> torch.Tensor:  # (R, W, L) → (R, M, K, L)
        return lp.gather(1, idx).view(r, m, k, levels)

    item_mask = (lists >= 0)[..., None].expand(-1, -1, -1, levels)
    a_item = adv.lists[:, :, None, None].expand(-1, -1, k, levels)
    pg_i, clip_i = clipped_surrogate(pick(new.items), pick(old.items), a_item, cfg.clip_item)
    n_r = reason_mask.sum()
    n_i = item_mask.sum()
    tokens = (n_r + n_i).clamp(min=1)
    pg = ((pg_r * reason_mask).sum() + cfg.item_weight * (pg_i * item_mask).sum()) / tokens
    # KL on each distinct token once: the reasoning tokens and the SID tokens of pool items
    # that some list used.
    used = torch.zeros(r, new.items.shape[1] + 1, dtype=torch.bool, device=lists.device)
    used.scatter_(1, torch.where(lists >= 0, lists, new.items.shape[1]).view(r, -1), True)
    used_tok = used[:, :-1, None].expand_as(new.items)
    kl = torch.zeros((), device=new.reason.device)
    if ref is not None:
        kl_sum = (k3_kl(new.reason, ref.reason) * reason_mask).sum() + (
            k3_kl(new.items, ref.items) * used_tok
        ).sum()
        kl = kl_sum / (n_r + used_tok.sum()).clamp(min=1)
    elif cfg.kl_coef > 0:
        raise DataError(f"{cfg.kl_coef=} > 0 needs reference log-probs")
    loss = pg + cfg.kl_coef * kl
    with torch.no_grad():
        ratio_sum = (torch.exp(new.reason - old.reason) * reason_mask).sum() + (
            torch.exp(pick(new.items) - pick(old.items)) * item_mask
        ).sum()
    return LossParts(
        loss=loss,
        pg=float(pg.detach()),
        kl=float(kl.detach()),
        clip_frac_reason=float((clip_r & reason_mask).sum() / n_r.clamp(min=1)),
        clip_frac_item=float((clip_i & item_mask).sum() / n_i.clamp(min=1)),
        ratio_mean=float(ratio_sum / tokens),
    )
