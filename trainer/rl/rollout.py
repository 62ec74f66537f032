"""Two-stage rollouts: G sampled thoughts per prompt, M candidate item lists per thought.

Stage 1 samples G reasoning traces per thinking prompt (temperature / top-p over the thought,
`trainer.reasoner.generate.complete`, KV-cached). Every trace is closed with
`</think><answer>` exactly as at inference.

Stage 2 expands each trace into M candidate lists of K items, which multiplies the
trajectories a single (expensive) thought yields. A trie-constrained beam search of width W
(`fast_path.beam_search`) gives each trace a *pool* of W distinct catalogue items with their
summed SID log-probabilities; then

- list 0 is the beam's own top K (what inference would answer), and
- lists 1..M-1 are Plackett-Luce samples without replacement from the pool: the top K of
  `score / list_temperature + Gumbel noise` (Gumbel-top-k), so better-scored items appear
  more often and earlier, and the lists differ in membership and order.

Every list is scored with the set-wise reward (`trainer.rl.rewards`). Rows of the returned
`Rollouts` are traces, prompt-major (row = prompt * G + g).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fast_path.beam_search import BeamSearchConfig, constrained_beam_search
from sid_index.codes import format_sid
from sid_index.errors import ConfigError, DataError
from sid_index.trie import SIDTrie
from slow_path import cot_format
from trainer.reasoner.generate import complete, model_step_for, sid_offsets_of
from trainer.reasoner.model import Reasoner
from trainer.reasoner.sft_data import encode_prompts
from trainer.reasoner.tokenizer import decode, token_ids
from trainer.rl.prompts import RLPrompt
from trainer.rl.rewards import (
    RewardBreakdown,
    RewardConfig,
    format_score,
    history_interests,
    score_lists,
    trace_interests,
)


@dataclass(frozen=True, slots=True)
class RolloutConfig:
    """How many trajectories a prompt yields and how they are sampled."""

    group_size: int = 4
    """G: sampled thoughts per prompt (the GRPO group is G × M lists)."""
    lists_per_trace: int = 4
    """M: candidate lists per thought (list 0 = the beam's top K, the rest sampled)."""
    list_size: int = 10
    """K: items per candidate list."""
    pool_size: int = 20
    """W: beam width; the lists are drawn from these W items (>= K)."""
    temperature: float = 1.0
    """Thought sampling temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus mass of thought sampling."""
    list_temperature: float = 1.0
    """Temperature of the Plackett-Luce list sampling over the pool's log-probabilities."""
    max_think_tokens: int = 128
    """Thought budget; a trace cut here is closed like at inference."""
    batch_size: int = 32
    """Trace rows decoded together."""

    def __post_init__(self) -> None:
        for name in ("group_size", "lists_per_trace", "list_size", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.pool_size < self.list_size:
            raise ConfigError(f"{self.pool_size=} must be >= {self.list_size=}")
        if not (self.temperature > 0 and self.list_temperature > 0):
            raise ConfigError(f"{self.temperature=} and {self.list_temperature=} must be > 0")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"{self.top_p=} must be in (0, 1]")
        if self.max_think_tokens < 1:
            raise ConfigError(f"{self.max_think_tokens=} must be >= 1")


@dataclass
class Rollouts:
    """G traces per prompt with their item pools, M lists each, and the lists' rewards."""

    group_size: int
    """G."""
    prompt_index: np.ndarray
    """(R,) int64 prompt of each trace row (R = P × G, prompt-major)."""
    targets: np.ndarray
    """(R,) int64 true next item of each row's prompt."""
    prompt_ids: list[list[int]]
    """Per row, `bos + prompt` token ids."""
    thought_ids: list[list[int]]
    """Per row, the sampled thought tokens (without the stop token)."""
    stopped: np.ndarray
    """(R,) bool: the thought ended with a stop token (False: cut at the budget)."""
    pool_items: torch.Tensor
    """(R, W) int64 catalogue indices of the beam pool, best first; -1 = empty."""
    pool_sids: torch.Tensor
    """(R, W, L) int64 their SID codes; -1 in empty slots."""
    pool_scores: torch.Tensor
    """(R, W) float32 summed SID log-probabilities; -inf in empty slots."""
    lists: torch.Tensor
    """(R, M, K) int64 pool positions of each list's items, best first; -1 = empty."""
    list_items: np.ndarray
    """(R, M, K) int64 catalogue indices of each list's items; -1 = empty."""
    rewards: RewardBreakdown
    """Per list, (R, M) arrays."""

    @property
    def num_rows(self) -> int:
        return len(self.prompt_ids)

    @property
    def num_prompts(self) -> int:
        return self.num_rows // self.group_size

    def group_rewards(self) -> torch.Tensor:
        """(P, G, M) float32 total rewards grouped by prompt."""
        r = torch.from_numpy(self.rewards.total).float()
        return r.view(self.num_prompts, self.group_size, -1)

    def group_hit(self) -> torch.Tensor:
        """(P,) bool: some list of some trace of the prompt contains its true next item."""
        hit = torch.from_numpy(self.rewards.is_hit)
        return hit.view(self.num_prompts, -1).any(dim=1)

    def think_lengths(self) -> np.ndarray:
        """(R,) thought lengths in tokens."""
        return np.asarray([len(t) for t in self.thought_ids], dtype=np.int64)


def left_pad(
    rows: Sequence[Sequence[int]], pad_id: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, T) left-padded int64 ids and 0/1 attention mask of token rows."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.int64)
    mask = torch.zeros((len(rows), width), dtype=torch.int64)
    for i, r in enumerate(rows):
        if r:
            ids[i, width - len(r) :] = torch.tensor(list(r), dtype=torch.int64)
            mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def sample_lists(
    pool_scores: torch.Tensor,
    num_lists: int,
    list_size: int,
    temperature: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(R, W) pool scores → (R, M, K) pool positions: the beam's top K, then M-1 Gumbel-top-K
    (Plackett-Luce without replacement) samples; -1 where the pool has fewer valid items."""
    rows, width = pool_scores.shape
    valid = torch.isfinite(pool_scores)
    order = torch.arange(list_size).clamp(max=width - 1).expand(rows, list_size)
    first = torch.where(valid.gather(1, order), order, -1)[:, None]  # (R, 1, K)
    if num_lists == 1:
        return first
    u = torch.rand(rows, num_lists - 1, width, generator=generator).clamp_(1e-12, 1 - 1e-7)
    keys = pool_scores[:, None, :] / temperature - torch.log(-torch.log(u))  # + Gumbel
    keys = keys.masked_fill(~valid[:, None, :], float("-inf"))
    top, idx = keys.topk(min(list_size, width), dim=2)  # (R, M-1, K')
    idx = torch.where(torch.isfinite(top), idx, -1)
    if idx.shape[2] < list_size:
        idx = torch.nn.functional.pad(idx, (0, list_size - idx.shape[2]), value=-1)
    return torch.cat([first, idx], dim=1)


@torch.no_grad()
def rollout(
    reasoner: Reasoner,
    prompts: Sequence[RLPrompt],
    *,
    trie: SIDTrie,
    codes: np.ndarray,
    config: RolloutConfig,
    reward: RewardConfig,
    generator: torch.Generator | None = None,
) -> Rollouts:
    """Sample G thoughts per thinking prompt, expand each into M lists and score them.

    Args:
        codes: (N, L) catalogue SID codes (history interests for the coverage reward).
        generator: RNG of thought and list sampling (seed it for reproducible runs).
    """
    if not prompts:
        raise DataError("rollout needs at least one prompt")
    bad = [i for i, p in enumerate(prompts) if not p.prompt.endswith(cot_format.THINK)]
    if bad:
        raise DataError(f"prompt {bad[0]} is not a thinking prompt (it must end with <think>)")
    model, tokenizer = reasoner.model, reasoner.tokenizer
    g = config.group_size
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        rows = [r for r in encode_prompts(tokenizer, [p.prompt for p in prompts]) for _ in range(g)]
        stops = token_ids(tokenizer, [cot_format.THINK_END, cot_format.ANSWER])
        thoughts: list[list[int]] = []
        cut: list[bool] = []
        for lo in range(0, len(rows), config.batch_size):
            t, c = complete(
                model, tokenizer, rows[lo : lo + config.batch_size],
                max_new_tokens=config.max_think_tokens, stop_ids=stops,
                temperature=config.temperature, top_p=config.top_p, generator=generator,
            )  # fmt: skip
            thoughts += t
            cut += c
        contexts = [r + t + stops for r, t in zip(rows, thoughts, strict=True)]
        items, sids, scores = _pools(model, tokenizer, contexts, trie, config, device)
    finally:
        model.train(was_training)
    lists = sample_lists(
        scores, config.lists_per_trace, config.list_size, config.list_temperature, generator
    )
    r, m, k = lists.shape
    flat = lists.clamp(min=0).view(r, m * k)
    list_items = torch.where(lists >= 0, items.gather(1, flat).view(r, m, k), -1)
    list_sids = torch.where(
        (lists >= 0)[..., None],
        sids.gather(1, flat[..., None].expand(-1, -1, sids.shape[2])).view(r, m, k, -1),
        -1,
    )  # (R, M, K, L)
    level_sizes = tuple(trie.level_sizes)
    vocab_personas = reasoner.vocab.num_personas
    texts = [
        decode(tokenizer, t, skip_special=False)
        + cot_format.THINK_END
        + cot_format.ANSWER
        + (format_sid(sids[i, 0].tolist()) + cot_format.ANSWER_END if items[i, 0] >= 0 else "")
        for i, t in enumerate(thoughts)
    ]
    parsed = [
        cot_format.parse_completion(t, level_sizes=level_sizes, num_personas=vocab_personas)
        for t in texts
    ]
    prompt_index = np.repeat(np.arange(len(prompts)), g)
    targets = np.asarray([prompts[i].target for i in prompt_index.tolist()], dtype=np.int64)
    if reward.interest_source == "trace":
        interests = trace_interests(parsed, len(level_sizes))  # (R, I, L)
    else:
        per_prompt = history_interests(
            [p.history for p in prompts], codes, depth=reward.interest_depth,
            top=reward.max_interests,
        )  # fmt: skip
        interests = per_prompt[prompt_index]
    breakdown = score_lists(
        list_items.view(r * m, k).numpy(),
        list_sids.view(r * m, k, -1).numpy(),
        np.repeat(targets, m),
        np.repeat(interests, m, axis=0),
        np.repeat(format_score(parsed), m),
        reward,
    )
    shaped = RewardBreakdown(
        *(
            getattr(breakdown, f).reshape(r, m)
            for f in ("total", "hit", "coverage", "diversity", "format")
        )
    )
    return Rollouts(
        group_size=g,
        prompt_index=prompt_index,
        targets=targets,
        prompt_ids=rows,
        thought_ids=thoughts,
        stopped=~np.asarray(cut, dtype=bool),
        pool_items=items,
        pool_sids=sids,
        pool_scores=scores,
        lists=lists,
        list_items=list_items.numpy(),
        rewards=shaped,
    )


def _pools(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    contexts: Sequence[Sequence[int]],
    trie: SIDTrie,
    config: RolloutConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Trie-constrained beam pools of W items after every context (closed thought)."""
    offsets = sid_offsets_of(tokenizer, trie.level_sizes)
    step = model_step_for(model)
    beam = BeamSearchConfig(config.pool_size, config.pool_size)
    parts = []
    for lo in range(0, len(contexts), config.batch_size):
        ids, mask = left_pad(
            contexts[lo : lo + config.batch_size], int(tokenizer.pad_token_id), device
        )
        res = constrained_beam_search(step, ids, mask, trie, offsets, beam)
        parts.append((res.items.cpu(), res.sids.cpu(), res.scores.float().cpu()))
    return (
        torch.cat([p[0] for p in parts]),
        torch.cat([p[1] for p in parts]),
        torch.cat([p[2] for p in parts]),
    )
