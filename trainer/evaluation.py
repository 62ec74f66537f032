"""The evaluation harness behind `reasonrec eval`.

Leave-one-out over the release's dataset, full catalogue: the fast model decodes with the trie
of every item (never a sampled candidate set), once per trace source ("none" is the no-trace
mode of the same model), and the baselines are trained on the same split. The report is a
JSON-able dict; `to_markdown` renders it as a table.

The reasoner (`--tiers r0,r1,r2,r3`) adds its tiers (`trainer/reasoner_eval.py`); its R3 rows
join the main table. The fast model with trace source "reasoner" reads the reasoner's parsed
thoughts, decoded in batches first; the share of usable ones is reported as "parseable
traces", and every traced row its paired difference to no trace.
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
from trainer.metrics import KS, RankingMetrics, paired_difference
from trainer.pipeline import build_teacher, open_workspace
from trainer.reasoner_eval import (
    REASONER_MODES,
    check_reasoner_tiers,
    reasoner_markdown,
    reasoner_report,
)

BASELINES = ("popular", "sasrec")


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
    max_items: int | None = None
    """History window of the fast model (default: the window it was trained on, as the
    release records it — the window the fast path serves with)."""
    item_head_weight: float | None = None
    """Item-head re-ranking weight (`fast_path/item_head.py`; 0 = the SID beam alone);
    default: the value the release recorded for its fast model (what the fast path serves)."""
    tiers: tuple[str, ...] = ()
    """Reasoner tiers (r0, r1, r2, r3); empty: the reasoner is not evaluated."""
    modes: tuple[str, ...] = REASONER_MODES
    """Reasoner decoding modes for R2/R3 (thinking, nonthinking)."""
    max_think_tokens: int | None = None
    """Reasoner thinking budget (default: the one the release recorded)."""

    def __post_init__(self) -> None:
        if self.split not in ("valid", "test"):
            raise ConfigError(f"{self.split=} must be 'valid' or 'test'")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise ConfigError(f"unknown baselines {unknown}; choose from {BASELINES}")
        check_reasoner_tiers(self.tiers, self.modes)
        if self.item_head_weight is not None and self.item_head_weight < 0:
            raise ConfigError(f"{self.item_head_weight=} must be >= 0")
        if self.max_think_tokens is not None and self.max_think_tokens < 1:
            raise ConfigError(f"{self.max_think_tokens=} must be >= 1")


def versus(a: RankingMetrics, b: RankingMetrics) -> dict[str, float]:
    """`a - b` at the largest cut-off, paired over the same users, with standard errors."""
    k = max(KS)
    out: dict[str, float] = {}
    for metric in ("recall", "ndcg"):
        diff, se = paired_difference(a, b, k, metric)
        out[f"{metric}@{k}"], out[f"{metric}@{k}_se"] = diff, se
    return out


def _row(model: str, metrics: RankingMetrics, **extra: Any) -> dict[str, Any]:
    return {"model": model, **metrics.to_dict(), **extra}


def run_evaluation(req: EvalRequest) -> dict[str, Any]:
    """Evaluate the release's fast model (per trace source) and the baselines."""
    t0 = time.perf_counter()
    ws = open_workspace(req.release, req.dataset)
    samples = ws.split.test_inputs() if req.split == "test" else ws.split.valid_inputs()
    rows: list[dict[str, Any]] = []
    window: int | None = None
    if ws.release.has_part("fast_model"):
        fm = FastModel.load(ws.release.part("fast_model"))
        fast_config = ws.release.manifest.configs.get("fast_model", {})
        window = req.max_items or int(fast_config.get("max_items", 30))
        head_weight = req.item_head_weight
        if head_weight is None:
            head_weight = float(fast_config.get("item_head_weight", 0.0))
        if head_weight > 0 and not fm.vocab.item_buckets:
            raise ConfigError("--item-head-weight > 0 needs a fast model with item tokens")
        users = ws.split.user_index[samples.users]
        measured: dict[str, tuple[RankingMetrics, dict[str, Any]]] = {}
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
                max_items=window,
                item_head_weight=head_weight,
                show_progress=True,
            )
            extra: dict[str, Any] = {}
            if head_weight > 0:
                extra["item_head_weight"] = head_weight
            stats = getattr(teacher, "stats", None)  # the reasoner counts parse failures
            if stats is not None:
                extra.update(parseable_traces=stats.parse_rate, trace_stats=stats.to_dict())
            if getattr(teacher, "known_personas", None) is not None:
                extra["labelled_personas"] = True  # the users' own labels: an oracle persona
            rows.append(
                _row(
                    f"fast model, trace: {name}" + (", item head" if head_weight > 0 else ""),
                    m,
                    seconds=round(time.perf_counter() - t, 1),
                    **extra,
                )
            )
            measured[name] = (m, rows[-1])
        if "none" in measured:  # each trace against no trace, paired over the same users
            for name, (m, row) in measured.items():
                if name != "none":
                    row["vs_no_trace"] = versus(m, measured["none"][0])
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
    reasoner: dict[str, Any] | None = None
    if req.tiers:
        t = time.perf_counter()
        reasoner = reasoner_report(ws, samples, req)
        for mode in req.modes if "r3" in req.tiers else ():
            prefix = "thinking" if mode == "thinking" else "nothinking"
            r3 = {k.split("/")[-1]: v for k, v in reasoner.items() if k.startswith(f"{prefix}/r3/")}
            rows.append(
                {
                    "model": f"reasoner, {mode}",
                    **r3,
                    "num_users": reasoner["users"],
                    "seconds": reasoner.get(f"{prefix}/seconds"),
                }
            )
        reasoner["seconds"] = round(time.perf_counter() - t, 1)
    return {
        "release": str(req.release),
        "release_version": ws.release.version,
        "dataset": ws.dataset.name,
        "split": req.split,
        "users": len(samples) if req.limit is None else min(req.limit, len(samples)),
        "catalogue": len(ws.index.catalog),
        "beams": req.beams,
        **({"history_window": window} if window is not None else {}),
        "machine": f"{platform.machine()} {platform.processor() or ''} "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads".strip(),
        "seconds": round(time.perf_counter() - t0, 1),
        "rows": rows,
        **({"reasoner": reasoner} if reasoner is not None else {}),
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
    notes = [
        f"- {r['model']}: parseable traces: {r['parseable_traces']:.1%} "
        f"({r['trace_stats']['parsed']}/{r['trace_stats']['decoded']})"
        for r in report["rows"]
        if "parseable_traces" in r
    ]
    notes += [
        f"- {r['model']}: the persona part is each user's labelled persona (an oracle, not a "
        "prediction)"
        for r in report["rows"]
        if r.get("labelled_personas")
    ]
    k = max(KS)
    notes += [
        f"- {r['model']} vs no trace (same model and users, paired): Recall@{k} "
        f"{v[f'recall@{k}']:+.4f} ± {v[f'recall@{k}_se']:.4f}, NDCG@{k} "
        f"{v[f'ndcg@{k}']:+.4f} ± {v[f'ndcg@{k}_se']:.4f} (± one standard error)"
        for r in report["rows"]
        if (v := r.get("vs_no_trace"))
    ]
    tail = "\n" + "\n".join(notes) + "\n" if notes else ""
    if "reasoner" in report:
        tail += "\n" + reasoner_markdown(report["reasoner"])
    return head + "\n".join(lines) + "\n" + tail
