"""Baselines benchmark: most-popular and a tuned SASRec on Amazon Office and Beauty (by hand).

    .venv/bin/python -m benchmarks.baselines                      # both datasets, write RESULTS.md
    .venv/bin/python -m benchmarks.baselines --datasets office --no-write

Protocol: leave-one-out (last item = test, second-to-last = valid, every prefix of the rest
is a training sample), Recall/NDCG@5/10 over the FULL catalogue, history not excluded from the
rankings (the standard on the Amazon 5-core sets; most-popular is also reported with history
excluded, for reference). SASRec hyper-parameters are chosen on validation Recall@10 only;
the selected run's test metrics, at its best validation epoch, are the reported numbers.
Every run's artifacts (weights, metrics.jsonl, curves.png, summary.json) go under --out.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import torch

from benchmarks.results_file import replace_section
from sid_index.datasets.registry import load_dataset
from sid_index.datasets.splits import leave_one_out
from sid_index.errors import ConfigError
from trainer.baselines.popularity import evaluate_popularity
from trainer.baselines.sasrec import SASRecConfig
from trainer.baselines.train_sasrec import (
    CURVE_NAME,
    LOG_NAME,
    SASRecResult,
    SASRecTrainConfig,
    train_sasrec,
)
from trainer.metrics import RankingMetrics

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Baselines (SASRec, most-popular)"
DEFAULT_DATA = REPO.parent / "shared" / "datasets"
DATASETS = {"office": "Office", "beauty": "Beauty"}
RESULT_NAME = "result.json"

# (hidden_size, dropout, weight_decay); layers 2, heads 1, max_len 50, lr 1e-3 everywhere.
# The grids are small because the dev box has 2 shared cores; Beauty's full softmax over 12k
# items costs ~5x Office's per target, so Beauty only varies dropout (the factor that mattered
# most on Office) at d=64.
GRIDS: dict[str, list[tuple[int, float, float]]] = {
    "office": [
        (64, 0.2, 0.0),
        (64, 0.2, 0.1),
        (64, 0.5, 0.0),
        (64, 0.5, 0.1),
        (128, 0.2, 0.1),
        (128, 0.5, 0.1),
    ],
    "beauty": [(64, 0.2, 0.1), (64, 0.5, 0.1)],
}
PUBLISHED = {
    # Beauty, same split (TIGER paper): R@5, N@5, R@10, N@10.
    "beauty": [
        ("SASRec (published, TIGER paper)", (0.0387, 0.0249, 0.0605, 0.0318)),
        ("TIGER (published)", (0.0454, 0.0321, 0.0648, 0.0384)),
    ]
}


@dataclass(frozen=True, slots=True)
class DatasetReport:
    """Everything measured on one dataset."""

    name: str
    num_users: int
    num_items: int
    num_interactions: int
    popularity: tuple[RankingMetrics, RankingMetrics]
    """(valid, test), history not excluded."""
    popularity_excl: tuple[RankingMetrics, RankingMetrics]
    """(valid, test), history excluded."""
    popularity_seconds: float
    runs: list[SASRecResult]
    selected: int
    """Index into runs of the best validation Recall@10."""


def _fmt(m: RankingMetrics) -> str:
    return f"{m.recall[5]:.4f} | {m.ndcg[5]:.4f} | {m.recall[10]:.4f} | {m.ndcg[10]:.4f}"


def _cached(run_dir: Path, config: SASRecTrainConfig) -> SASRecResult | None:
    """The result of an earlier run with exactly this config in `run_dir`, if any."""
    path = run_dir / RESULT_NAME
    if not path.is_file():
        return None
    row = json.loads(path.read_text())
    # Threads and the progress bar never change the numbers; a different time budget does
    # not either when the earlier run ended by early stopping before reaching its budget.
    same_budget = row["config"].get("max_train_seconds") == config.max_train_seconds
    early_stopped = row["epochs_run"] - row["best_epoch"] >= config.patience
    ignored = ("num_threads", "show_progress", "max_train_seconds")
    cached = {k: v for k, v in row["config"].items() if k not in ignored}
    wanted = {k: v for k, v in json.loads(json.dumps(config.to_dict())).items() if k not in ignored}
    if cached != wanted or not (early_stopped or same_budget):
        return None
    return SASRecResult(
        config=config,
        model_dir=Path(row["model_dir"]),
        log_path=run_dir / LOG_NAME,
        curve_path=run_dir / CURVE_NAME,
        best_epoch=row["best_epoch"],
        epochs_run=row["epochs_run"],
        valid=RankingMetrics.from_dict(row["valid"]),
        test=RankingMetrics.from_dict(row["test"]),
        train_seconds=row["train_seconds"],
        num_threads=row["num_threads"],
    )


def _run_dataset(
    key: str,
    data_root: Path,
    out_root: Path,
    base: SASRecTrainConfig,
    grid_limit: int,
    reuse: bool,
) -> DatasetReport:
    dataset = load_dataset(str(data_root / key))
    split = leave_one_out(dataset.interactions)
    num_items = len(dataset.catalog)
    print(
        f"[{key}] {len(split)} users ({split.num_dropped} dropped), {num_items} items, "
        f"{dataset.interactions.num_interactions} interactions",
        flush=True,
    )
    t0 = time.perf_counter()
    pop = evaluate_popularity(split, num_items)
    pop_seconds = time.perf_counter() - t0
    pop_excl = evaluate_popularity(split, num_items, exclude_seen=True)
    print(f"[{key}] most-popular test: {pop[1]}", flush=True)

    runs: list[SASRecResult] = []
    for hidden, dropout, wd in GRIDS[key][: grid_limit or None]:
        config = replace(
            base,
            model=replace(base.model, hidden_size=hidden, dropout=dropout),
            weight_decay=wd,
        )
        run_dir = out_root / key / f"h{hidden}_p{dropout}_wd{wd}"
        result = _cached(run_dir, config) if reuse else None
        if result is None:
            result = train_sasrec(split, config, run_dir, num_items=num_items)
            (run_dir / RESULT_NAME).write_text(json.dumps(result.to_dict(), indent=2) + "\n")
        runs.append(result)
        tag = run_dir.name
        print(
            f"[{key}] sasrec {tag}: valid {result.valid} | best epoch {result.best_epoch}/"
            f"{result.epochs_run} | {result.train_seconds:.0f}s",
            flush=True,
        )
    selected = max(
        range(len(runs)), key=lambda i: (runs[i].valid.recall[10], runs[i].valid.ndcg[10])
    )
    report = DatasetReport(
        name=DATASETS[key],
        num_users=len(split),
        num_items=num_items,
        num_interactions=dataset.interactions.num_interactions,
        popularity=pop,
        popularity_excl=pop_excl,
        popularity_seconds=pop_seconds,
        runs=runs,
        selected=selected,
    )
    summary = {
        "popularity": {"valid": pop[0].to_dict(), "test": pop[1].to_dict()},
        "popularity_exclude_seen": {"valid": pop_excl[0].to_dict(), "test": pop_excl[1].to_dict()},
        "sasrec_runs": [r.to_dict() for r in runs],
        "selected": selected,
    }
    (out_root / key).mkdir(parents=True, exist_ok=True)
    (out_root / key / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(f"[{key}] selected {runs[selected].config.model}: test {runs[selected].test}")
    return report


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _section(
    reports: Sequence[DatasetReport], command: str, base: SASRecTrainConfig, note: str
) -> str:
    threads = sorted({r.num_threads for rep in reports for r in rep.runs})
    lines = [
        SECTION,
        "",
        f"Written {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; measured on a {os.cpu_count()}-core "
        f"CPU ({_cpu_name()}), no GPU, torch {torch.__version__}, "
        f"{'/'.join(map(str, threads))} torch thread(s) "
        "per run. Times are wall-clock on a machine shared with other jobs; with `--reuse`, "
        "finished runs are read back from `--out` with their original times.",
        f"Command: `{command}`",
        *([note] if note else []),
        "",
        "Protocol: leave-one-out (last item test, second-to-last valid, every prefix of the "
        "rest trains), Recall/NDCG@k over the full catalogue, history NOT excluded from the "
        "rankings (the Amazon 5-core standard). SASRec: 2 blocks, 1 head, max_len "
        f"{base.model.max_len}, pre-LN, full-softmax cross-entropy, AdamW lr {base.lr}, batch "
        f"{base.batch_size}, early stopping on valid Recall@10 (patience {base.patience}, at "
        f"most {base.max_epochs} epochs, and a per-dataset wall-clock budget per run); "
        "hyper-parameters selected on validation Recall@10, "
        "test reported once at the selected run's best epoch.",
    ]
    for rep in reports:
        best = rep.runs[rep.selected]
        cfg = best.config
        lines += [
            "",
            f"### {rep.name} ({rep.num_users:,} users, {rep.num_items:,} items, "
            f"{rep.num_interactions:,} interactions) — test",
            "",
            "| model | R@5 | N@5 | R@10 | N@10 | hyper-parameters | train time | epochs |",
            "|---|---|---|---|---|---|---|---|",
            f"| most-popular | {_fmt(rep.popularity[1])} | train counts | "
            f"{rep.popularity_seconds:.2f}s | – |",
            f"| most-popular, history excluded | {_fmt(rep.popularity_excl[1])} | train counts "
            "| – | – |",
            f"| **SASRec (full softmax)** | {_fmt(best.test)} | d={cfg.model.hidden_size}, "
            f"dropout {cfg.model.dropout}, wd {cfg.weight_decay} | {best.train_seconds:.0f}s | "
            f"best {best.best_epoch} of {best.epochs_run} |",
        ]
        published = PUBLISHED.get(rep.name.lower(), [])
        for label, (r5, n5, r10, n10) in published:
            lines.append(f"| {label} | {r5:.4f} | {n5:.4f} | {r10:.4f} | {n10:.4f} | – | – | – |")
        if published:
            ours = best.test
            cmp = "; ".join(
                f"{label}: R@10 {ours.recall[10]:.4f} vs {r10:.4f} ({ours.recall[10] / r10:.2f}x), "
                f"N@10 {ours.ndcg[10]:.4f} vs {n10:.4f} ({ours.ndcg[10] / n10:.2f}x)"
                for label, (_, _, r10, n10) in published
            )
            lines += ["", f"Our SASRec against the published figures on this split — {cmp}."]
        budget = cfg.max_train_seconds
        lines += [
            "",
            f"{rep.name} SASRec grid (selection on validation; test not looked at; "
            + (f"budget {budget:.0f}s per run" if budget else "no time budget")
            + "):",
            "",
            "| d | dropout | weight decay | valid R@10 | valid N@10 | best epoch / run | time |",
            "|---|---|---|---|---|---|---|",
        ]
        for i, run in enumerate(rep.runs):
            mark = " ← selected" if i == rep.selected else ""
            if run.epochs_run - run.best_epoch < run.config.patience:
                mark += " (stopped by the time budget)" if run.epochs_run < base.max_epochs else ""
            lines.append(
                f"| {run.config.model.hidden_size} | {run.config.model.dropout} | "
                f"{run.config.weight_decay} | {run.valid.recall[10]:.4f} | "
                f"{run.valid.ndcg[10]:.4f} | {run.best_epoch} / {run.epochs_run} | "
                f"{run.train_seconds:.0f}s{mark} |"
            )
    return "\n".join(lines) + "\n"


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, leaving others alone."""
    replace_section(SECTION, text, path)


