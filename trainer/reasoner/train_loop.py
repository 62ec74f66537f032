"""The one causal-LM training loop of the reasoner's stages (alignment warm-up, alignment
full-parameter, CoT SFT).

- Loss: token-level cross-entropy on the completion tokens only (`CompletionLoss`),
  normalised by the number of loss tokens in the whole optimizer step (so gradient
  accumulation equals a bigger batch).
- Mixed precision: bf16 autocast (CPU or GPU) or fp16 autocast with a GradScaler (CUDA only).
- Runs unchanged under `torchrun`: DDP (gloo on CPU, nccl on GPU), every rank takes every
  world-th micro-batch of the same epoch plan; rank 0 logs, plots and checkpoints.
- Resumable: `out_dir/last` (a loadable reasoner directory + optimizer state) is written every
  `save_every` steps and at each epoch end; a restarted run skips the micro-batches it already
  did in the current epoch (the plan is a pure function of seed and epoch).
- `RowMask` (`optim.py`): train only some rows of a matrix (the alignment warm-up's new token
  embeddings); the other rows stay bit-for-bit unchanged.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from transformers import PreTrainedModel

from sid_index.errors import ConfigError, ReleaseError
from trainer.checkpoint import load_trainer_state, restore_optimizer, save_checkpoint
from trainer.fast_trainer import init_distributed_from_env
from trainer.reasoner.completion_loss import CompletionLoss
from trainer.reasoner.model import Reasoner
from trainer.reasoner.optim import RowMask, adamw, lr_factor
from trainer.reasoner.sft_data import (
    TokenizedSamples,
    collate,
    local_micro_batches,
    plan_epoch,
)
from trainer.reasoner.tokenizer import tokenizer_files
from trainer.training_log import MetricsLog, progress

log = logging.getLogger(__name__)

_PLOT_EVERY_S = 60.0

EvalFn = Callable[[Reasoner], dict[str, float]]
"""Evaluation callback, run on rank 0 at each epoch end; its metrics go into the log."""


@dataclass(frozen=True, slots=True)
class LoopConfig:
    """Optimisation settings shared by every reasoner stage."""

    epochs: int = 1
    """Passes over the samples."""
    max_steps: int = 0
    """Stop after this many optimizer steps (0: no limit besides `epochs`)."""
    batch_size: int = 8
    """Rows per micro-batch, per process."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 3e-4
    """Peak AdamW learning rate (linear warm-up, cosine decay to `min_lr_ratio * lr`)."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of `lr`."""
    lr_warmup_steps: int = 20
    """Linear learning-rate warm-up steps."""
    weight_decay: float = 0.01
    """AdamW weight decay on matrices (never on norms, biases or row-masked matrices)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    max_length: int = 512
    """Longest sample (or packed row) in tokens; over-long prompts lose their oldest tokens."""
    packing: bool = False
    """Pack several samples per row (block-diagonal attention) instead of padding."""
    mixed_precision: str = "no"
    """"no", "bf16" (autocast) or "fp16" (autocast + GradScaler, CUDA only)."""
    log_every: int = 10
    """Optimizer steps between metric records."""
    save_every: int = 0
    """Optimizer steps between checkpoints (0: at every epoch end); always one at the end."""
    seed: int = 0
    """Seed of the data order."""
    device: str = "auto"
    """"auto" (cuda:LOCAL_RANK when available, else cpu), "cpu" or "cuda"."""

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "grad_accum", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("max_steps", "lr_warmup_steps", "save_every", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if not self.lr > 0:
            raise ConfigError(f"{self.lr=} must be > 0")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"{self.min_lr_ratio=} must be in [0, 1]")
        if self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError(f"{self.weight_decay=} and {self.max_grad_norm=} must be >= 0")
        if self.max_length < 4:
            raise ConfigError(f"{self.max_length=} must be >= 4")
        if self.mixed_precision not in ("no", "bf16", "fp16"):
            raise ConfigError(f"{self.mixed_precision=} must be 'no', 'bf16' or 'fp16'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"{self.device=} must be 'auto', 'cpu' or 'cuda'")


@dataclass
class LoopResult:
    """Outcome of one run of the loop."""

    steps: int
    """Optimizer steps taken in total (including before a resume)."""
    epochs_done: int
    """Completed epochs."""
    final_loss: float
    """Mean completion loss over the last logging window (NaN if nothing ran)."""
    tokens: int
    """Tokens processed (all ranks, including before a resume)."""
    train_seconds: float
    """Wall time of this call."""
    tokens_per_s: float
    """Tokens processed by this call per second (all ranks)."""
    history: list[dict[str, float]] = field(default_factory=list)
    """The metric records this call logged (rank 0)."""


@contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' progress bars for a moment (restoring the caller's setting)."""
    from transformers.utils import logging as hf_logging

    was_disabled = hf_logging.is_progress_bar_enabled() is False
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not was_disabled:
            hf_logging.enable_progress_bar()


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device(cfg: LoopConfig) -> torch.device:
    if cfg.device == "cpu" or (cfg.device == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"{cfg.device=} but CUDA is not available")
    return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))


