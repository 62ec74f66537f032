"""Training loop of the SASRec baseline: full-softmax cross-entropy, early stopping on valid.

Every prefix of every training sequence is a sample: a user's train items `x_1..x_n` are cut
into windows of at most `max_len + 1` items, counted back from the most recent one, and each
window trains all of its positions at once (position t predicts x_{t+1} from x_1..x_t, causal
attention). Windows do not overlap in their targets, so each train item (except a user's
first) is a target exactly once per epoch. The price of windows over the sliding alternative
(one sample per prefix): in a user's older windows (only users with more than max_len + 1
train items) a target sees only the items inside its window, fewer than max_len — on Amazon
Beauty 3,382 of 131,413 targets, on Office 288 of 38,543.

Loss: cross-entropy over the FULL catalogue at every real position. Selection: Recall@10 on
the validation targets (history = train items), full catalogue, every epoch; the best epoch's
weights are kept, saved and evaluated once on the test targets (history = train + valid item).
"""

from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from sid_index.datasets.splits import LeaveOneOutSplit, SequenceSamples
from sid_index.errors import ConfigError, DataError
from trainer.baselines.sasrec import PAD, SASRec, SASRecConfig, encode_items, save_sasrec
from trainer.metrics import RankingMetrics, ranking_metrics
from trainer.training_log import MetricsLog, progress

log = logging.getLogger(__name__)

MODEL_SUBDIR = "model"
LOG_NAME = "metrics.jsonl"
CURVE_NAME = "curves.png"


@dataclass(frozen=True, slots=True)
class SASRecTrainConfig:
    """Optimization and evaluation settings of one SASRec run."""

    model: SASRecConfig = field(default_factory=SASRecConfig)
    """Architecture."""
    lr: float = 1e-3
    """AdamW learning rate (constant)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay on weight matrices and embeddings (not biases/LayerNorm)."""
    batch_size: int = 128
    """Training windows (user sequences of <= max_len + 1 items) per step."""
    max_epochs: int = 200
    """Upper bound on epochs; early stopping normally ends the run sooner."""
    patience: int = 5
    """Stop after this many epochs without a better validation score."""
    select_metric: str = "recall@10"
    """Validation metric that picks the best epoch (a key of RankingMetrics.to_dict())."""
    ks: tuple[int, ...] = (5, 10)
    """Cut-offs of the reported metrics."""
    exclude_seen: bool = False
    """Drop history items from rankings (off: the standard Amazon leave-one-out protocol)."""
    eval_batch_size: int = 1024
    """Users per forward pass when ranking the full catalogue."""
    grad_clip: float = 1.0
    """Max global gradient norm; 0 disables clipping."""
    max_train_seconds: float = 0.0
    """Wall-clock budget for training (checked after each epoch); 0 means none."""
    seed: int = 0
    """Seed of initialization, dropout and shuffling."""
    num_threads: int = 0
    """torch intra-op threads; 0 uses every core the process may run on. On a shared machine
    use fewer: threads that wait for a core another process holds stall at every barrier
    (measured on the 2-core dev box under load: 2 threads trained ~6x slower than 1)."""
    show_progress: bool = True
    """Show a tqdm bar over epochs."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"{self.lr=} must be > 0")
        for name in ("weight_decay", "grad_clip", "max_train_seconds"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 0")
        for name in ("batch_size", "max_epochs", "patience", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.num_threads < 0:
            raise ConfigError(f"{self.num_threads=} must be >= 0")
        if not self.ks or min(self.ks) < 1:
            raise ConfigError(f"{self.ks=} must be non-empty cut-offs >= 1")
        valid_keys = {f"{m}@{k}" for m in ("recall", "ndcg") for k in self.ks}
        if self.select_metric not in valid_keys:
            raise ConfigError(f"{self.select_metric=} must be one of {sorted(valid_keys)}")

    def to_dict(self) -> dict[str, object]:
        """JSON-ready view (the model config nested under "model")."""
        out = asdict(self)
        out["ks"] = list(self.ks)
        return out


@dataclass(frozen=True, slots=True)
class SASRecResult:
    """Outcome of `train_sasrec`."""

    config: SASRecTrainConfig
    """The configuration that was trained."""
    model_dir: Path
    """safetensors + config.json of the best epoch's weights."""
    log_path: Path
    """JSONL per-epoch metrics."""
    curve_path: Path
    """PNG of the loss and validation curves."""
    best_epoch: int
    """1-based epoch with the best validation score."""
    epochs_run: int
    """Epochs actually trained (early stopping / time budget)."""
    valid: RankingMetrics
    """Validation metrics at the best epoch."""
    test: RankingMetrics
    """Test metrics at the best epoch (evaluated once)."""
    train_seconds: float
    """Wall-clock seconds of training + per-epoch validation."""
    num_threads: int
    """torch threads the run used."""

    def to_dict(self) -> dict[str, object]:
        return {
            "config": self.config.to_dict(),
            "model_dir": str(self.model_dir),
            "best_epoch": self.best_epoch,
            "epochs_run": self.epochs_run,
            "valid": self.valid.to_dict(),
            "test": self.test.to_dict(),
            "train_seconds": self.train_seconds,
            "num_threads": self.num_threads,
        }


