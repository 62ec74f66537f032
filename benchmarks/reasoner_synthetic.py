"""Reasoner on synthetic data: R0 perception, parseable traces, and whether the reasoner's traces
help the fast model.

    .venv/bin/python -m benchmarks.reasoner_synthetic [--out /tmp/reasoner_synthetic]

Every step is a `reasonrec` command in a subprocess (1 torch thread, timed; logs in OUT/logs):

1. `index build` of `synthetic:users=2000,items=1000,seed=0` (MiniLM embeddings, levels 16,16
   plus the disambiguation level);
2. `train reasoner-align` of a `scratch:tiny` reasoner (R0/R1 on held-out items);
3. `train reasoner-sft` with the rule teacher (thinking share 0.5 in every domain);
4. `train fast --teacher rule` (the fast model never sees the reasoner while training);
5. `eval --split test --teachers none,rule,reasoner --tiers r0,r1,r2,r3`: the fast model
   without a trace, with rule traces and with the reasoner's parsed thoughts (decoded in
   batches, parse failures counted), and the reasoner itself thinking / not thinking.

A step whose result is already in the release is skipped (delete OUT to start over). Prints
a Markdown section for benchmarks/RESULTS.md and writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
REASONREC = [sys.executable, "-m", "serving.cli"]


class Runner:
    """Runs `reasonrec` commands one after another, logging and timing each."""

    def __init__(self, out: Path) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.steps: list[dict[str, Any]] = []
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "OMP_NUM_THREADS": "1",
            "MKL_NUM_THREADS": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }

    def run(self, name: str, args: Sequence[str]) -> float:
        """Run `reasonrec ARGS`; returns wall seconds (SystemExit with the log tail on failure)."""
        cmd = [*REASONREC, *args]
        log = self.logs / f"{name}.log"
        print(f"[{name}] reasonrec {shlex.join(args)}", flush=True)
        t = time.perf_counter()
        with log.open("w") as fh:
            rc = subprocess.call(cmd, cwd=REPO, env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        seconds = time.perf_counter() - t
        if rc != 0:
            tail = log.read_text(errors="replace")[-3000:]
            raise SystemExit(f"[{name}] failed with exit code {rc}:\n{tail}")
        print(f"[{name}] {seconds:.0f} s", flush=True)
        self.steps.append({"step": name, "command": "reasonrec " + shlex.join(args), "s": seconds})
        return seconds

    def skip(self, name: str, why: str) -> None:
        print(f"[{name}] skipped: {why}", flush=True)
        self.steps.append({"step": name, "command": f"(skipped: {why})", "s": 0.0})


def manifest(release: Path) -> dict[str, Any]:
    """The release manifest ({} when there is no release yet)."""
    path = release / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def reasoner_stage(release: Path) -> str | None:
    """The last reasoner stage written into the release (align, sft) or None."""
    return manifest(release).get("configs", {}).get("reasoner", {}).get("stage")


def load_average() -> str:
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def machine() -> str:
    import torch

    return (
        f"{platform.machine()} {platform.processor() or 'CPU'}, {os.cpu_count()} cores, "
        f"torch {torch.__version__}, Python {platform.python_version()}, 1 torch thread per "
        f"process"
    )


def row(report: dict[str, Any], model: str) -> dict[str, Any] | None:
    return next((r for r in report["rows"] if r["model"] == model), None)


def ranking_table(report: dict[str, Any]) -> list[str]:
    """The eval report's rows as Markdown (with the parse rate of reasoner traces)."""
    lines = [
        "| model | Recall@5 | NDCG@5 | Recall@10 | NDCG@10 | users | note |",
        "| --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in report["rows"]:
        note = ""
        if "parseable_traces" in r:
            st = r["trace_stats"]
            note = f"parseable traces {r['parseable_traces']:.1%} ({st['parsed']}/{st['decoded']})"
        lines.append(
            f"| {r['model']} | {r['recall@5']:.4f} | {r['ndcg@5']:.4f} | {r['recall@10']:.4f} "
            f"| {r['ndcg@10']:.4f} | {int(r.get('num_users', 0))} | {note} |"
        )
    return lines


def tier_lines(rep: dict[str, Any], align: dict[str, Any]) -> list[str]:
    """R0-R2 of the eval report, with R0/R1 right after alignment for comparison."""
    out = []
    if "r0/category_acc" in rep:
        out.append(
            f"- R0 item perception, {int(rep['r0/items'])} held-out items (their sid2text, "
            f"text2sid and item2item samples never trained): category accuracy "
            f"{align.get('r0/category_acc', float('nan')):.4f} after alignment, "
            f"{rep['r0/category_acc']:.4f} after SFT; chance {rep['r0/chance']:.4f}, "
            f"majority class {rep['r0/majority']:.4f}."
        )
    if "r1/hit@10" in rep:
        out.append(
            f"- R1 item-to-item, same held-out items: hit@10 "
            f"{align.get('r1/hit@10', float('nan')):.4f} after alignment, {rep['r1/hit@10']:.4f}"
            f" after SFT; {rep['r1/random_hit@10']:.4f} for 10 random items."
        )
    if "thinking/r2/parsed" in rep:
        out.append(
            f"- R2 interest (thinking, {int(rep['users'])} test users): a usable thought "
            f"{rep['thinking/r2/parsed']:.1%}, an interest prefix contains the next item "
            f"{rep['thinking/r2/interest_hit']:.4f}, the predicted next interest (`<next_k>`) "
            f"does {rep['thinking/r2/next_interest_hit']:.4f}; "
            f"{rep['thinking/r2/interests']:.2f} interests, "
            f"{rep['thinking/r2/think_tokens']:.0f} thought tokens per user, "
            f"{rep['thinking/r2/budget_hit']:.1%} cut by the "
            f"{rep['max_think_tokens']}-token budget."
        )
    return out


def steps_table(steps: list[dict[str, Any]]) -> list[str]:
    lines = ["| step | wall | command |", "| --- | ---: | --- |"]
    for s in steps:
        lines.append(f"| {s['step']} | {s['s'] / 60:.1f} min | `{s['command']}` |")
    return lines


def train_reasoner(
    runner: Runner,
    rel: Path,
    args: argparse.Namespace,
    *,
    persona_source: str = "kmeans",
    think_ratio: float = 0.5,
    sft_cuts: int = 1,
) -> dict[str, Any]:
    """Align, then SFT, a scratch:tiny reasoner in `rel` (each stage skipped when the release
    already has it); returns the metrics right after alignment (for R0/R1 before/after)."""
    common = ["--release", str(rel), "--threads", "1", "--batch-size", "16"]
    if reasoner_stage(rel) in ("align", "sft"):
        runner.skip("align", "the release has an aligned reasoner")
    else:
        runner.run(
            "align",
            ["train", "reasoner-align", *common, "--base-model", "scratch:tiny",
             "--epochs", str(args.align_epochs), "--lr", "1e-3", "--warmup-steps", "50",
             "--eval-items", "200", "--max-think-tokens", str(args.think_tokens),
             "--persona-source", persona_source],
        )  # fmt: skip
    align_metrics = dict(manifest(rel)["metrics"]["reasoner"])
    if reasoner_stage(rel) == "sft":
        runner.skip("sft", "the release has an SFT reasoner")
    else:
        runner.run(
            "sft",
            ["train", "reasoner-sft", *common, "--epochs", str(args.sft_epochs), "--lr", "5e-4",
             "--think-ratio", str(think_ratio),
             "--cuts-per-user", str(sft_cuts),
             "--eval-users", "200", "--align-replay", args.align_replay,
             "--max-think-tokens", str(args.think_tokens)],
        )  # fmt: skip
    return align_metrics


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/reasoner_synthetic"))
    p.add_argument("--dataset", default="synthetic:users=2000,items=1000,seed=0")
    p.add_argument("--levels", default="16,16")
    p.add_argument("--align-epochs", type=int, default=2)
    p.add_argument("--sft-epochs", type=int, default=2)
    p.add_argument("--fast-epochs", type=int, default=5)
    p.add_argument("--think-tokens", type=int, default=160)
    p.add_argument("--think-ratio", type=float, default=0.5, help="reasoner-sft --think-ratio")
    p.add_argument("--sft-cuts", type=int, default=1, help="reasoner-sft --cuts-per-user")
    p.add_argument("--align-replay", default="0.2", help="reasoner-sft --align-replay")
    p.add_argument("--limit", type=int, default=500, help="test users evaluated")
    p.add_argument(
        "--persona-source",
        choices=("kmeans", "labels"),
        default="kmeans",
        help="reasoner-align --persona-source (labels: the planted personas teach the persona)",
    )
    p.add_argument(
        "--fast-window", type=int, default=30, help="train fast --max-items (history items)"
    )
    p.add_argument(
        "--fast-teacher", choices=("rule", "reasoner"), default="rule", help="train fast --teacher"
    )
    args = p.parse_args(argv)
    out: Path = args.out
    rel = out / "release"
    runner = Runner(out)
    load_before = load_average()
    t0 = time.perf_counter()
    if manifest(rel):
        runner.skip("index", "release exists")
    else:
        runner.run(
            "index",
            ["index", "build", "--dataset", args.dataset, "--out", str(rel),
             "--levels", args.levels],
        )  # fmt: skip
    align_metrics = train_reasoner(
        runner, rel, args, persona_source=args.persona_source, think_ratio=args.think_ratio,
        sft_cuts=args.sft_cuts,
    )  # fmt: skip
    if "fast_model" in manifest(rel).get("parts", []):
        runner.skip("fast", "the release has a fast model")
    else:
        runner.run(
            "fast",
            ["train", "fast", "--release", str(rel), "--teacher", args.fast_teacher,
             "--epochs", str(args.fast_epochs), "--eval-users", "500",
             "--max-items", str(args.fast_window)],
        )  # fmt: skip
    report_path = out / "eval-test.json"
    runner.run(
        "eval",
        ["eval", "--release", str(rel), "--split", "test", "--teachers", "none,rule,reasoner",
         "--baselines", "popular", "--tiers", "r0,r1,r2,r3", "--modes", "thinking,nonthinking",
         "--limit", str(args.limit), "--out", str(report_path)],
    )  # fmt: skip
    command = shlex.join(["python", "-m", "benchmarks.reasoner_synthetic", *(argv or sys.argv[1:])])
    write_summary(
        out, report_path, rel, runner, t0, load_before, align_metrics, markdown, command=command
    )
    return 0


def write_summary(
    out: Path,
    report_path: Path,
    rel: Path,
    runner: Any,
    t0: float,
    load_before: Any,
    align_metrics: Any,
    render: Callable[[dict[str, Any]], str],
    command: str = "",
) -> None:
    """Write OUT/summary.json of a run (machine, load, wall time, steps, metrics, eval report)
    and print its RESULTS.md subsection, rendered by `render`."""
    summary = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d"),
        "machine": machine(),
        "load_average_before": load_before,
        "load_average_after": load_average(),
        "wall_s": time.perf_counter() - t0,
        "steps": runner.steps,
        "align_metrics": align_metrics,
        "release_metrics": manifest(rel)["metrics"],
        "eval": json.loads(report_path.read_text()),
        "command": command,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(render(summary))


def markdown(summary: dict[str, Any]) -> str:
    """The RESULTS.md subsection of a run."""
    report = summary["eval"]
    rep = report.get("reasoner", {})
    none, traced = (
        row(report, "fast model, trace: none"),
        row(report, "fast model, trace: reasoner"),
    )
    lines = [
        f"### Synthetic (`{report['dataset']}`, {report['catalogue']} items)",
        "",
        f"Leave-one-out test split, full catalogue, beam {report['beams']}, "
        f"{report['users']} seeded test users (most popular: all users).",
        "",
        *ranking_table(report),
        "",
        *tier_lines(rep, summary["align_metrics"]),
    ]
    if none and traced:
        delta = traced["recall@10"] - none["recall@10"]
        lines.append(
            f"- Reasoner traces vs no trace, same fast model and users: Recall@10 "
            f"{traced['recall@10']:.4f} vs {none['recall@10']:.4f} ({delta:+.4f})."
        )
    if "thinking/r2/persona_match" in rep:
        lines.append(
            f"- The reasoner's thought names the user's own (planted) persona for "
            f"{rep['thinking/r2/persona_match']:.1%} of the test users."
        )
    lines += [
        "",
        *steps_table(summary["steps"]),
        "",
        f"Machine: {summary['machine']}; shared with other jobs (1-min load average before, "
        f"after: {summary['load_average_before']}, {summary['load_average_after']}). Date: "
        f"{summary['date']}. Total wall time {summary['wall_s'] / 60:.0f} min. Reproduce: "
        f"`.venv/bin/{summary.get('command') or 'python -m benchmarks.reasoner_synthetic'}`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
