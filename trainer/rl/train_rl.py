"""The reasoner's RL loop: rollouts → set-wise rewards → several clipped policy-gradient updates.

Each step draws `prompts_per_step` prompts (seeded by (seed, step), so a resumed run draws the
same ones), rolls out G thoughts × M lists per prompt with the current policy
(`trainer.rl.rollout`), scores the rollout tokens under the rollout policy and the frozen SFT
reference (`trainer.rl.scoring`), computes group-relative advantages and runs `ppo_epochs`
passes of minibatch updates of the GRPO loss (`trainer.rl.grpo`).

Per-domain mode is just a prompt set: give it one domain's prompts and the result is that
domain's expert (`trainer.rl.unify` fuses experts).

Logged per step (MetricsLog → `metrics.jsonl`, `curves.png`): reward parts (total, hit, hit
rate, coverage, diversity, format), the hit rate of list 0 (what inference would answer), the
share of groups with a hit, KL, clip fractions of reasoning and item tokens, ratio, loss,
thinking length and budget hits, time; the evaluation callback's metrics every `eval_every`
steps (and at step 0 — the starting point — and at the end).

Resumable: `out_dir/last` (a loadable reasoner directory + optimizer + step) every
`save_every` steps; `out_dir/final` is the trained reasoner.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from sid_index.errors import ConfigError, DataError, ReleaseError
from sid_index.records import Catalog
from sid_index.trie import SIDTrie
from slow_path import cot_format
from slow_path.cot_format import PromptItem
from trainer.checkpoint import load_trainer_state, restore_optimizer, save_checkpoint
from trainer.metrics import hit_ranks, metrics_from_ranks
from trainer.reasoner.evaluation import recommendation
from trainer.reasoner.generate import ReasonConfig, sid_offsets_of
from trainer.reasoner.model import Reasoner
from trainer.reasoner.optim import adamw, lr_factor
from trainer.reasoner.tokenizer import token_ids, tokenizer_files
from trainer.rl.grpo import GRPOConfig, LossParts, group_advantages, grpo_loss
from trainer.rl.prompts import RLPrompt, targets_of
from trainer.rl.rewards import RewardConfig
from trainer.rl.rollout import RolloutConfig, Rollouts, rollout
from trainer.rl.run_log import RunLog
from trainer.rl.scoring import ScoringBatch, TokenLogProbs, score_tokens, scoring_batch
from trainer.training_log import MetricsLog, progress

log = logging.getLogger(__name__)

EvalFn = Callable[[Reasoner], dict[str, float]]
"""Evaluation callback (e.g. Recall@10 of thinking answers on validation users)."""

PLOT_EVERY_S = 60.0
"""Curves are redrawn at most this often during a run (a figure costs seconds), and at the end."""
PLOT_KEYS = (
    "reward/total", "reward/hit_rate", "reward/beam_hit_rate", "reward/coverage",
    "reward/diversity", "reward/format", "train/kl", "train/clip_frac_reason",
    "train/clip_frac_item", "rollout/think_tokens", "rollout/group_hit",
)  # fmt: skip
"""The panels of `curves.png` (plus every evaluation Recall@10 and NDCG@10)."""


def plot_run(log: MetricsLog, png: Path, title: str, keys: Sequence[str] = PLOT_KEYS) -> None:
    """Draw the run's main curves (the given keys that were logged, then eval R@10/N@10)."""
    seen = {k for r in log.records for k in r.metrics}
    evals = sorted(k for k in seen if k.endswith(("recall@10", "ndcg@10")))
    panels = [k for k in keys if k in seen] + evals
    if panels:
        log.plot(png, keys=panels, title=title)


