"""The shared training loop: warm-up row masks, loss going down, resume equals no interruption."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sid_index.errors import ConfigError
from trainer.reasoner.align import AlignTrainConfig, new_row_masks
from trainer.reasoner.model import load_reasoner
from trainer.reasoner.sft_data import local_micro_batches, tokenize_samples
from trainer.reasoner.train_loop import LoopConfig, train_causal_lm


@pytest.mark.parametrize("tie", [True, False])
def test_warmup_changes_only_new_embedding_rows(world, make_reasoner, tmp_path: Path, tie) -> None:
    r = make_reasoner(tie=tie)
    before = {k: v.detach().clone() for k, v in r.model.state_dict().items()}
    data = tokenize_samples(r.tokenizer, world.align + world.sft[:8], 256)
    cfg = AlignTrainConfig(
        batch_size=8, warmup_steps=4, warmup_lr=1e-2, weight_decay=0.1, log_every=2
    )
    params, masks = new_row_masks(r)
    assert len(params) == (1 if tie else 2)
    train_causal_lm(
        r, data, cfg.warmup_loop(), tmp_path, stage="warm", trainable=params, row_masks=masks
    )
    new = torch.from_numpy(r.vocab.new_token_mask(len(r.tokenizer)))
    matrices = {"model.embed_tokens.weight", "lm_head.weight"}
    after = r.model.state_dict()
    for name, old in before.items():
        if name in matrices:
            torch.testing.assert_close(after[name][~new], old[~new], rtol=0, atol=0)
            moved = (after[name][new] != old[new]).any(dim=1)
            if name == "lm_head.weight":  # the softmax gives every output row a gradient
                assert bool(moved.all())
            else:  # untied inputs: only the rows of tokens the 4 steps read
                assert bool(moved.any())
        else:
            torch.testing.assert_close(after[name], old, rtol=0, atol=0, msg=name)


def test_loss_goes_down_and_resume_equals_an_uninterrupted_run(
    world, make_reasoner, tmp_path: Path
) -> None:
    samples = world.align + world.sft
    cfg = LoopConfig(epochs=2, batch_size=8, lr=3e-3, lr_warmup_steps=2, log_every=2, save_every=3)

    straight = make_reasoner()
    data = tokenize_samples(straight.tokenizer, samples, 256)
    res = train_causal_lm(straight, data, cfg, tmp_path / "a", stage="a")
    losses = [h["train/loss"] for h in res.history if "train/loss" in h]
    assert losses[-1] < losses[0] - 0.5
    assert res.steps == 2 * -(-len(data) // 8) and res.tokens == 2 * int(data.lengths.sum())
    assert (tmp_path / "a" / "curves.png").stat().st_size > 0
    state = json.loads((tmp_path / "a" / "last" / "trainer_state.json").read_text())
    assert state["done"] and state["step"] == res.steps

    class Crash(Exception):
        pass

    def crash(_: object) -> dict[str, float]:
        raise Crash

    crashed = make_reasoner()
    with pytest.raises(Crash):  # dies at the end of epoch 1, after a mid-epoch checkpoint
        train_causal_lm(crashed, data, cfg, tmp_path / "b", stage="b", evaluate=crash)
    resumed = make_reasoner()  # a fresh process: weights come from the checkpoint
    res_b = train_causal_lm(resumed, data, cfg, tmp_path / "b", stage="b")
    assert res_b.steps == res.steps and res_b.tokens == res.tokens
    for (name, p), q in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)

    # A finished run resumes to "done" at once; its checkpoint is a loadable reasoner.
    again = train_causal_lm(make_reasoner(), data, cfg, tmp_path / "b", stage="b")
    assert again.steps == res.steps and again.train_seconds == 0.0
    loaded = load_reasoner(tmp_path / "b" / "last")
    torch.testing.assert_close(loaded.model.lm_head.weight, resumed.model.lm_head.weight)


def test_gradient_accumulation_matches_a_bigger_batch(
    world, make_reasoner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    grads: list[torch.Tensor] = []
    step = torch.optim.AdamW.step

    def spy(self: torch.optim.AdamW, *args: object, **kwargs: object) -> object:
        grads.append(torch.cat([p.grad.flatten() for g in self.param_groups for p in g["params"]]))
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", spy)
    r = make_reasoner()
    data = tokenize_samples(r.tokenizer, world.sft[:16], 256)
    common = dict(epochs=1, lr=1e-3, lr_warmup_steps=1, max_grad_norm=0.0)
    # One optimizer step each: 16 rows at once, or 4 micro-batches of 4 accumulated.
    train_causal_lm(r, data, LoopConfig(batch_size=16, **common), tmp_path / "x", stage="x")
    train_causal_lm(
        make_reasoner(), data, LoopConfig(batch_size=4, grad_accum=4, **common),
        tmp_path / "y", stage="y",
    )  # fmt: skip
    assert len(grads) == 2
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_trains_on_cpu(world, make_reasoner, tmp_path: Path) -> None:
    r = make_reasoner()
    data = tokenize_samples(r.tokenizer, world.sft[:12], 256)
    cfg = LoopConfig(batch_size=4, lr=3e-3, lr_warmup_steps=1, log_every=1, mixed_precision="bf16")
    res = train_causal_lm(r, data, cfg, tmp_path, stage="bf16")
    losses = [h["train/loss"] for h in res.history]
    assert all(np.isfinite(losses)) and losses[-1] < losses[0]
    assert r.model.dtype == torch.float32  # autocast only: fp32 master weights
    if not torch.cuda.is_available():  # fp16 needs a GradScaler on CUDA
        with pytest.raises(ConfigError, match="fp16"):
            train_causal_lm(
                r, data, LoopConfig(mixed_precision="fp16"), tmp_path / "fp16", stage="fp16"
            )


def test_ranks_split_the_plan_evenly() -> None:
    assert local_micro_batches(5, 0, 2) == [0, 2, 4]
    assert local_micro_batches(5, 1, 2) == [1, 3, 0]  # wraps: both ranks take 3 steps


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="mixed_precision"):
        LoopConfig(mixed_precision="fp8")
    with pytest.raises(ConfigError, match="batch_size"):
        LoopConfig(batch_size=0)
    with pytest.raises(ConfigError, match="warmup_steps"):
        AlignTrainConfig(warmup_steps=-1)
    with pytest.raises(ConfigError, match="lr"):
        LoopConfig(lr=0)
