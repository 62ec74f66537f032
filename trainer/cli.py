"""`reasonrec train …` and `reasonrec eval`: train models into a release, evaluate them.

reasonrec train fast --release R [--teacher rule] [--epochs 20] ...
reasonrec eval --release R [--teachers none,rule] [--baselines popular,sasrec] ...
reasonrec train reasoner-align / reasoner-sft: see trainer/reasoner_cli.py
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def register(subparsers: Any) -> None:
    """Add the `train` group and the `eval` command."""
    train = subparsers.add_parser("train", help="train the fast model, the reasoner, baselines")
    tsub = train.add_subparsers(dest="train_command", metavar="MODEL")
    train.set_defaults(handler=lambda a: (train.print_help(), 2)[1])

    fast = tsub.add_parser(
        "fast",
        help="train the fast SID decoder into a release",
        description="Train the fast model (a small decoder over SID, persona and interest "
        "tokens) with trace dropout, and add it to the release as fast_model/.",
    )
    fast.add_argument("--release", type=Path, required=True, help="release with a sid_index")
    fast.add_argument("--dataset", help="dataset spec (default: the one the release recorded)")
    _teacher_arg(fast, default="rule")
    fast.add_argument("--epochs", type=int, default=20)
    fast.add_argument("--batch-size", type=int, default=64)
    fast.add_argument("--lr", type=float, default=2e-3)
    fast.add_argument("--hidden-size", type=int, default=128)
    fast.add_argument("--layers", type=int, default=2)
    fast.add_argument("--heads", type=int, default=4)
    fast.add_argument("--max-items", type=int, default=30, help="history window in items")
    fast.add_argument("--trace-dropout", type=float, default=0.2)
    fast.add_argument(
        "--item-tokens",
        type=_item_tokens_arg,
        default=0,
        metavar="none|all|N",
        help="an item token after every history item's SID: 'all' = one per catalogue item, "
        "N = items hashed into N buckets (bounded table for huge catalogues); default none",
    )
    fast.add_argument(
        "--hidden-dropout",
        type=float,
        default=0.0,
        help="training-only dropout on embeddings and attention/MLP outputs",
    )
    fast.add_argument("--label-smoothing", type=float, default=0.0)
    fast.add_argument(
        "--item-loss-weight",
        type=float,
        default=0.0,
        help="with --item-tokens: also train an item head (softmax over item tokens) and "
        "re-rank the SID beam with it (validation, eval and serving; fast_path/item_head.py)",
    )
    fast.add_argument(
        "--trace-cuts",
        type=int,
        help="fixed trace cuts per user, traces decoded in batches before training "
        "(default: 2 for --teacher reasoner, else 0 = a fresh random cut every time)",
    )
    fast.add_argument("--weight-decay", type=float, default=0.05)
    fast.add_argument("--patience", type=int, default=3)
    fast.add_argument("--eval-users", type=int, default=1000, help="validation subset size")
    fast.add_argument("--beams", type=int, default=20)
    fast.add_argument("--mixed-precision", choices=("no", "bf16"), default="no")
    fast.add_argument("--device", default="cpu")
    fast.add_argument("--seed", type=int, default=0)
    fast.add_argument("--work-dir", type=Path, help="checkpoints/logs (default: RELEASE.runs/fast)")
    fast.add_argument("--no-resume", action="store_true", help="ignore an earlier checkpoint")
    fast.set_defaults(handler=_train_fast)

    from trainer.reasoner_cli import add_train_commands
    from trainer.rl.cli import add_train_commands as add_rl_commands

    add_train_commands(tsub)
    add_rl_commands(tsub)

    ev = subparsers.add_parser(
        "eval",
        help="leave-one-out, full-catalogue evaluation of a release (and baselines)",
        description="Recall/NDCG@5/10 over the full catalogue (constrained decoding over every "
        "item), with and without traces, plus baselines trained on the same split.",
    )
    ev.add_argument("--release", type=Path, required=True)
    ev.add_argument("--dataset", help="dataset spec (default: the one the release recorded)")
    ev.add_argument("--split", choices=("valid", "test"), default="test")
    ev.add_argument(
        "--item-head-weight",
        type=float,
        help="re-rank the fast model's beam with its item head (0: the SID beam alone; "
        "default: the value the release recorded, what the fast path serves)",
    )
    ev.add_argument(
        "--teachers",
        default="none,rule",
        help=f"comma-separated trace sources to evaluate the fast model with "
        f"(from {', '.join(_teachers())})",
    )
    ev.add_argument("--baselines", default="popular", help="comma list: popular, sasrec, none")
    ev.add_argument("--beams", type=int, default=20)
    ev.add_argument("--limit", type=int, help="evaluate a random subset of this many users")
    ev.add_argument("--tiers", default="", help="reasoner tiers, comma list of r0,r1,r2,r3")
    ev.add_argument(
        "--modes", default="thinking,nonthinking", help="reasoner modes for the r2/r3 tiers"
    )
    ev.add_argument("--max-think-tokens", type=int, help="reasoner thinking budget")
    ev.add_argument("--out", type=Path, help="JSON results (default: RELEASE.runs/eval.json)")
    ev.add_argument("--markdown", type=Path, help="Markdown table (default: next to --out)")
    ev.set_defaults(handler=_eval)


def _teachers() -> tuple[str, ...]:
    from trainer.pipeline import TEACHERS

    return TEACHERS


def _teacher_arg(p: argparse.ArgumentParser, default: str) -> None:
    p.add_argument(
        "--teacher",
        default=default,
        help="trace source while training: none | dominant | oracle (synthetic only) | rule | "
        "reasoner (the release's reasoner, one generation per new history: slow on CPU)",
    )


def _item_tokens_arg(value: str) -> int:
    """`--item-tokens`: 'none' → 0, 'all' → -1 (the catalogue size, resolved later), N → N."""
    if value in ("none", "all"):
        return 0 if value == "none" else -1
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not 'none', 'all' or a count") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{value!r}: the bucket count must be >= 0")
    return n


def _runs_dir(release: Path) -> Path:
    return release.parent / f"{release.name}.runs"


def _train_fast(args: argparse.Namespace) -> int:
    import torch

    from fast_path.fast_model import FastModel, FastModelConfig, build_model
    from fast_path.vocab import FastVocab
    from sid_index.release import ReleaseWriter
    from trainer.fast_eval import evaluate_fast
    from trainer.fast_trainer import FastTrainConfig, init_distributed_from_env, train_fast_model
    from trainer.pipeline import build_teacher, open_workspace

    distributed = init_distributed_from_env()
    rank = torch.distributed.get_rank() if distributed else 0
    ws = open_workspace(args.release, args.dataset)
    teacher = build_teacher(args.teacher, ws)
    torch.manual_seed(args.seed)
    num_personas = (
        max(32, int(ws.dataset.personas.max()) + 1) if ws.dataset.personas is not None else 32
    )
    item_buckets = len(ws.codes) if args.item_tokens == -1 else args.item_tokens
    vocab = FastVocab(
        ws.index.sids.level_sizes, num_personas=num_personas, item_buckets=item_buckets
    )
    model_cfg = FastModelConfig(
        hidden_size=args.hidden_size,
        num_layers=args.layers,
        num_heads=args.heads,
        num_kv_heads=args.heads,
        intermediate_size=3 * args.hidden_size,
    )
    train_cfg = FastTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        max_items=args.max_items,
        trace_dropout=args.trace_dropout,
        hidden_dropout=args.hidden_dropout,
        trace_cuts=(
            args.trace_cuts
            if args.trace_cuts is not None
            else (2 if args.teacher == "reasoner" else 0)
        ),
        label_smoothing=args.label_smoothing,
        item_loss_weight=args.item_loss_weight,
        weight_decay=args.weight_decay,
        patience=args.patience,
        mixed_precision=args.mixed_precision,
        seed=args.seed,
    )
    device = torch.device(args.device)
    fm = FastModel(build_model(vocab, model_cfg).to(device), vocab, model_cfg)  # type: ignore[arg-type]
    valid = ws.split.valid_inputs(args.max_items)
    valid_users = ws.split.user_index[valid.users]

    # A model with an item head is decoded (validated, evaluated, served) with it.
    head_weight = 1.0 if args.item_loss_weight > 0 else 0.0

    def validate(model: FastModel) -> dict[str, float]:
        out: dict[str, float] = {}
        runs = [(teacher, head_weight, "")]  # (trace source, item-head weight, metric suffix)
        if teacher is not None:
            runs.append((None, head_weight, "_notrace"))
        if head_weight > 0:
            runs.append((None, 0.0, "_sid"))  # the SID beam alone, for comparison
        for t, weight, suffix in runs:
            m = evaluate_fast(
                model,
                ws.index.trie,
                ws.codes,
                valid,
                valid_users,
                t,
                num_beams=args.beams,
                limit=args.eval_users,
                max_items=args.max_items,
                item_head_weight=weight,
            )
            out.update(
                {f"valid/{k}{suffix}": v for k, v in m.to_dict().items() if k != "num_users"}
            )
        return out

    work = args.work_dir or _runs_dir(args.release) / "fast"
    result = train_fast_model(
        fm,
        ws.codes,
        ws.split.user_index,
        ws.train_sequences(),
        teacher,
        train_cfg,
        work,
        validate,
        resume=not args.no_resume,
    )
    if distributed:
        torch.distributed.destroy_process_group()
    if rank != 0:
        return 0
    best = FastModel.load(work / "best")
    with ReleaseWriter(args.release, base=ws.release) as writer:
        best.save(writer.part_dir("fast_model"))
        writer.set_config(
            "fast_model",
            {
                "model": _asdict(model_cfg),
                "train": _asdict(train_cfg),
                "teacher": args.teacher,
                "max_items": args.max_items,  # the history window the fast path must use
                "item_buckets": item_buckets,
                "item_head_weight": head_weight,  # decode default (fast_path/item_head.py)
            },
        )
        writer.set_metrics(
            "fast_model",
            {
                **result.best_metrics,
                "best_epoch": result.best_epoch,
                "epochs_run": result.epochs_run,
                "train_seconds": round(result.train_seconds, 1),
            },
        )
    print(
        f"fast model: best epoch {result.best_epoch}/{result.epochs_run}, "
        f"{json.dumps({k: round(v, 4) for k, v in result.best_metrics.items()})}"
    )
    print(f"curves: {work / 'curves.png'}  log: {work / 'metrics.jsonl'}")
    print(f"release updated: {args.release}")
    return 0


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


def _eval(args: argparse.Namespace) -> int:
    from trainer.evaluation import EvalRequest, run_evaluation, to_markdown

    request = EvalRequest(
        release=args.release,
        dataset=args.dataset,
        split=args.split,
        teachers=tuple(t for t in args.teachers.split(",") if t),
        baselines=tuple(b for b in args.baselines.split(",") if b and b != "none"),
        beams=args.beams,
        limit=args.limit,
        tiers=tuple(t for t in args.tiers.split(",") if t),
        modes=tuple(m for m in args.modes.split(",") if m),
        max_think_tokens=args.max_think_tokens,
        item_head_weight=args.item_head_weight,
    )
    report = run_evaluation(request)
    out = args.out or _runs_dir(args.release) / f"eval-{args.split}.json"
    md = args.markdown or out.with_suffix(".md")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    md.write_text(to_markdown(report))
    print(to_markdown(report))
    print(f"written: {out}, {md}")
    return 0