@dataclass(frozen=True, slots=True)
class RLTrainConfig:
    """Settings of an RL run."""

    steps: int = 50
    """Rollout + update rounds."""
    prompts_per_step: int = 8
    """Prompts rolled out per step (each yields G × M trajectories)."""
    ppo_epochs: int = 1
    """Passes of minibatch updates over each rollout batch."""
    minibatch_rows: int = 16
    """Trace rows (thoughts, with their lists) per optimizer step."""
    lr: float = 1e-5
    """Peak AdamW learning rate."""
    lr_warmup_steps: int = 0
    """Linear warm-up in optimizer steps (then cosine decay to 10 %)."""
    weight_decay: float = 0.0
    """AdamW weight decay on matrices."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    eval_every: int = 10
    """Steps between evaluations (0: only at the start and the end)."""
    save_every: int = 10
    """Steps between checkpoints (0: only at the end)."""
    seed: int = 0
    """Seed of prompt draws and sampling."""
    device: str = "cpu"
    """"cpu" or "cuda"."""
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    """Group size, lists per thought, sampling."""
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    """Clip ranges, non-hit weight, KL."""
    reward: RewardConfig = field(default_factory=RewardConfig)
    """Set-wise reward weights."""

    def __post_init__(self) -> None:
        for name in ("steps", "prompts_per_step", "ppo_epochs", "minibatch_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        for name in ("lr_warmup_steps", "eval_every", "save_every", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        if not self.lr > 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise ConfigError(f"{self.lr=} must be > 0, weight decay and grad norm >= 0")
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"{self.device=} must be 'cpu' or 'cuda'")


@dataclass
class RLResult:
    """Outcome of an RL run."""

    steps: int
    """Steps done in total (including before a resume)."""
    final_dir: Path
    """The trained reasoner directory."""
    train_seconds: float
    """Wall time of this call."""
    history: list[dict[str, float]]
    """Metric records this call logged."""
    last_eval: dict[str, float]
    """The last evaluation's metrics ({} without a callback)."""


def _step_generator(seed: int, step: int) -> torch.Generator:
    return torch.Generator().manual_seed(
        int(np.random.SeedSequence([seed, step]).generate_state(1)[0])
    )


