"""Reasoner on Amazon Office after alignment + CoT SFT: thinking vs non-thinking.

    .venv/bin/python -m benchmarks.reasoner_office [--out /tmp/reasoner_office]

Steps (each a `reasonrec` command in a subprocess, 1 torch thread, timed; logs in OUT/logs):

1. `index build` of `amazon:DATA` importing the published SIDs (`Office.index.rq-kmeans.json`,
   4 levels + a disambiguation level) with the hashing embedder for the FAISS item index, so
   no MiniLM pass (minutes on this box) is needed;
2. `train reasoner-align` of a `scratch:tiny` reasoner;
3. `train reasoner-sft` with the rule teacher (thinking share 0.5 in every domain);
4. `eval --split test --tiers r0,r1,r2,r3 --modes thinking,nonthinking` with the most-popular
   baseline.

A step whose result is already in the release is skipped. Prints a Markdown section for
benchmarks/RESULTS.md and writes OUT/summary.json.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.reasoner_synthetic import (
    REPO,
    Runner,
    load_average,
    manifest,
    ranking_table,
    steps_table,
    tier_lines,
    train_reasoner,
    write_summary,
)

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "office"
PUBLISHED = "Office.index.rq-kmeans.json"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=Path("/tmp/reasoner_office"))
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--align-epochs", type=int, default=1)
    p.add_argument("--sft-epochs", type=int, default=1)
    p.add_argument("--think-tokens", type=int, default=160)
    p.add_argument("--align-replay", default="0.2", help="reasoner-sft --align-replay")
    p.add_argument("--limit", type=int, default=500, help="test users evaluated")
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
            ["index", "build", "--dataset", f"amazon:{args.data}", "--out", str(rel),
             "--sids", str(args.data / PUBLISHED), "--embedder", "hashing"],
        )  # fmt: skip
    align_metrics = train_reasoner(runner, rel, args)
    report_path = out / "eval-test.json"
    runner.run(
        "eval",
        ["eval", "--release", str(rel), "--split", "test", "--baselines", "popular",
         "--tiers", "r0,r1,r2,r3", "--modes", "thinking,nonthinking",
         "--limit", str(args.limit), "--out", str(report_path)],
    )  # fmt: skip
    write_summary(out, report_path, rel, runner, t0, load_before, align_metrics, markdown)
    return 0


def markdown(summary: dict[str, Any]) -> str:
    """The RESULTS.md subsection of a run."""
    report = summary["eval"]
    rep = report.get("reasoner", {})
    lines = [
        f"### Office (`{report['dataset']}`, {report['catalogue']} items, published SIDs)",
        "",
        f"Leave-one-out test split, full catalogue, beam {report['beams']}, "
        f"{report['users']} seeded test users (most popular: all users).",
        "",
        *ranking_table(report),
        "",
        *tier_lines(rep, summary["align_metrics"]),
    ]
    think = {k: rep.get(f"thinking/r3/{k}") for k in ("recall@10", "ndcg@10")}
    plain = {k: rep.get(f"nothinking/r3/{k}") for k in ("recall@10", "ndcg@10")}
    if None not in think.values() and None not in plain.values():
        lines.append(
            f"- Thinking vs non-thinking (same SFT model and users): Recall@10 "
            f"{think['recall@10']:.4f} vs {plain['recall@10']:.4f}, NDCG@10 "
            f"{think['ndcg@10']:.4f} vs {plain['ndcg@10']:.4f}; thinking took "
            f"{rep.get('thinking/seconds', 0):.0f} s, non-thinking "
            f"{rep.get('nothinking/seconds', 0):.0f} s."
        )
    lines += [
        "",
        *steps_table(summary["steps"]),
        "",
        f"Machine: {summary['machine']}; shared with other jobs (1-min load average before, "
        f"after: {summary['load_average_before']}, {summary['load_average_after']}). Date: "
        f"{summary['date']}. Total wall time {summary['wall_s'] / 60:.0f} min. Reproduce: "
        f"`.venv/bin/python -m benchmarks.reasoner_office`.",
    ]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