def _parse_budgets(values: Sequence[str], parser: argparse.ArgumentParser) -> dict[str, float]:
    """["900", "beauty=1200"] → {"": 900.0, "beauty": 1200.0} ("" = every dataset)."""
    out: dict[str, float] = {}
    for value in values:
        key, _, seconds = value.rpartition("=")
        if key and key not in DATASETS:
            parser.error(f"--max-train-seconds: unknown dataset {key!r} in {value!r}")
        try:
            out[key] = float(seconds)
        except ValueError:
            parser.error(f"--max-train-seconds: {value!r} is not [DATASET=]SECONDS")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=Path("/tmp/reasonrec-bench/baselines"))
    parser.add_argument("--max-epochs", type=int, default=100)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--max-train-seconds",
        nargs="+",
        default=["0"],
        metavar="[DATASET=]SECONDS",
        help="per-run training budget, for every dataset or per dataset (0 = none)",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1 suits the shared 2-core box)"
    )
    parser.add_argument("--grid-limit", type=int, default=0, help="first N grid points only")
    parser.add_argument(
        "--reuse",
        action="store_true",
        help="reuse finished runs under --out whose config is identical (their times stand)",
    )
    parser.add_argument("--note", default="", help="a line added to the RESULTS.md section")
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    args = parser.parse_args(argv)
    budgets = _parse_budgets(args.max_train_seconds, parser)
    try:
        base = SASRecTrainConfig(
            model=SASRecConfig(num_layers=2, num_heads=1, max_len=50),
            lr=1e-3,
            batch_size=args.batch_size,
            max_epochs=args.max_epochs,
            patience=args.patience,
            max_train_seconds=budgets.get("", 0.0),
            num_threads=args.threads,
        )
    except ConfigError as exc:
        parser.error(str(exc))
    reports = [
        _run_dataset(
            key,
            args.data_root,
            args.out,
            replace(base, max_train_seconds=budgets.get(key, base.max_train_seconds)),
            args.grid_limit,
            args.reuse,
        )
        for key in args.datasets
    ]
    given = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join([".venv/bin/python", "-m", "benchmarks.baselines", *given])
    text = _section(reports, command, base, args.note)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