def train_rl(
    policy: Reasoner,
    reference: Reasoner | None,
    prompts: Sequence[RLPrompt],
    trie: SIDTrie,
    codes: np.ndarray,
    cfg: RLTrainConfig,
    out_dir: Path,
    *,
    evaluate: EvalFn | None = None,
    resume: bool = True,
    stage: str = "rl",
) -> RLResult:
    """Train `policy` in place with GRPO on `prompts`; checkpoints in `out_dir/last`.

    Args:
        reference: the frozen SFT reasoner of the KL term (None only when kl_coef is 0).
        prompts: thinking prompts (one domain's for a domain expert).
        codes: (N, L) catalogue SID codes.
        evaluate: metrics of the policy, logged at the start, every `eval_every` steps and at
            the end.
        resume: continue from `out_dir/last` when it exists.
    """
    if not prompts:
        raise DataError("RL needs at least one prompt")
    if reference is None and cfg.grpo.kl_coef > 0:
        raise ConfigError(f"kl_coef={cfg.grpo.kl_coef} needs a reference reasoner")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    device = torch.device(cfg.device)
    model = policy.model
    cast(nn.Module, model).to(device)
    if reference is not None:
        cast(nn.Module, reference.model).to(device).eval()
        for p in reference.model.parameters():
            p.requires_grad_(False)
    for p in model.parameters():
        p.requires_grad_(True)
    opt = adamw(model, cfg.lr, cfg.weight_decay, ())
    tok = policy.tokenizer
    offsets = torch.from_numpy(sid_offsets_of(tok, trie.level_sizes)).to(device)
    close = token_ids(tok, [cot_format.THINK_END, cot_format.ANSWER])
    pad_id = int(tok.pad_token_id)

    last = out_dir / "last"
    step = 0
    if resume and (last / "trainer_state.json").is_file():
        step = _restore(last, policy, opt)
        log.info("%s: resumed from %s at step %d", stage, last, step)
    run_log = RunLog(out_dir, step)
    extra = tokenizer_files(tok, policy.vocab)
    t0 = time.perf_counter()

    def run_eval() -> None:
        run_log.evaluate(step, model, None if evaluate is None else lambda: evaluate(policy))

    def checkpoint(done: bool) -> None:
        state = {"stage": stage, "step": step, "done": done, "config": asdict(cfg)}
        save_checkpoint(last, model, opt, state, extra_files=extra)

    last_plot = time.perf_counter()
    if step == 0:
        run_eval()
    bar = progress(range(cfg.steps), total=cfg.steps, desc=stage, unit="step")
    bar.update(step)
    while step < cfg.steps:
        rng = np.random.default_rng([cfg.seed, step])
        chosen = rng.choice(
            len(prompts), size=cfg.prompts_per_step, replace=len(prompts) < cfg.prompts_per_step
        )
        batch_prompts = [prompts[i] for i in chosen.tolist()]
        t_roll = time.perf_counter()
        ro = rollout(
            policy, batch_prompts, trie=trie, codes=codes, config=cfg.rollout,
            reward=cfg.reward, generator=_step_generator(cfg.seed, step),
        )  # fmt: skip
        sb = scoring_batch(ro, pad_id, close).to(device)
        with torch.no_grad():
            old = _score_all(model, sb, offsets, cfg.minibatch_rows)
            ref = (
                _score_all(reference.model, sb, offsets, cfg.minibatch_rows)
                if reference is not None and cfg.grpo.kl_coef > 0
                else None
            )
        adv = group_advantages(ro.group_rewards(), ro.group_hit(), cfg.grpo).to(device)
        lists = ro.lists.to(device)
        t_update = time.perf_counter()
        model.train()
        parts: list[LossParts] = []
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        for _ in range(cfg.ppo_epochs):
            order = torch.randperm(ro.num_rows, generator=gen)
            for lo in range(0, ro.num_rows, cfg.minibatch_rows):
                rows = order[lo : lo + cfg.minibatch_rows].to(device)
                sub = sb.select(rows)
                new = score_tokens(model, sub, offsets)
                part = grpo_loss(
                    new, old.select(rows), None if ref is None else ref.select(rows),
                    sub.reason_mask, lists[rows], adv.select(rows), cfg.grpo,
                )  # fmt: skip
                part.loss.backward()
                if cfg.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                for g in opt.param_groups:
                    g["lr"] = cfg.lr * lr_factor(step, cfg.steps, cfg.lr_warmup_steps, 0.1)
                opt.step()
                opt.zero_grad(set_to_none=True)
                parts.append(part)
        step += 1
        record = _step_record(ro, parts, t_roll, t_update, opt)
        run_log.record(step, record)
        bar.update(1)
        bar.set_postfix(
            reward=f"{record['reward/total']:.3f}", hit=f"{record['reward/hit_rate']:.2f}"
        )
        # Checkpoint before evaluating: an evaluation can take long and a crash in it must
        # not lose the step.
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            checkpoint(done=False)
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            run_eval()
        if time.perf_counter() - last_plot > PLOT_EVERY_S and step < cfg.steps:
            plot_run(run_log.metrics, out_dir / "curves.png", stage)
            last_plot = time.perf_counter()
    bar.close()
    checkpoint(done=True)
    plot_run(run_log.metrics, out_dir / "curves.png", stage)
    run_log.close()
    model.eval()
    final = out_dir / "final"
    policy.save(final)
    return RLResult(step, final, time.perf_counter() - t0, run_log.history, run_log.last_eval)


def _score_all(
    model: PreTrainedModel, sb: ScoringBatch, offsets: torch.Tensor, chunk: int
) -> TokenLogProbs:
    """Log-probs of every row of a scoring batch, `chunk` rows at a time (call under no_grad)."""
    rows = sb.input_ids.shape[0]
    device = sb.input_ids.device
    parts = [
        score_tokens(
            model, sb.select(torch.arange(lo, min(lo + chunk, rows), device=device)), offsets
        )
        for lo in range(0, rows, chunk)
    ]
    return TokenLogProbs(torch.cat([p.reason for p in parts]), torch.cat([p.items for p in parts]))


