"""Training loop of the fast model (`reasonrec train fast`).

Every user's train sequence is one training example: the whole window is fed at once and the
loss covers every item's SID tokens (each prefix predicts its next item, as in SASRec). With
probability `1 - trace_dropout` a trace is computed by the teacher from the first `c` items and
inserted after them (`fast_path/prompt.py`), so positions after `c` learn "with trace" and
positions before it — and every position of a dropped-trace example — learn "no trace". One
model therefore serves both modes (cold start, Redis miss).

Runs unchanged under `torchrun` (DDP, gloo on CPU / nccl on GPU): users are sharded by rank,
rank 0 validates, checkpoints and decides early stopping for everyone.
"""

from __future__ import annotations

import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.utils.hooks import RemovableHandle

from fast_path.fast_model import FastModel
from fast_path.prompt import encode
from fast_path.vocab import PAD, FastVocab
from sid_index.errors import ConfigError
from trainer.checkpoint import load_trainer_state, restore_optimizer, save_checkpoint
from trainer.teachers import TraceTeacher
from trainer.training_log import MetricsLog, progress

log = logging.getLogger(__name__)

EvalFn = Callable[[FastModel], dict[str, float]]
"""Validation callback: metrics of the current model, must include `select_metric`."""


@dataclass(frozen=True, slots=True)
class FastTrainConfig:
    """Optimisation settings of the fast model."""

    epochs: int = 30
    """Maximum number of passes over the users."""
    batch_size: int = 64
    """Users per optimizer step (per process under DDP)."""
    grad_accum: int = 1
    """Micro-batches accumulated per optimizer step."""
    lr: float = 2e-3
    """Peak AdamW learning rate (linear warm-up, cosine decay)."""
    weight_decay: float = 0.05
    """AdamW weight decay."""
    warmup_steps: int = 100
    """Linear warm-up steps."""
    max_items: int = 30
    """Longest history window in items (the most recent ones are kept)."""
    trace_dropout: float = 0.2
    """Probability that an example is trained without a trace (positions before the trace
    train the no-trace mode too, so this can stay small)."""
    min_trace_frac: float = 0.0
    """The trace covers at least this fraction of the window (the rest follows it). Low
    values put more positions after the trace, which is where its use is learned: on
    synthetic data 0.0 learned the persona signal about twice as fast as 0.5."""
    trace_cuts: int = 0
    """0: a fresh random trace cut per example and epoch. K > 0: each user gets K cuts, drawn
    once (seeded), and examples pick among them — so the teacher's traces can be decoded once,
    in batches, before training (`precompute_traces`; what makes a reasoner teacher practical
    on a CPU: a reasoner decodes a thought per history)."""
    patience: int = 4
    """Stop after this many validations without improvement."""
    select_metric: str = "valid/recall@10"
    """Validation metric for early stopping and the best checkpoint."""
    hidden_dropout: float = 0.0
    """Training-only dropout on the token embeddings and on every attention and MLP output
    before it joins the residual stream (as SASRec and GPT-2 do). Llama/Qwen2 configs have no
    such option, so it is added by forward hooks that are removed after training: the saved
    model is a plain HF model."""
    label_smoothing: float = 0.0
    """Label smoothing of the next-token cross-entropy."""
    item_loss_weight: float = 0.0
    """Weight of the item-head loss (needs item tokens): wherever the next item's first SID
    token is predicted, the same hidden state also predicts that item's *item token* with a
    softmax over the item tokens (SASRec's full-softmax objective through the tied item-token
    embeddings). Decoding can then re-rank the beam with it (`fast_path/item_head.py`)."""
    mixed_precision: str = "no"
    """"no" or "bf16" (autocast)."""
    seed: int = 0
    """Seed of data order, trace cuts and dropout."""

    def __post_init__(self) -> None:
        if self.trace_cuts < 0:
            raise ConfigError(f"{self.trace_cuts=} must be >= 0")
        if min(self.epochs, self.batch_size, self.grad_accum, self.max_items) < 1:
            raise ConfigError("epochs, batch_size, grad_accum and max_items must be >= 1")
        if not 0.0 <= self.trace_dropout <= 1.0:
            raise ConfigError(f"{self.trace_dropout=} must be in [0, 1]")
        if not 0.0 <= self.min_trace_frac <= 1.0:
            raise ConfigError(f"{self.min_trace_frac=} must be in [0, 1]")
        if not 0.0 <= self.hidden_dropout < 1.0:
            raise ConfigError(f"{self.hidden_dropout=} must be in [0, 1)")
        if self.item_loss_weight < 0:
            raise ConfigError(f"{self.item_loss_weight=} must be >= 0")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"{self.label_smoothing=} must be in [0, 1)")
        if self.mixed_precision not in ("no", "bf16"):
            raise ConfigError(f"{self.mixed_precision=} must be 'no' or 'bf16'")
        if self.lr <= 0:
            raise ConfigError(f"{self.lr=} must be > 0")


