"""The evaluation harness behind `reasonrec eval`.

Leave-one-out over the release's dataset, full catalogue: the fast model decodes with the trie
of every item (never a sampled candidate set), once per trace source ("none" is the no-trace
mode of the same model), and the baselines are trained on the same split. The report is a
JSON-able dict; `to_markdown` renders it as a table.
"""

from __future__ import annotations

import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from fast_path.fast_model import FastModel
from sid_index.errors import ConfigError
from trainer.fast_eval import evaluate_fast
from trainer.metrics import RankingMetrics
from trainer.pipeline import build_teacher, open_workspace

BASELINES = ("popular", "sasrec")
KS = (5, 10)


@dataclass(frozen=True, slots=True)
class EvalRequest:
    """What `reasonrec eval` evaluates."""

    release: Path
    dataset: str | None = None
    """Dataset spec; default: the one recorded in the release."""
    split: str = "test"
    """"valid" or "test"."""
    teachers: tuple[str, ...] = ("none", "rule")
    """Trace sources for the fast model ("none" = no-trace mode)."""
    baselines: tuple[str, ...] = ("popular",)
    """Baselines trained and evaluated on the same split."""
    beams: int = 20
    limit: int | None = None
    """Evaluate a seeded random subset of this many users (baselines use all users)."""
    max_items: int = 30

    def __post_init__(self) -> None:
        if self.split not in ("valid", "test"):
            raise ConfigError(f"{self.split=} must be 'valid' or 'test'")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"unknown baselines {unknown}; choose from {BASELINES}")


def _row(model: str, metrics: RankingMetrics, **extra: Any) -> dict[str, Any]:
    return {"model": model, **metrics.to_dict(), **extra}


def run_evaluation(req: EvalRequest) -> dict[str, Any]:
    """Evaluate the release's fast model (per trace source) and the baselines."""
    t0 = time.perf_counter()
    ws = open_workspace(req.release, req.dataset)
    samples = ws.split.test_inputs() if req.split == "test" else ws.split.valid_inputs()
    rows: list[dict[str, Any]] = []
    if ws.release.has_part("fast_model"):
        fm = FastModel.load(ws.release.part("fast_model"))
        users = ws.split.user_index[samples.users]
        for name in req.teachers:
            teacher = build_teacher(name, ws)
            t = time.perf_counter()
            m = evaluate_fast(
                fm,
                ws.index.trie,
                ws.codes,
                samples,
                users,
                teacher,
                ks=KS,
                num_beams=req.beams,
                limit=req.limit,
                max_items=req.max_items,
                show_progress=True,
            )
            rows.append(
                _row(f"fast model, trace: {name}", m, seconds=round(time.perf_counter() - t, 1))
            )
    for name in req.baselines:
        t = time.perf_counter()
        if name == "popular":
            from trainer.baselines.popularity import evaluate_popularity

            valid, test = evaluate_popularity(ws.split, len(ws.index.catalog), ks=KS)
            rows.append(
                _row(
                    "most popular",
                    test if req.split == "test" else valid,
                    seconds=round(time.perf_counter() - t, 1),
                )
            )
        else:
            from trainer.baselines.train_sasrec import SASRecTrainConfig, train_sasrec

            out = req.release.parent / f"{req.release.name}.runs" / "sasrec"
            res = train_sasrec(ws.split, SASRecTrainConfig(), out, num_items=len(ws.index.catalog))
            rows.append(
                _row(
                    "SASRec (full softmax)",
                    res.test if req.split == "test" else res.valid,
                    seconds=round(time.perf_counter() - t, 1),
                    best_epoch=res.best_epoch,
                )
            )
    return {
        "release": str(req.release),
        "release_version": ws.release.version,
        "dataset": ws.dataset.name,
        "split": req.split,
        "users": len(samples) if req.limit is None else min(req.limit, len(samples)),
        "catalogue": len(ws.index.catalog),
        "beams": req.beams,
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads".strip(),
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
    }


def to_markdown(report: dict[str, Any]) -> str:
    """The report as a Markdown table (Recall/NDCG@5/10)."""
    head = (
        f"Leave-one-out `{report['split']}` on `{report['dataset']}` "
        f"({report['users']} users, full catalogue of {report['catalogue']} items, "
        f"beam {report['beams']})\n\n"
    )
    lines = [
        "| model | Recall@5 | NDCG@5 | Recall@10 | NDCG@10 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for r in report["rows"]:
        lines.append(
            f"| {r['model']} | {r['recall@5']:.4f} | {r['ndcg@5']:.4f} | "
            f"{r['recall@10']:.4f} | {r['ndcg@10']:.4f} |"
        )
    return head + "\n".join(lines) + "\n"