def train_causal_lm(
    reasoner: Reasoner,
    data: TokenizedSamples,
    cfg: LoopConfig,
    out_dir: Path,
    *,
    stage: str,
    trainable: Sequence[nn.Parameter] | None = None,
    row_masks: Sequence[RowMask] = (),
    evaluate: EvalFn | None = None,
    resume: bool = True,
) -> LoopResult:
    """Train `reasoner.model` in place on `data`; checkpoints go to `out_dir/last`.

    Args:
        stage: name in the progress bar and the plot title.
        trainable: parameters to train (default: all); the rest are frozen.
        row_masks: matrices of which only some rows may change.
        evaluate: rank-0 callback at each epoch end.
        resume: continue from `out_dir/last` when it exists (a finished run returns at once).
    """
    init_distributed_from_env()
    rank, world = _dist_info()
    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ConfigError("mixed_precision='fp16' needs CUDA; use 'bf16' or 'no' on CPU")
    device = _device(cfg)
    model = reasoner.model
    cast(nn.Module, model).to(device)  # HF types .to() oddly
    keep = None if trainable is None else {id(p) for p in trainable}
    for p in model.parameters():
        p.requires_grad_(keep is None or id(p) in keep)
    loss_module: nn.Module = CompletionLoss(model)
    if world > 1:
        loss_module = nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = adamw(model, cfg.lr, cfg.weight_decay, row_masks)
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.mixed_precision == "fp16")
    amp_dtype = torch.float16 if cfg.mixed_precision == "fp16" else torch.bfloat16
    pad_id = int(reasoner.tokenizer.pad_token_id)

    total = sum(epoch_steps(data, cfg, world))
    if cfg.max_steps:
        total = min(total, cfg.max_steps)
    state: dict[str, object] = {"stage": stage, "epoch": 0, "micro": 0, "step": 0, "tokens": 0}
    last = out_dir / "last"
    if resume and (last / "trainer_state.json").is_file():
        state = _restore(last, model, opt, scaler)
        log.info("%s: resumed from %s at step %s", stage, last, state["step"])
    if state.get("done"):
        return _finished(state)
    out_dir.mkdir(parents=True, exist_ok=True)
    extra = tokenizer_files(reasoner.tokenizer, reasoner.vocab) if rank == 0 else {}
    metrics_log = (
        MetricsLog(out_dir / "metrics.jsonl", append=int(state["step"]) > 0) if rank == 0 else None  # type: ignore[call-overload]
    )

    last_plot = [-math.inf]

    def plot(force: bool = False) -> None:
        # At epoch ends, at most every _PLOT_EVERY_S (a matplotlib figure costs ~1 s), and at
        # the end.
        now = time.perf_counter()
        if metrics_log is None or not metrics_log.records:
            return
        if force or now - last_plot[0] >= _PLOT_EVERY_S:
            metrics_log.plot(out_dir / "curves.png", title=stage)
            last_plot[0] = now

    def checkpoint(done: bool) -> None:
        state["done"] = done
        state["config"] = asdict(cfg)
        if rank == 0:
            state["scaler"] = scaler.state_dict() if scaler.is_enabled() else {}
            with _quiet_transformers():  # its "Writing model shards" bar would break ours
                save_checkpoint(last, model, opt, dict(state), extra_files=extra)
        if world > 1:
            dist.barrier()

    history: list[dict[str, float]] = []
    step = int(state["step"])  # type: ignore[call-overload]
    tokens = int(state["tokens"])  # type: ignore[call-overload]
    window = torch.zeros(3, dtype=torch.float64)  # loss sum, loss tokens, tokens since last log
    t0 = t_log = time.perf_counter()
    tokens_at_start = tokens
    bar = progress(range(total), total=total, desc=stage, unit="step", disable=rank != 0)
    bar.update(step)
    epoch = int(state["epoch"])  # type: ignore[call-overload]
    model.train()
    while epoch < cfg.epochs and step < total:
        plan = plan_epoch(
            data, cfg.batch_size, cfg.max_length, packing=cfg.packing,
            rng=np.random.default_rng([cfg.seed, epoch]),
        )  # fmt: skip
        mine = local_micro_batches(len(plan), rank, world)
        micro = int(state["micro"])  # type: ignore[call-overload]
        while micro < len(mine) and step < total:
            group = [
                collate(data, plan[i], pad_id, packing=cfg.packing)
                for i in mine[micro : micro + cfg.grad_accum]
            ]
            denom = max(1, sum(b.num_label_tokens for b in group))
            for j, batch in enumerate(group):
                batch = batch.to(device)
                sync = j == len(group) - 1 or world == 1
                ctx = loss_module.no_sync() if not sync else nullcontext()  # type: ignore[operator]
                with (
                    ctx,
                    torch.autocast(
                        device.type, dtype=amp_dtype, enabled=cfg.mixed_precision != "no"
                    ),
                ):
                    loss_sum = loss_module(batch)
                scaler.scale(loss_sum / denom).backward()
                window += torch.tensor(
                    [float(loss_sum.detach()), batch.num_label_tokens, batch.num_tokens],
                    dtype=torch.float64,
                )
            scaler.unscale_(opt)
            for mask in row_masks:
                mask.apply()
            grad_norm = (
                float(torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm))
                if cfg.max_grad_norm > 0
                else math.nan
            )
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(step, total, cfg.lr_warmup_steps, cfg.min_lr_ratio)
            scaler.step(opt)
            scaler.update()
            opt.zero_grad(set_to_none=True)
            step += 1
            micro += len(group)
            bar.update(1)
            state.update(step=step, micro=micro)
            if step % cfg.log_every == 0 or step == total:
                record, tokens = _log_window(window, tokens, t_log, grad_norm, opt, world)
                t_log = time.perf_counter()
                window.zero_()
                if metrics_log is not None:
                    metrics_log.log(step, record, epoch=epoch)
                    history.append(record)
                    bar.set_postfix(loss=f"{record['train/loss']:.3f}")
                state.update(tokens=tokens, last_loss=record["train/loss"])
            if cfg.save_every and step % cfg.save_every == 0 and step < total:
                checkpoint(done=False)
        if micro >= len(mine):
            epoch += 1
            state.update(epoch=epoch, micro=0)
            if evaluate is not None and rank == 0 and metrics_log is not None:
                model.eval()
                with torch.no_grad():
                    metrics = evaluate(reasoner)
                model.train()
                metrics_log.log(step, metrics, epoch=epoch)
                history.append(metrics)
            plot()
            if not cfg.save_every and step < total and epoch < cfg.epochs:
                checkpoint(done=False)
    if window[2] > 0:
        record, tokens = _log_window(window, tokens, t_log, math.nan, opt, world)
        state.update(tokens=tokens, last_loss=record["train/loss"])
        if metrics_log is not None:
            metrics_log.log(step, record, epoch=epoch)
            history.append(record)
    bar.close()
    checkpoint(done=True)
    plot(force=True)
    if metrics_log is not None:
        metrics_log.close()
    model.eval()
    seconds = time.perf_counter() - t0
    losses = [h["train/loss"] for h in history if "train/loss" in h]
    return LoopResult(
        steps=step,
        epochs_done=epoch,
        final_loss=losses[-1] if losses else math.nan,
        tokens=tokens,
        train_seconds=seconds,
        tokens_per_s=(tokens - tokens_at_start) / max(seconds, 1e-9),
        history=history,
    )


