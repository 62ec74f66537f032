"""The RL loop on a planted task: a tiny random reasoner learns to list each prompt's target."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sid_index.errors import ConfigError
from trainer.reasoner.model import is_reasoner_dir, load_reasoner
from trainer.rl.grpo import GRPOConfig
from trainer.rl.rewards import RewardConfig
from trainer.rl.rollout import RolloutConfig
from trainer.rl.train_rl import RLTrainConfig, recall_evaluator, train_rl


def _cfg(steps: int, **kw: object) -> RLTrainConfig:
    base: dict[str, object] = dict(
        steps=steps, prompts_per_step=4, minibatch_rows=16, lr=3e-3, eval_every=0,
        save_every=0, seed=0,
        rollout=RolloutConfig(
            group_size=4, lists_per_trace=4, list_size=8, pool_size=16, max_think_tokens=4
        ),
        grpo=GRPOConfig(kl_coef=0.02),
        reward=RewardConfig(coverage_weight=0.5, diversity_weight=0.0, format_weight=0.0),
    )  # fmt: skip
    base.update(kw)
    return RLTrainConfig(**base)  # type: ignore[arg-type]


@pytest.mark.slow
def test_rl_raises_the_reward_on_a_planted_task(world, make_reasoner, tmp_path: Path) -> None:
    # Four fixed prompts whose true next items a random model lists by chance (8 of 48 items):
    # the set-wise reward is learnable in a few dozen steps.
    policy = make_reasoner(seed=2)
    reference = copy.deepcopy(policy)
    prompts = world.prompts[:4]
    evaluate = recall_evaluator(
        prompts, world.dataset.catalog, world.codes, world.trie, max_think_tokens=4
    )
    cfg = _cfg(30, eval_every=15)
    res = train_rl(
        policy, reference, prompts, world.trie, world.codes, cfg, tmp_path, evaluate=evaluate
    )
    rewards = [h["reward/total"] for h in res.history if "reward/total" in h]
    assert len(rewards) == 30
    first, last = float(np.mean(rewards[:5])), float(np.mean(rewards[-5:]))
    assert last > first + 0.15, (first, last, rewards)
    hits = [h["reward/hit_rate"] for h in res.history if "reward/hit_rate" in h]
    assert np.mean(hits[-5:]) > np.mean(hits[:5])
    # Logged: reward parts, KL, both clip fractions, thinking length, eval metrics.
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    keys = set().union(*records)
    for key in ("reward/coverage", "reward/diversity", "reward/format", "train/kl",
                "train/clip_frac_reason", "train/clip_frac_item", "rollout/think_tokens",
                "valid/thinking/r3/recall@10"):  # fmt: skip
        assert key in keys, key
    assert sum("valid/thinking/r3/recall@10" in r for r in records) == 3  # steps 0, 15, 30
    assert (tmp_path / "curves.png").is_file() and is_reasoner_dir(res.final_dir)
    assert res.last_eval["valid/thinking/r3/recall@10"] >= 0.0


class _Crash(Exception):
    pass


def test_rl_resumes_where_it_stopped(world, make_reasoner, tmp_path: Path) -> None:
    prompts = world.prompts[:4]
    cfg = _cfg(4, save_every=2, eval_every=1)
    calls: list[int] = []

    def evaluate(reasoner: object) -> dict[str, float]:
        calls.append(1)
        return {"valid/calls": float(len(calls))}

    straight = make_reasoner(seed=3)
    train_rl(straight, copy.deepcopy(straight), prompts, world.trie, world.codes, cfg,
             tmp_path / "a", evaluate=evaluate)  # fmt: skip

    def crash_at_step_2(reasoner: object) -> dict[str, float]:
        calls.append(1)
        if len(calls) == 4:  # the evaluation after step 3 (the first one is at step 0)
            raise _Crash
        return {"valid/calls": float(len(calls))}

    calls.clear()
    start = make_reasoner(seed=3)
    reference = copy.deepcopy(start)
    run = tmp_path / "b"
    with pytest.raises(_Crash):
        train_rl(start, reference, prompts, world.trie, world.codes, cfg, run,
                 evaluate=crash_at_step_2)  # fmt: skip
    # A fresh process resumes from run/last (step 2) and redoes step 3.
    again = make_reasoner(seed=3)
    res = train_rl(again, reference, prompts, world.trie, world.codes, cfg, run, evaluate=evaluate)
    assert res.steps == 4
    a = load_reasoner(tmp_path / "a" / "final").model.state_dict()
    b = load_reasoner(run / "final").model.state_dict()
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, atol=1e-6, rtol=1e-5)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    # Step 3 of the crashed run is not logged twice; every step has its record and evaluation.
    assert steps == [0, 1, 1, 2, 2, 3, 3, 4, 4]
    # Resuming the finished run runs no step and evaluates nothing, but still reports the
    # run's last evaluation (it is what gets published with the model).
    calls.clear()
    done = train_rl(make_reasoner(seed=3), reference, prompts, world.trie, world.codes, cfg, run,
                    evaluate=evaluate)  # fmt: skip
    assert calls == [] and done.steps == 4
    assert done.last_eval == res.last_eval and done.last_eval


def test_rl_config_and_inputs_are_checked(world, make_reasoner, tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        RLTrainConfig(steps=0)
    with pytest.raises(ConfigError, match="reference"):
        train_rl(
            make_reasoner(), None, world.prompts[:2], world.trie, world.codes, _cfg(1), tmp_path
        )


def test_recall_evaluator_hands_out_the_per_user_ranks(world, make_reasoner) -> None:
    prompts = world.prompts[:6]
    seen: dict[str, np.ndarray] = {}
    evaluate = recall_evaluator(
        prompts, world.dataset.catalog, world.codes, world.trie, max_think_tokens=4,
        modes=("thinking", "nothinking"), on_ranks=lambda mode, r: seen.setdefault(mode, r),
    )  # fmt: skip
    metrics = evaluate(make_reasoner(seed=1))
    assert set(seen) == {"thinking", "nothinking"}
    for mode in seen:
        ranks = seen[mode]
        assert ranks.shape == (6,) and ranks.min() >= -1 and ranks.max() < 10
        # The means the evaluator reports are those of the ranks it handed out.
        assert metrics[f"valid/{mode}/r3/recall@10"] == pytest.approx(float(np.mean(ranks >= 0)))
