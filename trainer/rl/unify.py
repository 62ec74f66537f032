"""Specialize-then-unify: fuse per-domain RL experts into one reasoner.

Two methods, chosen by config:

- RFT (rejection-sampling fine-tuning): every expert samples G thoughts on the prompts of its
  own domain (`trainer.rl.rollout`, list 0 = its beam top K); per prompt the best-rewarded
  trajectory is kept — only if its list contains the true next item (`require_hit`) — and
  written as an SFT sample: the expert's thought, then `</think><answer>` and the true next
  item's SID (which the expert listed). One student (the SFT model) is fine-tuned on the
  union with the reasoner's SFT loop (`trainer.reasoner.sft.train_sft`).
- MOPD (multi-teacher on-policy distillation): the student samples a thought and its greedy
  constrained answer on prompts of every domain; the expert of each prompt's domain scores
  the student's own tokens, and the student minimizes the token-level reverse KL
  `KL(student ‖ expert)` over the full vocabulary at every position it wrote (thought, the
  `</think>` it chose, and the answer's SID tokens). On-policy: the student learns where it
  actually goes, from the teacher that knows that domain.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from torch import nn
from transformers import PreTrainedModel

from sid_index.errors import ConfigError, DataError
from sid_index.trie import SIDTrie
from slow_path import cot_format
from trainer.checkpoint import load_trainer_state, restore_optimizer, save_checkpoint
from trainer.reasoner.generate import sid_offsets_of
from trainer.reasoner.model import Reasoner
from trainer.reasoner.optim import adamw, lr_factor
from trainer.reasoner.sft import SFTResult, SFTTrainConfig, train_sft
from trainer.reasoner.tokenizer import decode, token_ids, tokenizer_files
from trainer.rl.prompts import RLPrompt
from trainer.rl.rewards import RewardConfig
from trainer.rl.rollout import RolloutConfig, Rollouts, left_pad, rollout
from trainer.rl.run_log import RunLog
from trainer.rl.train_rl import PLOT_EVERY_S, plot_run
from trainer.training_log import progress

log = logging.getLogger(__name__)

EvalFn = Callable[[Reasoner], dict[str, float]]
METHODS = ("rft", "mopd")
MOPD_PLOT_KEYS = ("mopd/reverse_kl", "rollout/think_tokens", "rollout/hit_rate")


# -- RFT ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RFTConfig:
    """How the experts' best trajectories are sampled and selected."""

    samples_per_prompt: int = 4
    """Thoughts sampled per prompt by the domain's expert."""
    list_size: int = 10
    """Items in the candidate list scored per thought (the beam's top K)."""
    temperature: float = 1.0
    """Thought sampling temperature."""
    max_think_tokens: int = 128
    """Thought budget."""
    require_hit: bool = True
    """Keep a prompt's best trajectory only when its list contains the true next item."""
    batch_size: int = 32
    """Trace rows decoded together."""
    seed: int = 0
    """Seed of the sampling."""

    def __post_init__(self) -> None:
        for name in ("samples_per_prompt", "list_size", "max_think_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if not self.temperature > 0:
            raise ConfigError(f"{self.temperature=} must be > 0")


@dataclass(frozen=True, slots=True)
class RFTSample:
    """An expert's kept trajectory as an SFT sample."""

    prompt: str
    completion: str
    thinking: bool
    """Always True (the thought is the expert's)."""
    domain: str
    """Domain of the prompt (= of its expert)."""
    reward: float
    """Set-wise reward of the kept trajectory."""


def collect_rft_samples(
    expert: Reasoner,
    prompts: Sequence[RLPrompt],
    trie: SIDTrie,
    codes: np.ndarray,
    cfg: RFTConfig,
    reward: RewardConfig | None = None,
) -> list[RFTSample]:
    """Best trajectory per prompt (see the module docstring); prompts without one are skipped."""
    reward = reward or RewardConfig()
    codes = np.asarray(codes)
    g = cfg.samples_per_prompt
    ro_cfg = RolloutConfig(
        group_size=g, lists_per_trace=1, list_size=cfg.list_size, pool_size=cfg.list_size,
        temperature=cfg.temperature, max_think_tokens=cfg.max_think_tokens,
        batch_size=cfg.batch_size,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(cfg.seed)
    chunk = max(1, cfg.batch_size // g)  # prompts per rollout call (one progress tick each)
    out = []
    for lo in progress(range(0, len(prompts), chunk), desc="rft samples", unit="batch"):
        part = prompts[lo : lo + chunk]
        ro = rollout(
            expert, part, trie=trie, codes=codes, config=ro_cfg, reward=reward, generator=gen
        )
        total = ro.rewards.total[:, 0].reshape(len(part), g)  # (P, G)
        hit = ro.rewards.is_hit[:, 0].reshape(len(part), g)
        score = np.where(hit | (not cfg.require_hit), total, -np.inf)
        for p, best in enumerate(score.argmax(axis=1).tolist()):
            if not np.isfinite(score[p, best]):
                continue
            thought = decode(expert.tokenizer, ro.thought_ids[p * g + best], skip_special=False)
            completion = (
                thought + cot_format.THINK_END + cot_format.ANSWER
                + cot_format.render_answer(codes[part[p].target].tolist())
            )  # fmt: skip
            out.append(
                RFTSample(part[p].prompt, completion, True, part[p].domain, float(total[p, best]))
            )
    return out


def train_rft(
    student: Reasoner,
    samples: Sequence[RFTSample],
    cfg: SFTTrainConfig,
    out_dir: Path,
    *,
    evaluate: EvalFn | None = None,
    resume: bool = True,
) -> SFTResult:
    """Fine-tune `student` in place on the experts' kept trajectories (the SFT loop)."""
    if not samples:
        raise DataError("RFT has no samples: no expert trajectory passed the rejection step")
    return train_sft(student, samples, cfg, out_dir, evaluate=evaluate, resume=resume)


# -- MOPD ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MOPDConfig:
    """Multi-teacher on-policy distillation settings."""

    steps: int = 50
    """Sample + update rounds."""
    prompts_per_step: int = 16
    """Prompts per step, split evenly over the domains."""
    temperature: float = 1.0
    """Student thought sampling temperature."""
    max_think_tokens: int = 128
    """Thought budget."""
    lr: float = 5e-5
    """Peak AdamW learning rate (cosine decay to 10 %)."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm (0 disables)."""
    minibatch_rows: int = 16
    """Rows per optimizer step."""
    eval_every: int = 10
    """Steps between evaluations (0: start and end only)."""
    save_every: int = 10
    """Steps between checkpoints (0: end only)."""
    seed: int = 0
    """Seed of prompt draws and sampling."""
    device: str = "cpu"
    """"cpu" or "cuda" (student and experts)."""

    def __post_init__(self) -> None:
        if self.device not in ("cpu", "cuda"):
            raise ConfigError(f"{self.device=} must be 'cpu' or 'cuda'")
        for name in ("steps", "prompts_per_step", "max_think_tokens", "minibatch_rows"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if not (self.temperature > 0 and self.lr > 0) or self.max_grad_norm < 0:
            raise ConfigError(f"{self.temperature=} and {self.lr=} must be > 0")
        if self.eval_every < 0 or self.save_every < 0:
            raise ConfigError(f"{self.eval_every=} and {self.save_every=} must be >= 0")


@dataclass
class MOPDResult:
    """Outcome of a MOPD run."""

    steps: int
    final_dir: Path
    train_seconds: float
    history: list[dict[str, float]]
    last_eval: dict[str, float]


@dataclass(frozen=True, slots=True)
class ActionBatch:
    """Student-written sequences and the positions whose next-token distributions are scored."""

    input_ids: torch.Tensor
    """(R, T) left-padded prompt + thought + `</think><answer>` + answer SID."""
    attention_mask: torch.Tensor
    """(R, T)."""
    action_pos: torch.Tensor
    """(R, A) position whose logits predict each token the student chose (0 in padding)."""
    action_mask: torch.Tensor
    """(R, A) bool real action positions."""

    def select(self, rows: torch.Tensor) -> ActionBatch:
        return ActionBatch(
            self.input_ids[rows], self.attention_mask[rows], self.action_pos[rows],
            self.action_mask[rows],
        )  # fmt: skip

    def to(self, device: torch.device) -> ActionBatch:
        return ActionBatch(
            self.input_ids.to(device), self.attention_mask.to(device),
            self.action_pos.to(device), self.action_mask.to(device),
        )  # fmt: skip


def action_batch(
    ro: Rollouts, pad_id: int, close_ids: list[int], sid_offsets: np.ndarray
) -> ActionBatch:
    """Sequences of the student's rollouts (one list of one item per thought) with the action
    positions: the thought, the `</think>` it wrote, and the answer's SID tokens."""
    answers = ro.pool_sids[:, 0].numpy()  # (R, L)
    rows, spans = [], []
    for i, (p, t) in enumerate(zip(ro.prompt_ids, ro.thought_ids, strict=True)):
        sid = (answers[i] + sid_offsets).tolist() if answers[i, 0] >= 0 else []
        rows.append(p + t + close_ids + sid)
        # (start, count) of the thought actions and of the answer actions, in row coordinates
        spans.append(((len(p), len(t) + int(ro.stopped[i])), (len(p) + len(t) + 2, len(sid))))
    ids, mask = left_pad(rows, pad_id)
    width = ids.shape[1]
    counts = [a[1] + b[1] for a, b in spans]
    pos = torch.zeros(len(rows), max(1, max(counts)), dtype=torch.int64)
    keep = torch.zeros_like(pos, dtype=torch.bool)
    for i, (row, ((s1, n1), (s2, n2))) in enumerate(zip(rows, spans, strict=True)):
        pad = width - len(row)
        at = torch.cat([torch.arange(s1, s1 + n1), torch.arange(s2, s2 + n2)]) + pad
        pos[i, : len(at)] = at - 1
        keep[i, : len(at)] = True
    return ActionBatch(ids, mask, pos, keep)


def action_log_probs(model: PreTrainedModel, batch: ActionBatch) -> torch.Tensor:
    """(R, A, V) float32 next-token log-probabilities at the action positions."""
    decoder = model.get_decoder()
    head = model.get_output_embeddings()
    mask = batch.attention_mask
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    hidden = decoder(
        input_ids=batch.input_ids, attention_mask=mask, position_ids=pos, use_cache=False
    ).last_hidden_state  # (R, T, H)
    picked = hidden.gather(1, batch.action_pos[..., None].expand(-1, -1, hidden.shape[-1]))
    return torch.log_softmax(head(picked).float(), dim=-1)


def reverse_kl(student_logp: torch.Tensor, teacher_logp: torch.Tensor) -> torch.Tensor:
    """Per position KL(student ‖ teacher) = Σ_v p_s (log p_s - log p_t); (..., V) → (...)."""
    return (student_logp.exp() * (student_logp - teacher_logp)).sum(dim=-1)


def _domain_batches(
    prompts: Sequence[RLPrompt], domains: Sequence[str], per_step: int, seed: int, step: int
) -> list[RLPrompt]:
    rng = np.random.default_rng([seed, step, 17])
    per = max(1, per_step // len(domains))
    out: list[RLPrompt] = []
    for d in domains:
        pool = [p for p in prompts if p.domain == d]
        take = rng.choice(len(pool), size=per, replace=len(pool) < per)
        out += [pool[i] for i in take.tolist()]
    return out


def train_mopd(
    student: Reasoner,
    experts: Mapping[str, Reasoner],
    prompts: Sequence[RLPrompt],
    trie: SIDTrie,
    codes: np.ndarray,
    cfg: MOPDConfig,
    out_dir: Path,
    *,
    evaluate: EvalFn | None = None,
    resume: bool = True,
) -> MOPDResult:
    """Distill the domain experts into `student` (trained in place) on its own samples.

    Args:
        experts: domain → expert reasoner (same tokenizer as the student).
        prompts: thinking prompts of those domains (each routed to its domain's expert).
    """
    domains = sorted(experts)
    missing = sorted({p.domain for p in prompts} & set(domains))
    if not missing:
        raise DataError(f"no prompt belongs to the experts' domains {domains}")
    domains = missing
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available")
    device = torch.device(cfg.device)
    cast(nn.Module, student.model).to(device)
    for d, e in experts.items():
        cast(nn.Module, e.model).to(device)
        if e.vocab.vocab_size != student.vocab.vocab_size:
            raise ConfigError(f"expert {d!r} has another vocabulary than the student")
        e.model.eval()
        for p in e.model.parameters():
            p.requires_grad_(False)
    model = student.model
    for p in model.parameters():
        p.requires_grad_(True)
    opt = adamw(model, cfg.lr, 0.0, ())
    tok = student.tokenizer
    close = token_ids(tok, [cot_format.THINK_END, cot_format.ANSWER])
    offsets = sid_offsets_of(tok, trie.level_sizes)
    ro_cfg = RolloutConfig(
        group_size=1, lists_per_trace=1, list_size=1, pool_size=1, temperature=cfg.temperature,
        max_think_tokens=cfg.max_think_tokens, batch_size=max(cfg.minibatch_rows, 16),
    )  # fmt: skip
    last = out_dir / "last"
    step = 0
    if resume and (last / "trainer_state.json").is_file():
        state = load_trainer_state(last)
        loaded = type(model).from_pretrained(last, local_files_only=True, dtype=model.dtype)
        model.load_state_dict(loaded.state_dict())
        if not state.get("done"):
            restore_optimizer(last, opt)
        step = int(state["step"])  # type: ignore[call-overload]
    run_log = RunLog(out_dir, step)
    extra = tokenizer_files(tok, student.vocab)
    t0 = time.perf_counter()

    def run_eval() -> None:
        run_log.evaluate(step, model, None if evaluate is None else lambda: evaluate(student))

    def checkpoint(done: bool) -> None:
        state = {"stage": "mopd", "step": step, "done": done, "config": asdict(cfg)}
        save_checkpoint(last, model, opt, state, extra_files=extra)

    last_plot = time.perf_counter()
    plot_keys = (*MOPD_PLOT_KEYS, *(f"mopd/reverse_kl/{d}" for d in domains))
    if step == 0:
        run_eval()
    bar = progress(range(cfg.steps), total=cfg.steps, desc="mopd", unit="step")
    bar.update(step)
    while step < cfg.steps:
        t_step = time.perf_counter()
        batch_prompts = _domain_batches(prompts, domains, cfg.prompts_per_step, cfg.seed, step)
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        ro = rollout(
            student, batch_prompts, trie=trie, codes=codes, config=ro_cfg,
            reward=RewardConfig(), generator=gen,
        )  # fmt: skip
        ab = action_batch(ro, int(tok.pad_token_id), close, offsets)
        dom = np.asarray([p.domain for p in batch_prompts])
        model.train()
        kl_by_domain: dict[str, list[float]] = {d: [] for d in domains}
        for lo in range(0, ro.num_rows, cfg.minibatch_rows):
            rows = torch.arange(lo, min(lo + cfg.minibatch_rows, ro.num_rows))
            sub = ab.select(rows).to(device)
            s_logp = action_log_probs(model, sub)  # (r, A, V)
            t_logp = torch.empty_like(s_logp)
            with torch.no_grad():
                for d in domains:
                    mine = torch.from_numpy(np.flatnonzero(dom[rows.numpy()] == d)).to(device)
                    if len(mine):
                        t_logp[mine] = action_log_probs(experts[d].model, sub.select(mine))
            kl = reverse_kl(s_logp, t_logp)  # (r, A)
            loss = (kl * sub.action_mask).sum() / sub.action_mask.sum().clamp(min=1)
            loss.backward()
            if cfg.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_factor(step, cfg.steps, 0, 0.1)
            opt.step()
            opt.zero_grad(set_to_none=True)
            per_row = ((kl * sub.action_mask).sum(1) / sub.action_mask.sum(1).clamp(min=1)).detach()
            for j, r in enumerate(rows.tolist()):
                kl_by_domain[str(dom[r])].append(float(per_row[j]))
        step += 1
        record = {f"mopd/reverse_kl/{d}": float(np.mean(v)) for d, v in kl_by_domain.items() if v}
        record["mopd/reverse_kl"] = float(np.mean([x for v in kl_by_domain.values() for x in v]))
        record["rollout/think_tokens"] = float(ro.think_lengths().mean())
        record["rollout/hit_rate"] = float(ro.rewards.is_hit.mean())
        record["time/step_s"] = time.perf_counter() - t_step
        run_log.record(step, record)
        bar.update(1)
        bar.set_postfix(kl=f"{record['mopd/reverse_kl']:.3f}")
        if (cfg.eval_every and step % cfg.eval_every == 0) or step == cfg.steps:
            run_eval()
        if time.perf_counter() - last_plot > PLOT_EVERY_S and step < cfg.steps:
            plot_run(run_log.metrics, out_dir / "curves.png", "mopd", plot_keys)
            last_plot = time.perf_counter()
        if cfg.save_every and step % cfg.save_every == 0 and step < cfg.steps:
            checkpoint(done=False)
    bar.close()
    checkpoint(done=True)
    plot_run(run_log.metrics, out_dir / "curves.png", "mopd", plot_keys)
    run_log.close()
    cast(nn.Module, model).eval()
    final = out_dir / "final"
    student.save(final)
    return MOPDResult(step, final, time.perf_counter() - t0, run_log.history, run_log.last_eval)