def training_windows(
    indptr: np.ndarray, items: np.ndarray, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Input and target token matrices covering every next-item prediction of the train part.

    Returns:
        inputs, targets: (W, max_len) int64 tokens (item + 1, 0 = pad), left-padded and
        column-aligned: targets[w, t] is the item that follows inputs[w, :t + 1].
    """
    starts, ends = np.asarray(indptr[:-1]), np.asarray(indptr[1:])
    n_targets = np.maximum(ends - starts - 1, 0)
    per_user = -(-n_targets // max_len)  # ceil: windows per user, 0 for a 1-item sequence
    user = np.repeat(np.arange(len(starts)), per_user)  # (W,)
    # Window j of a user (j = 0 is the most recent) ends max_len * j items before the end.
    j = np.arange(len(user)) - np.repeat(np.cumsum(per_user) - per_user, per_user)
    win_end = ends[user] - max_len * j  # exclusive end of the window's targets
    win_start = np.maximum(starts[user], win_end - max_len - 1)
    inputs = encode_items(items, win_start, win_end - 1, max_len)
    targets = encode_items(items, win_start + 1, win_end, max_len)
    return inputs, targets


@torch.no_grad()
def evaluate(
    model: SASRec,
    samples: SequenceSamples,
    *,
    ks: tuple[int, ...] = (5, 10),
    exclude_seen: bool = False,
    batch_size: int = 1024,
) -> RankingMetrics:
    """Rank the full catalogue after each sample's history and score against its target.

    Args:
        model: a trained SASRec (put in eval mode here).
        samples: histories + targets, e.g. `split.valid_inputs()` or `split.test_inputs()`.
        ks: metric cut-offs; the model ranks the top max(ks).
        exclude_seen: drop history items (within the model's max_len window) from rankings.
        batch_size: samples per forward pass.
    """
    model.eval()
    tokens = encode_items(
        samples.items, samples.indptr[:-1], samples.indptr[1:], model.config.max_len
    )  # (U, T)
    k = max(ks)
    parts = []
    for lo in range(0, len(tokens), batch_size):
        batch = _trim(torch.from_numpy(tokens[lo : lo + batch_size]))
        parts.append(model.recommend(batch, k, exclude_seen=exclude_seen).numpy())
    topk = np.concatenate(parts) if parts else np.zeros((0, k), dtype=np.int64)
    return ranking_metrics(topk, samples.targets, ks)


def _trim(tokens: torch.Tensor) -> torch.Tensor:
    """Drop leading columns that are padding in every row: (B, T) → (B, T')."""
    filled = int((tokens != PAD).sum(dim=1).max()) if len(tokens) else 1
    return tokens[:, tokens.shape[1] - max(filled, 1) :]


def train_sasrec(
    split: LeaveOneOutSplit, config: SASRecTrainConfig, out_dir: Path | str, *, num_items: int
) -> SASRecResult:
    """Train SASRec with early stopping on validation and evaluate the best epoch on test.

    Args:
        split: the leave-one-out split (train parts, valid and test targets).
        config: model and optimization settings.
        out_dir: receives `model/` (best weights), `metrics.jsonl` and `curves.png`.
        num_items: catalogue size N (`len(dataset.catalog)`); every item is ranked.
    """
    every = np.concatenate([split.train_items, split.valid_targets, split.test_targets])
    if every.size and (int(every.min()) < 0 or int(every.max()) >= num_items):
        raise DataError(
            f"split references items outside the catalogue of {num_items=}: "
            f"min={int(every.min())} max={int(every.max())}"
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(config.num_threads or len(os.sched_getaffinity(0)))
    try:
        return _train(split, config, out, num_items)
    finally:
        torch.set_num_threads(threads_before)


def _train(
    split: LeaveOneOutSplit, config: SASRecTrainConfig, out: Path, num_items: int
) -> SASRecResult:
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    model = SASRec(config.model, num_items)
    inputs, targets = training_windows(split.train_indptr, split.train_items, config.model.max_len)
    if len(inputs) == 0:
        raise DataError("no training samples: every train sequence has fewer than 2 items")
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )

    max_len = config.model.max_len
    valid_inputs, test_inputs = split.valid_inputs(max_len), split.test_inputs(max_len)

    def rank_eval(samples: SequenceSamples) -> RankingMetrics:
        return evaluate(
            model,
            samples,
            ks=config.ks,
            exclude_seen=config.exclude_seen,
            batch_size=config.eval_batch_size,
        )

    best_score, best_epoch, best_state = -1.0, 0, copy.deepcopy(model.state_dict())
    best_valid: RankingMetrics | None = None
    step, epoch = 0, 0
    t0 = time.perf_counter()
    log_path = out / LOG_NAME
    with MetricsLog(log_path) as mlog:
        bar = progress(
            range(1, config.max_epochs + 1),
            desc="sasrec",
            unit="epoch",
            disable=not config.show_progress,
        )
        for epoch in bar:
            model.train()
            perm = rng.permutation(len(inputs))
            loss_sum, n_targets = 0.0, 0
            for lo in range(0, len(perm), config.batch_size):
                idx = perm[lo : lo + config.batch_size]
                x = _trim(torch.from_numpy(inputs[idx]))  # (B, T')
                y = torch.from_numpy(targets[idx][:, -x.shape[1] :])  # (B, T')
                real = y != PAD
                hidden = model(x)[real]  # (M, d): only positions with a target
                loss = F.cross_entropy(model.item_logits(hidden), y[real] - 1)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.grad_clip:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                optimizer.step()
                step += 1
                loss_sum += float(loss.detach()) * int(real.sum())
                n_targets += int(real.sum())
            valid = rank_eval(valid_inputs)
            score = float(valid.to_dict()[config.select_metric])
            train_loss = loss_sum / n_targets
            valid_row = {f"valid/{k}": float(v) for k, v in valid.to_dict().items()}
            valid_row.pop("valid/num_users")
            mlog.log(step, {"train/loss": train_loss, **valid_row}, epoch=epoch)
            bar.set_postfix(loss=f"{train_loss:.3f}", **{config.select_metric: f"{score:.4f}"})
            if score > best_score:
                best_score, best_epoch, best_valid = score, epoch, valid
                best_state = copy.deepcopy(model.state_dict())
            if epoch - best_epoch >= config.patience:
                break
            if config.max_train_seconds and time.perf_counter() - t0 > config.max_train_seconds:
                log.info("sasrec: time budget of %.0fs reached", config.max_train_seconds)
                break
        train_seconds = time.perf_counter() - t0
        curve_path = mlog.plot(out / CURVE_NAME, title=f"SASRec ({num_items} items)")

    model.load_state_dict(best_state)
    model_dir = save_sasrec(model, out / MODEL_SUBDIR)
    test = rank_eval(test_inputs)
    assert best_valid is not None  # at least one epoch always runs
    return SASRecResult(
        config=config,
        model_dir=model_dir,
        log_path=log_path,
        curve_path=curve_path,
        best_epoch=best_epoch,
        epochs_run=epoch,
        valid=best_valid,
        test=test,
        train_seconds=train_seconds,
        num_threads=torch.get_num_threads(),
    )
