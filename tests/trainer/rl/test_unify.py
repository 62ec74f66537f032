"""Specialize-then-unify on two tiny experts: RFT and MOPD each give a student that moves
towards every expert on that expert's own domain."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from sid_index.codes import format_sid
from sid_index.errors import ConfigError, DataError
from trainer.reasoner.completion_loss import CompletionLoss
from trainer.reasoner.generate import sid_offsets_of
from trainer.reasoner.model import Reasoner
from trainer.reasoner.sft import SFTTrainConfig
from trainer.reasoner.sft_data import collate, tokenize_samples
from trainer.reasoner.tokenizer import token_ids
from trainer.rl.rewards import RewardConfig
from trainer.rl.rollout import RolloutConfig, rollout
from trainer.rl.unify import (
    MOPDConfig,
    RFTConfig,
    RFTSample,
    action_batch,
    action_log_probs,
    collect_rft_samples,
    reverse_kl,
    train_mopd,
    train_rft,
)

DOMAINS = ("video", "ecommerce")


def _experts(make_reasoner) -> dict[str, Reasoner]:
    # Two "experts" that disagree: different random weights over the same vocabulary.
    return {"video": make_reasoner(seed=11), "ecommerce": make_reasoner(seed=12)}


def _by_domain(world):
    return {d: [p for p in world.prompts if p.domain == d][:6] for d in DOMAINS}


@torch.no_grad()
def _nll(reasoner: Reasoner, samples: list[RFTSample]) -> float:
    data = tokenize_samples(reasoner.tokenizer, samples, 256)
    batch = collate(data, [[i] for i in range(len(data))], int(reasoner.tokenizer.pad_token_id),
                    packing=False)  # fmt: skip
    return float(CompletionLoss(reasoner.model)(batch)) / batch.num_label_tokens


@torch.no_grad()
def _reverse_kl(student: Reasoner, expert: Reasoner, prompts, world) -> float:
    """Mean KL(student ‖ expert) over the student's own (seeded) samples."""
    cfg = RolloutConfig(group_size=2, lists_per_trace=1, list_size=1, pool_size=1,
                        max_think_tokens=4)  # fmt: skip
    ro = rollout(student, prompts, trie=world.trie, codes=world.codes, config=cfg,
                 reward=RewardConfig(), generator=torch.Generator().manual_seed(99))  # fmt: skip
    tok = student.tokenizer
    ab = action_batch(ro, int(tok.pad_token_id), token_ids(tok, ["</think>", "<answer>"]),
                      sid_offsets_of(tok, world.trie.level_sizes))  # fmt: skip
    kl = reverse_kl(action_log_probs(student.model, ab), action_log_probs(expert.model, ab))
    return float((kl * ab.action_mask).sum() / ab.action_mask.sum())


def test_rft_keeps_hits_only_and_writes_the_true_item(world, make_reasoner) -> None:
    expert = make_reasoner(seed=11)
    prompts = world.prompts[:8]
    cfg = RFTConfig(samples_per_prompt=3, list_size=8, max_think_tokens=4, require_hit=True)
    kept = collect_rft_samples(expert, prompts, world.trie, world.codes, cfg)
    loose = collect_rft_samples(
        expert,
        prompts,
        world.trie,
        world.codes,
        dataclasses.replace(cfg, require_hit=False),
    )
    assert len(loose) == len(prompts) and len(kept) <= len(prompts)
    by_prompt = {p.prompt: p for p in prompts}
    for s in kept + loose:
        target = by_prompt[s.prompt].target
        assert s.completion.endswith(
            "</think><answer>" + format_sid(world.codes[target]) + "</answer>"
        )
        assert s.thinking and s.domain == by_prompt[s.prompt].domain
    assert all(s.reward >= RewardConfig().hit_weight * 0.29 for s in kept)  # a hit in the top 8


@pytest.mark.slow
def test_rft_student_moves_towards_each_expert(world, make_reasoner, tmp_path: Path) -> None:
    experts = _experts(make_reasoner)
    cfg = RFTConfig(samples_per_prompt=2, list_size=4, max_think_tokens=4, require_hit=False)
    data = {
        d: collect_rft_samples(experts[d], ps, world.trie, world.codes, cfg)
        for d, ps in _by_domain(world).items()
    }
    student = make_reasoner(seed=0)
    before = {d: _nll(student, s) for d, s in data.items()}
    sft = SFTTrainConfig(epochs=4, batch_size=4, lr=3e-3, lr_warmup_steps=0, max_length=256,
                         log_every=2)  # fmt: skip
    res = train_rft(student, data["video"] + data["ecommerce"], sft, tmp_path)
    after = {d: _nll(student, s) for d, s in data.items()}
    assert res.num_samples == 12
    for d in DOMAINS:
        assert after[d] < 0.8 * before[d], (d, before, after)


@pytest.mark.slow
def test_mopd_student_moves_towards_each_expert(world, make_reasoner, tmp_path: Path) -> None:
    experts = _experts(make_reasoner)
    prompts = _by_domain(world)
    student = make_reasoner(seed=0)
    before = {d: _reverse_kl(student, experts[d], prompts[d], world) for d in DOMAINS}
    cfg = MOPDConfig(steps=12, prompts_per_step=8, max_think_tokens=4, lr=3e-3, eval_every=0,
                     save_every=0)  # fmt: skip
    res = train_mopd(student, experts, prompts["video"] + prompts["ecommerce"], world.trie,
                     world.codes, cfg, tmp_path)  # fmt: skip
    after = {d: _reverse_kl(student, experts[d], prompts[d], world) for d in DOMAINS}
    for d in DOMAINS:
        assert after[d] < 0.7 * before[d], (d, before, after)
    per_domain = [h for h in res.history if "mopd/reverse_kl/video" in h]
    assert len(per_domain) == 12 and "mopd/reverse_kl/ecommerce" in per_domain[0]
    assert (tmp_path / "final" / "config.json").is_file()


def test_unify_inputs_are_checked(world, make_reasoner, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no samples"):
        train_rft(make_reasoner(), [], SFTTrainConfig(), tmp_path)
    with pytest.raises(ConfigError):
        MOPDConfig(steps=0)
    with pytest.raises(DataError, match="domains"):
        train_mopd(make_reasoner(), {"ads": make_reasoner()}, world.prompts[:2], world.trie,
                   world.codes, MOPDConfig(steps=1), tmp_path)  # fmt: skip
