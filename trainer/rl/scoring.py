"""Log-probabilities of rollouts under a model: the reasoning tokens and the item (SID) tokens.

One forward over each trace's context (`bos + prompt + thought + </think><answer>`, left
padded) gives the log-probability of every thought token (and of the `</think>` the model
wrote itself when it stopped before the budget). `lm_head` runs only on those positions and
on the last one, whose distribution scores the first SID level of every pool item.

The deeper SID levels of the W pool items share the context: the decoder's KV cache of the
context is expanded to R × W rows (`index_select`, which autograd follows) and the first
L-1 SID tokens of each item are run as a short continuation, one row per item. So a trace's
context is encoded once however many items it is scored on, and gradients reach the context
through the cache. Log-probabilities are over the full vocabulary — the same normalization as
the constrained beam search's scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from sid_index.errors import ConfigError
from trainer.rl.rollout import Rollouts, left_pad


@dataclass(frozen=True, slots=True)
class ScoringBatch:
    """What scoring needs of a set of trace rows, batch-first."""

    input_ids: torch.Tensor
    """(R, T) int64 left-padded context ids (prompt + thought + `</think><answer>`)."""
    attention_mask: torch.Tensor
    """(R, T) int64 1 on real tokens."""
    reason_pos: torch.Tensor
    """(R, Tr) int64 position whose logits predict each reasoning token (0 in padding)."""
    reason_tokens: torch.Tensor
    """(R, Tr) int64 the reasoning tokens (thought [+ `</think>`])."""
    reason_mask: torch.Tensor
    """(R, Tr) bool: a real reasoning token."""
    pool_sids: torch.Tensor
    """(R, W, L) int64 SID codes of each row's pool items; -1 in empty slots."""

    @property
    def pool_valid(self) -> torch.Tensor:
        """(R, W) bool: the pool slot holds an item."""
        return self.pool_sids[:, :, 0] >= 0

    def select(self, rows: torch.Tensor) -> ScoringBatch:
        """The batch restricted to trace `rows` (left padding trimmed to the longest row)."""
        mask = self.attention_mask[rows]
        lead = int((mask.sum(dim=1).max()).item())
        cut = mask.shape[1] - lead
        pos = (self.reason_pos[rows] - cut).clamp(min=0)
        return ScoringBatch(
            self.input_ids[rows, cut:], mask[:, cut:], pos, self.reason_tokens[rows],
            self.reason_mask[rows], self.pool_sids[rows],
        )  # fmt: skip

    def to(self, device: torch.device) -> ScoringBatch:
        return ScoringBatch(
            self.input_ids.to(device), self.attention_mask.to(device), self.reason_pos.to(device),
            self.reason_tokens.to(device), self.reason_mask.to(device), self.pool_sids.to(device),
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class TokenLogProbs:
    """Log-probabilities of the action tokens of a scoring batch."""

    reason: torch.Tensor
    """(R, Tr) float32 per reasoning token (0 where masked)."""
    items: torch.Tensor
    """(R, W, L) float32 per SID token of each pool item (0 in empty slots)."""

    def detach(self) -> TokenLogProbs:
        return TokenLogProbs(self.reason.detach(), self.items.detach())

    def select(self, rows: torch.Tensor) -> TokenLogProbs:
        return TokenLogProbs(self.reason[rows], self.items[rows])


def scoring_batch(rollouts: Rollouts, pad_id: int, close_ids: list[int]) -> ScoringBatch:
    """Tensors of every trace row of `rollouts`.

    Args:
        close_ids: the ids of `</think>` and `<answer>` (appended to every thought).
    """
    rows = [
        p + t + close_ids for p, t in zip(rollouts.prompt_ids, rollouts.thought_ids, strict=True)
    ]
    ids, mask = left_pad(rows, pad_id)
    width = ids.shape[1]
    # Reasoning tokens: the thought, plus `</think>` when the model wrote a stop token itself.
    counts = [len(t) + int(s) for t, s in zip(rollouts.thought_ids, rollouts.stopped, strict=True)]
    tr = max(1, max(counts))
    pos = torch.zeros(len(rows), tr, dtype=torch.int64)
    tok = torch.zeros(len(rows), tr, dtype=torch.int64)
    keep = torch.zeros(len(rows), tr, dtype=torch.bool)
    for i, (row, n) in enumerate(zip(rows, counts, strict=True)):
        if n == 0:
            continue
        start = width - len(row) + len(rollouts.prompt_ids[i])  # first thought token
        at = torch.arange(start, start + n)
        pos[i, :n] = at - 1  # the logits at t-1 predict the token at t
        tok[i, :n] = ids[i, at]
        keep[i, :n] = True
    return ScoringBatch(ids, mask, pos, tok, keep, rollouts.pool_sids.clone())


def _needs_full_forward(model: PreTrainedModel) -> bool:
    cfg = model.config
    return bool(getattr(cfg, "final_logit_softcapping", None)) or (
        getattr(cfg, "logit_scale", 1.0) not in (None, 1.0)
    )


def score_tokens(
    model: PreTrainedModel, batch: ScoringBatch, sid_offsets: torch.Tensor
) -> TokenLogProbs:
    """Log-probabilities of the reasoning tokens and of every pool item's SID tokens.

    Runs with gradients unless the caller disables them.

    Args:
        sid_offsets: (L,) token id of code 0 of each SID level.
    """
    if _needs_full_forward(model):
        raise ConfigError(
            f"{model.config.model_type}: heads that rescale logits (soft-capping) are not "
            "supported by RL scoring"
        )
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    ids, mask = batch.input_ids, batch.attention_mask
    rows, _ = ids.shape
    pos = (mask.cumsum(-1) - 1).clamp(min=0)  # (R, T) positions of a left-padded batch
    out = decoder(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True)
    hidden = out.last_hidden_state  # (R, T, H)
    # transformers 5.x names the returned cache `cache`, 4.x `past_key_values`.
    cache = getattr(out, "cache", None)
    cache = out.past_key_values if cache is None else cache
    h = hidden.shape[-1]
    picked = hidden.gather(1, batch.reason_pos[..., None].expand(-1, -1, h))  # (R, Tr, H)
    lp = torch.log_softmax(head(picked).float(), dim=-1)
    reason = lp.gather(2, batch.reason_tokens[..., None])[..., 0]
    reason = reason.masked_fill(~batch.reason_mask, 0.0)  # (R, Tr)

    sids = batch.pool_sids.clamp(min=0)  # (R, W, L); empty slots score code 0, masked below
    _, width, levels = sids.shape
    offsets = sid_offsets.to(ids.device)
    last = torch.log_softmax(head(hidden[:, -1]).float(), dim=-1)  # (R, V)
    first = last.gather(1, offsets[0] + sids[:, :, 0])  # (R, W)
    parts = [first[..., None]]
    if levels > 1:
        parent = torch.arange(rows, device=ids.device).repeat_interleave(width)  # (R·W,)
        cache.reorder_cache(parent)
        steps = offsets[None, : levels - 1] + sids[:, :, : levels - 1].reshape(-1, levels - 1)
        ext = torch.ones(rows * width, levels - 1, dtype=mask.dtype, device=ids.device)
        branch_mask = torch.cat([mask[parent], ext], dim=1)
        next_pos = pos[parent, -1:] + 1 + torch.arange(levels - 1, device=ids.device)
        branch = decoder(
            input_ids=steps,
            attention_mask=branch_mask,
            position_ids=next_pos,
            cache=cache,
            use_cache=True,
        ).last_hidden_state  # (R·W, L-1, H)
        lp_rest = torch.log_softmax(head(branch).float(), dim=-1)  # (R·W, L-1, V)
        targets = offsets[None, 1:] + sids[:, :, 1:].reshape(-1, levels - 1)
        parts.append(lp_rest.gather(2, targets[..., None])[..., 0].view(rows, width, levels - 1))
    items = torch.cat(parts, dim=2).masked_fill(~batch.pool_valid[..., None], 0.0)
    return TokenLogProbs(reason, items)