def epoch_steps(data: TokenizedSamples, cfg: LoopConfig, world: int) -> list[int]:
    """Optimizer steps of each epoch per rank (packed epochs can differ in length)."""
    out = []
    for epoch in range(cfg.epochs):
        plan = plan_epoch(
            data, cfg.batch_size, cfg.max_length, packing=cfg.packing,
            rng=np.random.default_rng([cfg.seed, epoch]),
        )  # fmt: skip
        out.append(math.ceil(math.ceil(len(plan) / world) / cfg.grad_accum))
        if not cfg.packing:  # padded epochs all have the same number of batches
            return out * cfg.epochs
    return out


def _log_window(
    window: torch.Tensor,
    tokens: int,
    t_since: float,
    grad_norm: float,
    opt: torch.optim.Optimizer,
    world: int,
) -> tuple[dict[str, float], int]:
    """Reduce the window over ranks into a metric record; returns (record, total tokens)."""
    if world > 1:
        dist.all_reduce(window)
    seconds = max(time.perf_counter() - t_since, 1e-9)
    record = {
        "train/loss": float(window[0] / window[1].clamp(min=1)),
        "train/lr": float(opt.param_groups[0]["lr"]),
        "train/tokens_per_s": float(window[2]) / seconds,
    }
    if math.isfinite(grad_norm):
        record["train/grad_norm"] = grad_norm
    return record, tokens + int(window[2])


def _restore(
    last: Path, model: PreTrainedModel, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler
) -> dict[str, object]:
    state = load_trainer_state(last)
    try:
        loaded = type(model).from_pretrained(last, local_files_only=True, dtype=model.dtype)
    except OSError as exc:
        raise ReleaseError(f"checkpoint {last} has no loadable model ({exc})") from None
    model.load_state_dict(loaded.state_dict())
    if not state.get("done"):
        restore_optimizer(last, opt)
        scaler_state = state.get("scaler") or {}
        if scaler.is_enabled() and scaler_state:
            scaler.load_state_dict(scaler_state)  # type: ignore[arg-type]
    return state


def _finished(state: dict[str, object]) -> LoopResult:
    return LoopResult(
        steps=int(state["step"]),  # type: ignore[call-overload]
        epochs_done=int(state["epoch"]),  # type: ignore[call-overload]
        final_loss=float(state.get("last_loss", math.nan)),  # type: ignore[arg-type]
        tokens=int(state["tokens"]),  # type: ignore[call-overload]
        train_seconds=0.0,
        tokens_per_s=0.0,
    )