def _step_record(
    ro: Rollouts,
    parts: list[LossParts],
    t_roll: float,
    t_update: float,
    opt: torch.optim.Optimizer,
) -> dict[str, float]:
    now = time.perf_counter()
    lengths = ro.think_lengths()
    record = ro.rewards.means("reward/")
    record.update(
        {
            "reward/beam_hit_rate": float(ro.rewards.is_hit[:, 0].mean()),
            "rollout/group_hit": float(ro.group_hit().float().mean()),
            "rollout/think_tokens": float(lengths.mean()),
            "rollout/budget_hit": float((~ro.stopped).mean()),
            "train/loss": float(np.mean([float(p.loss.detach()) for p in parts])),
            "train/kl": float(np.mean([p.kl for p in parts])),
            "train/clip_frac_reason": float(np.mean([p.clip_frac_reason for p in parts])),
            "train/clip_frac_item": float(np.mean([p.clip_frac_item for p in parts])),
            "train/ratio": float(np.mean([p.ratio_mean for p in parts])),
            "train/lr": float(opt.param_groups[0]["lr"]),
            "time/rollout_s": t_update - t_roll,
            "time/update_s": now - t_update,
        }
    )
    return {k: v for k, v in record.items() if math.isfinite(v)}


def _restore(last: Path, policy: Reasoner, opt: torch.optim.Optimizer) -> int:
    """Load the checkpoint's weights and optimizer into the run; returns its step."""
    state = load_trainer_state(last)
    model = policy.model
    try:
        loaded = type(model).from_pretrained(last, local_files_only=True, dtype=model.dtype)
    except OSError as exc:
        raise ReleaseError(f"checkpoint {last} has no loadable model ({exc})") from None
    model.load_state_dict(loaded.state_dict())
    # Also after a finished run: a run extended to more steps keeps its Adam moments.
    restore_optimizer(last, opt)
    return int(state["step"])  # type: ignore[call-overload]


def recall_evaluator(
    prompts: Sequence[RLPrompt],
    catalog: Catalog,
    codes: np.ndarray,
    trie: SIDTrie,
    *,
    max_think_tokens: int,
    modes: Sequence[str] = ("thinking",),
    k: int = 10,
    batch_size: int = 16,
    prefix: str = "valid/",
    by_domain: bool = False,
    on_ranks: Callable[[str, np.ndarray], None] | None = None,
) -> EvalFn:
    """An `EvalFn`: Recall/NDCG@5,k of greedy-thought + beam answers (`recommendation`) on
    `prompts`' users, in each of `modes` ("thinking", "nothinking"), optionally per domain.

    Metric names: `{prefix}{mode}/r3/recall@10` (+ R2 metrics in thinking mode) and, with
    `by_domain`, `{prefix}{domain}/{mode}/recall@10`. `on_ranks(mode, ranks)` receives the
    (U,) 0-based hit ranks of each evaluation (-1 = miss), for paired comparisons."""
    bad = [m for m in modes if m not in ("thinking", "nothinking")]
    if bad or not modes:
        raise ConfigError(f"{modes=} must be a non-empty subset of ('thinking', 'nothinking')")
    codes = np.asarray(codes)
    histories = [
        [PromptItem(tuple(codes[i].tolist()), catalog.titles[i]) for i in p.history.tolist()]
        for p in prompts
    ]
    targets = targets_of(prompts)
    domains = np.asarray([p.domain for p in prompts])
    ks = (5, k) if k > 5 else (k,)

    def evaluate(reasoner: Reasoner) -> dict[str, float]:
        out: dict[str, float] = {}
        for mode in modes:
            cfg = ReasonConfig(
                thinking=mode == "thinking", max_think_tokens=max_think_tokens, num_answers=k,
                batch_size=batch_size,
            )  # fmt: skip
            metrics, outputs = recommendation(reasoner, trie, histories, targets, config=cfg, ks=ks)
            out.update({prefix + name: v for name, v in metrics.items()})
            topk = np.stack([o.items for o in outputs])
            ranks = hit_ranks(topk, targets)
            if on_ranks is not None:
                on_ranks(mode, ranks)
            if by_domain:
                for d in sorted(set(domains.tolist())):
                    m = metrics_from_ranks(ranks[domains == d], ks, max_k=topk.shape[1])
                    out[f"{prefix}{d}/{mode}/recall@{k}"] = m.recall[k]
                    out[f"{prefix}{d}/{mode}/ndcg@{k}"] = m.ndcg[k]
        return out

    return evaluate