@dataclass
class FastTrainResult:
    """Outcome of a training run."""

    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    train_seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def make_batch(
    fm: FastModel,
    codes: np.ndarray,
    users: Sequence[int],
    sequences: Sequence[np.ndarray],
    teacher: TraceTeacher | None,
    cfg: FastTrainConfig,
    rng: np.random.Generator,
    cut_choices: Sequence[np.ndarray] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Encode a batch of users' train sequences with random trace cuts.

    `cut_choices` (per user, from `draw_trace_cuts`) restricts each user's cut to a few fixed
    positions; without it any cut in the window may be drawn.

    Returns:
        input_ids (B, T), attention_mask (B, T), labels (B, T) with -100 everywhere except
        on the history items' SID tokens (never on trace or item tokens).
    """
    L = codes.shape[-1]  # SID tokens per item (the vocabulary's levels, or a prefix of them)
    per_item = L + (1 if fm.vocab.item_buckets else 0)
    rows: list[np.ndarray] = []
    label_rows: list[np.ndarray] = []
    for i, (u, seq) in enumerate(zip(users, sequences, strict=True)):
        start = max(0, len(seq) - cfg.max_items)
        window = seq[start:]
        n = len(window)
        trace = None
        cut = n
        if teacher is not None and n >= 2 and rng.random() >= cfg.trace_dropout:
            if cut_choices is not None:
                cut = int(rng.choice(cut_choices[i]))
            else:
                cut = _random_cut(n, cfg.min_trace_frac, rng)
            trace = teacher.trace(int(u), seq[: start + cut])
        tokens = encode(fm.vocab, codes[window], trace, cut, items=window)
        # Per item: L SID tokens (labelled) then, with item tokens, one unlabelled token.
        in_item = np.tile(np.arange(per_item) < L, n)
        is_item = np.concatenate([[False], in_item])  # <bos>
        if trace is not None:
            t0 = 1 + cut * per_item
            trace_len = len(tokens) - 1 - n * per_item
            is_item = np.concatenate([is_item[:t0], np.zeros(trace_len, bool), is_item[t0:]])
        rows.append(tokens)
        label_rows.append(np.where(is_item, tokens, -100))
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), PAD, dtype=np.int64)
    labels = np.full((len(rows), width), -100, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, (r, lab) in enumerate(zip(rows, label_rows, strict=True)):
        ids[i, : len(r)] = r
        labels[i, : len(r)] = lab
        mask[i, : len(r)] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(labels)


def _random_cut(n: int, min_frac: float, rng: np.random.Generator) -> int:
    """A trace cut in a window of n >= 2 items: the trace covers [0, cut), 1 <= cut <= n - 1."""
    lo = max(1, math.ceil(min_frac * n))
    return int(rng.integers(lo, n)) if lo < n else n - 1


def draw_trace_cuts(
    sequences: Sequence[np.ndarray], cfg: FastTrainConfig, seed: int
) -> list[np.ndarray]:
    """`cfg.trace_cuts` distinct window-relative cuts per user (fewer when the window is short;
    empty when it has < 2 items)."""
    rng = np.random.default_rng([seed, 7])
    out = []
    for seq in sequences:
        n = min(len(seq), cfg.max_items)
        cuts = (
            {_random_cut(n, cfg.min_trace_frac, rng) for _ in range(cfg.trace_cuts)}
            if n >= 2
            else set()
        )
        out.append(np.array(sorted(cuts), dtype=np.int64))
    return out


def precompute_teacher_traces(
    teacher: TraceTeacher,
    sequences: Sequence[np.ndarray],
    cuts: Sequence[np.ndarray],
    max_items: int,
    *,
    show_progress: bool = False,
) -> int:
    """Decode in batches the traces `make_batch` will ask for (teachers with a
    `precompute_traces` method, e.g. the reasoner); returns how many histories were sent."""
    precompute = getattr(teacher, "precompute_traces", None)
    if precompute is None:
        return 0
    histories = []
    for seq, cs in zip(sequences, cuts, strict=True):
        start = max(0, len(seq) - max_items)
        histories += [seq[: start + int(c)] for c in cs]
    precompute(histories, show_progress=show_progress)
    return len(histories)


def add_dropout_hooks(model: torch.nn.Module, p: float) -> list[RemovableHandle]:
    """Dropout on the embeddings and on each attention/MLP output (training mode only).

    Hooks the modules by their Llama/Qwen2 names (`embed_tokens`, `o_proj`, `down_proj`);
    returns the handles so the caller can remove them.
    """
    if p <= 0.0:
        return []

    def hook(module: torch.nn.Module, _inputs: object, output: torch.Tensor) -> torch.Tensor:
        return F.dropout(output, p, training=module.training)

    names = ("embed_tokens", "o_proj", "down_proj")
    handles = [
        m.register_forward_hook(hook)
        for name, m in model.named_modules()
        if name.rsplit(".", 1)[-1] in names
    ]
    if len(handles) < 3:
        raise ConfigError(f"hidden_dropout: found only {len(handles)} of {names} in the model")
    return handles


class DecodableLogits(torch.nn.Module):
    """The fast model's forward pass with logits over the decodable vocabulary only.

    Item tokens (`FastVocab.item_buckets`) are read but never decoded, so the output layer
    skips them: no softmax mass spent on thousands of impossible tokens, and no gradient
    pushing their (tied) input embeddings away from the hidden states. Without item tokens
    this is the plain HF forward. With `item_rows/item_cols`, the hidden states at those
    positions are also scored against every item token (the item head's training logits).
    """

    def __init__(self, lm: torch.nn.Module, decodable: int) -> None:
        super().__init__()
        self.lm = lm
        self.decodable = decodable

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        item_rows: torch.Tensor | None = None,
        item_cols: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        head = self.lm.get_output_embeddings()
        if self.decodable >= head.weight.shape[0]:
            return self.lm(input_ids=input_ids, attention_mask=attention_mask).logits, None
        hidden = self.lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask)
        h = hidden.last_hidden_state
        logits = F.linear(h, head.weight[: self.decodable])
        if item_rows is None or item_cols is None:
            return logits, None
        return logits, F.linear(h[item_rows, item_cols], head.weight[self.decodable :])


def item_head_targets(
    vocab: FastVocab, ids: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where the item head trains, from a `make_batch` batch with item tokens.

    Returns:
        rows, cols: positions whose next token is an item's first SID token (`<bos>`, an
            item token or `</trace>`: the positions that start decoding an item);
        targets: that item's item-token index (0..item_buckets-1), read off the item token
            L positions after its first SID token.
    """
    first = int(vocab.sid_offsets[0])
    starts = (labels >= first) & (labels < first + vocab.level_sizes[0])
    rows, cols = starts.nonzero(as_tuple=True)
    targets = ids[rows, cols + vocab.num_levels] - vocab.item_offset
    return rows, cols - 1, targets


def next_token_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Mean cross-entropy of token t+1 given tokens <= t over labelled positions (-100 skips)."""
    return F.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, 1:].reshape(-1),
        ignore_index=-100,
        label_smoothing=label_smoothing,
    )


def _lr_lambda(cfg: FastTrainConfig, total_steps: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        frac = (step - cfg.warmup_steps) / max(1, total_steps - cfg.warmup_steps)
        return 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))

    return f


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed_from_env() -> bool:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); True if joined."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend=backend)
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    return True


def train_fast_model(
    fm: FastModel,
    codes: np.ndarray,
    users: np.ndarray,
    sequences: Sequence[np.ndarray],
    teacher: TraceTeacher | None,
    cfg: FastTrainConfig,
    out_dir: Path,
    evaluate: EvalFn,
    *,
    resume: bool = True,
) -> FastTrainResult:
    """Train `fm` in place; the best model (by `cfg.select_metric`) ends in `out_dir/best`.

    Args:
        codes: (N, L) SID codes of the catalogue.
        users: (U,) user indices (for the teacher) of the training sequences.
        sequences: per user, the train part of the sequence (catalogue indices, oldest first).
        teacher: trace source; None trains a no-trace model.
        evaluate: validation callback, called on rank 0 after every epoch.
        resume: continue from `out_dir/last` when it exists.
    """
    if cfg.item_loss_weight > 0 and not fm.vocab.item_buckets:
        raise ConfigError("item_loss_weight > 0 needs a fast vocabulary with item tokens")
    rank, world = _dist_info()
    device = next(fm.model.parameters()).device
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    model: torch.nn.Module = DecodableLogits(fm.model, fm.vocab.item_offset)
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    opt = torch.optim.AdamW(fm.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    order = np.arange(len(sequences))
    shard = order[rank::world]
    # DDP needs the same number of steps on every rank: short shards repeat a few users.
    per_rank = math.ceil(len(order) / world)
    shard = np.concatenate([shard, shard[: per_rank - len(shard)]])
    steps_per_epoch = max(1, math.ceil(len(shard) / (cfg.batch_size * cfg.grad_accum)))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, _lr_lambda(cfg, cfg.epochs * steps_per_epoch))

    state: dict[str, object] = {"epoch": 0, "step": 0, "best": -1.0, "best_epoch": -1, "bad": 0}
    last = out_dir / "last"
    if resume and (last / "trainer_state.json").is_file():
        state = load_trainer_state(last)
        loaded = type(fm.model).from_pretrained(last, local_files_only=True)
        fm.model.load_state_dict(loaded.state_dict())
        restore_optimizer(last, opt)
        with warnings.catch_warnings():  # fast-forwarding the schedule, no optimizer step due
            warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
            for _ in range(int(state["step"])):  # type: ignore[call-overload]
                sched.step()
        log.info("resumed from %s at epoch %s", last, state["epoch"])

    cuts = None
    if teacher is not None and cfg.trace_cuts > 0:
        cuts = draw_trace_cuts(sequences, cfg, cfg.seed)
        mine = np.unique(shard)
        sent = precompute_teacher_traces(
            teacher, [sequences[j] for j in mine], [cuts[j] for j in mine], cfg.max_items,
            show_progress=rank == 0,
        )  # fmt: skip
        log.info("trace cuts: %d per user, %d histories precomputed", cfg.trace_cuts, sent)
    hooks = add_dropout_hooks(fm.model, cfg.hidden_dropout)
    metrics_log = MetricsLog(out_dir / "metrics.jsonl", append=resume and int(state["epoch"]) > 0)  # type: ignore[call-overload]
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    try:
        epoch = int(state["epoch"])  # type: ignore[call-overload]
        while epoch < cfg.epochs and int(state["bad"]) < cfg.patience:  # type: ignore[call-overload]
            rng = np.random.default_rng([cfg.seed, epoch, rank])
            perm = rng.permutation(shard)
            model.train()
            losses: list[float] = []
            micro = cfg.batch_size
            batches = [perm[i : i + micro] for i in range(0, len(perm), micro)]
            bar = progress(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0)
            for i, idx in enumerate(bar):
                ids, mask, labels = make_batch(
                    fm, codes, users[idx], [sequences[j] for j in idx], teacher, cfg, rng,
                    None if cuts is None else [cuts[j] for j in idx],
                )  # fmt: skip
                ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
                with torch.autocast(
                    device.type, dtype=torch.bfloat16, enabled=cfg.mixed_precision == "bf16"
                ):
                    rows = cols = targets = None
                    if cfg.item_loss_weight > 0:
                        rows, cols, targets = item_head_targets(fm.vocab, ids, labels)
                    logits, item_logits = model(ids, mask, rows, cols)
                    loss = next_token_loss(logits, labels, cfg.label_smoothing)
                    if item_logits is not None:
                        item_loss = F.cross_entropy(item_logits.float(), targets)
                        loss = loss + cfg.item_loss_weight * item_loss
                (loss / cfg.grad_accum).backward()
                if (i + 1) % cfg.grad_accum == 0 or i + 1 == len(batches):
                    torch.nn.utils.clip_grad_norm_(fm.model.parameters(), 1.0)
                    opt.step()
                    sched.step()
                    opt.zero_grad(set_to_none=True)
                    state["step"] = int(state["step"]) + 1  # type: ignore[call-overload]
                losses.append(loss.item())
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}")
            epoch += 1
            stop = torch.zeros(1)
            if rank == 0:
                fm.model.eval()
                metrics = {"train/loss": float(np.mean(losses)), **evaluate(fm)}
                metrics_log.log(int(state["step"]), metrics, epoch=epoch)  # type: ignore[call-overload]
                history.append(metrics)
                score = metrics[cfg.select_metric]
                log.info("epoch %d: %s", epoch, {k: round(v, 4) for k, v in metrics.items()})
                if score > float(state["best"]):  # type: ignore[arg-type]
                    state.update(best=score, best_epoch=epoch, bad=0, best_metrics=metrics)
                    fm.save(out_dir / "best")
                else:
                    state["bad"] = int(state["bad"]) + 1  # type: ignore[call-overload]
                state["epoch"] = epoch
                save_checkpoint(last, fm.model, opt, state)
                metrics_log.plot(out_dir / "curves.png", title="fast model")
                stop[0] = float(int(state["bad"]) >= cfg.patience)  # type: ignore[call-overload]
            if world > 1:
                dist.broadcast(stop, src=0)
            if stop.item():
                break
    finally:
        for h in hooks:
            h.remove()
    metrics_log.close()
    return FastTrainResult(
        best_epoch=int(state["best_epoch"]),  # type: ignore[call-overload]
        best_metrics=dict(state.get("best_metrics", {})),  # type: ignore[call-overload]
        epochs_run=epoch,
        train_seconds=time.perf_counter() - t0,
        history=history,
    )
