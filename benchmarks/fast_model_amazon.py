"""Fast model on an Amazon dataset (leave-one-out, full catalogue), next to SASRec (by hand).

    .venv/bin/python -m benchmarks.fast_model_amazon --dataset office --out /tmp/fm_office
    .venv/bin/python -m benchmarks.fast_model_amazon --dataset beauty --sids published \
        --out /tmp/fm_beauty --no-write

Every step is a `reasonrec` command in a subprocess (1 torch thread, timed, logs in OUT/logs):

1. `index build` — `--sids published` imports `<Name>.index.rq-kmeans.json` from the dataset
   folder; `--sids ours` builds MiniLM + residual k-means SIDs (the dataset needs item text);
2. `train fast` with the options given after `--` (the defaults below otherwise);
3. `eval --split test` of the best checkpoint on every test user, without a trace and with
   the training teacher's traces, plus most-popular; for a model with an item head
   (`--item-loss-weight`), a second eval with `--item-head-weight 0` adds the SID beam alone.

A step whose output exists is skipped (delete OUT to start over). SASRec's test numbers are
read from the "Baselines" section of benchmarks/RESULTS.md (`benchmarks.baselines`), so the
table compares against the measured, tuned baseline. Writes the section
"Fast model on Amazon <Name>" of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.reasoner_synthetic import Runner, load_average, machine
from benchmarks.results_file import replace_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
DATA = REPO.parent / "shared" / "datasets"
NAMES = {"office": "Office", "beauty": "Beauty"}
DEFAULT_TRAIN = [
    "--teacher", "rule", "--epochs", "40", "--hidden-size", "128", "--layers", "2",
    "--max-items", "20", "--hidden-dropout", "0.2", "--label-smoothing", "0.1",
    "--eval-users", "5000", "--patience", "5",
]  # fmt: skip


def sasrec_row(dataset: str, results: Path = RESULTS) -> dict[str, float] | None:
    """SASRec's test metrics for `dataset` from the Baselines section (None if absent)."""
    if not results.is_file():
        return None
    text = results.read_text()
    head = re.search(rf"^### {NAMES[dataset]} \(.*$", text, flags=re.M)
    if head is None:
        return None
    m = re.search(
        r"^\| \*\*SASRec \(full softmax\)\*\* \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \| ([\d.]+) \|",
        text[head.end() :],
        flags=re.M,
    )
    if m is None:
        return None
    keys = ("recall@5", "ndcg@5", "recall@10", "ndcg@10")
    return dict(zip(keys, map(float, m.groups()), strict=True))


def sids_description(manifest: dict[str, Any]) -> str:
    """How our SIDs were built, from the release's recorded sid_index config."""
    cfg = manifest["configs"]["sid_index"]
    levels = ",".join(str(v) for v in cfg["sids"]["rq"]["levels"])
    weight = cfg.get("collaborative", {}).get("weight", 0.0)
    if weight >= 1.0:
        source = "item co-occurrence embeddings of the train sequences alone (no item text)"
    elif weight > 0:
        source = (
            f"{cfg['embedder']} text embeddings mixed with item co-occurrence embeddings of the "
            f"train sequences (weight {weight})"
        )
    else:
        source = f"{cfg['embedder']} text embeddings"
    return f"{source}, residual k-means {levels} + a disambiguation level"


def _table(report: dict[str, Any], sasrec: dict[str, float] | None) -> list[str]:
    lines = ["| model | R@5 | N@5 | R@10 | N@10 |", "| --- | ---: | ---: | ---: | ---: |"]
    rows = [(r["model"], r) for r in report["rows"]]
    if sasrec is not None:
        rows.append(('SASRec, full softmax (section "Baselines")', sasrec))
    for name, r in rows:
        cells = " | ".join(f"{r[k]:.4f}" for k in ("recall@5", "ndcg@5", "recall@10", "ndcg@10"))
        lines.append(f"| {name} | {cells} |")
    return lines


def add_sid_beam_rows(rows: list[dict[str, Any]], sid_rows: list[dict[str, Any]]) -> None:
    """Put the SID-beam-alone rows (eval with `--item-head-weight 0`) after the fast-model
    rows and before the baselines, named as such."""
    at = next((i for i, r in enumerate(rows) if not r["model"].startswith("fast")), len(rows))
    named = [
        {**r, "model": r["model"] + " (SID beam alone, no item-head re-ranking)"} for r in sid_rows
    ]
    rows[at:at] = named


def markdown(summary: dict[str, Any]) -> str:
    """The RESULTS.md section of one run."""
    rep, fm = summary["eval"], summary["fast_model"]
    lines = [
        f"Written {summary['date']}; {summary['machine']}; load average at the end "
        f"{summary['load']}. Leave-one-out, every test user ({rep['users']:,}), full catalogue "
        f"({rep['catalogue']:,} items), beam {rep['beams']}, history not excluded. SIDs: "
        f"{summary['sids']}.",
        "",
        *_table(rep, summary.get("sasrec")),
        "",
        f"- Training: best epoch {fm['best_epoch']} of {fm['epochs_run']} (early stopping on "
        f"validation Recall@10), {fm['train_seconds'] / 60:.1f} min wall; curves below.",
    ]
    sas = summary.get("sasrec")
    best = max(rep["rows"], key=lambda r: r["recall@10"])
    if sas is not None:
        verdict = "above" if best["recall@10"] > sas["recall@10"] else "below"
        lines.append(
            f"- Best fast-model row ({best['model']}) Recall@10 {best['recall@10']:.4f}: "
            f"{verdict} SASRec's {sas['recall@10']:.4f}."
        )
    lines += [f"- {note}" for note in summary.get("notes", [])]
    lines += ["", f"![curves]({summary['figure']})", "", "Reproduce:", "", "```bash"]
    lines += summary["commands"]
    lines += ["```"]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(NAMES), required=True)
    p.add_argument("--sids", choices=("ours", "published"), default="ours")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument(
        "--collab-weight",
        type=float,
        default=0.5,
        help="with --sids ours: share of the co-occurrence embedding in the quantized vectors",
    )
    p.add_argument("--levels", default="256,256,256", help="with --sids ours: codebook sizes")
    p.add_argument("--beams", type=int, default=20)
    p.add_argument("--no-write", action="store_true", help="print the section only")
    p.add_argument("--note", action="append", default=[], help="a line for the section")
    p.add_argument("train_args", nargs="*", help="`train fast` options (after --)")
    args = p.parse_args(argv)
    name = NAMES[args.dataset]
    folder = DATA / args.dataset
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    rel = out / "rel"
    runner = Runner(out)
    manifest = rel / "manifest.json"
    build = ["index", "build", "--dataset", f"amazon:{folder}", "--out", str(rel)]
    if args.sids == "published":
        build += ["--sids", str(folder / f"{name}.index.rq-kmeans.json")]
        if not (folder / f"{name}.item.json").is_file():
            build += ["--embedder", "hashing"]  # no item text: no embeddings either way
    else:
        has_text = (folder / f"{name}.item.json").is_file()
        weight = args.collab_weight if has_text else 1.0  # no text: co-occurrence alone
        build += ["--collab-weight", str(weight), "--levels", args.levels]
    if manifest.is_file():
        runner.skip("index", f"{rel} exists")
    else:
        runner.run("index", build)
    train = list(args.train_args or DEFAULT_TRAIN)
    train_cmd = ["train", "fast", "--release", str(rel), *train]
    parts = json.loads(manifest.read_text()).get("parts", [])
    if "fast_model" in parts:
        runner.skip("train", "the release has a fast model")
    else:
        runner.run("train", train_cmd)
    teacher = train[train.index("--teacher") + 1] if "--teacher" in train else "none"
    teachers = "none" if teacher == "none" else f"none,{teacher}"
    eval_json = out / "eval.json"
    eval_cmd = [
        "eval", "--release", str(rel), "--split", "test", "--teachers", teachers,
        "--baselines", "popular", "--beams", str(args.beams), "--out", str(eval_json),
    ]  # fmt: skip
    if eval_json.is_file():
        runner.skip("eval", f"{eval_json} exists")
    else:
        runner.run("eval", eval_cmd)
    release = json.loads(manifest.read_text())
    commands = [build, train_cmd, eval_cmd]
    report = json.loads(eval_json.read_text())
    if float(release["configs"]["fast_model"].get("item_head_weight", 0.0)) > 0:
        sid_json = out / "eval_sid_beam.json"
        sid_cmd = [
            "eval", "--release", str(rel), "--split", "test", "--teachers", "none",
            "--baselines", "none", "--beams", str(args.beams), "--item-head-weight", "0",
            "--out", str(sid_json),
        ]  # fmt: skip
        if sid_json.is_file():
            runner.skip("eval (SID beam alone)", f"{sid_json} exists")
        else:
            runner.run("eval (SID beam alone)", sid_cmd)
        commands.append(sid_cmd)
        add_sid_beam_rows(report["rows"], json.loads(sid_json.read_text())["rows"])
    notes = args.note
    previous = out / "summary.json"
    earlier = json.loads(previous.read_text()) if previous.is_file() else {}
    if not notes:  # a re-render keeps the run's notes
        notes = earlier.get("notes", [])
    ran = any(not step["command"].startswith("(skipped") for step in runner.steps)
    when = {  # date and load of the run itself, not of a re-render
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "load": load_average(),
    }
    if not ran and earlier:
        when = {k: earlier[k] for k in when}
    summary = {
        **when,
        "sids": (
            f"published `{name}.index.rq-kmeans.json`, imported"
            if args.sids == "published"
            else f"ours: {sids_description(release)}"
        ),
        "out": str(out),
        "eval": report,
        "fast_model": release["metrics"]["fast_model"],
        "sasrec": sasrec_row(args.dataset),
        "steps": runner.steps,
        "commands": ["reasonrec " + shlex.join(c) for c in commands],
        "notes": notes,
        "figure": f"figures/fast_model_{args.dataset}.png",
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    text = markdown(summary)
    print(text)
    if not args.no_write:
        figure = RESULTS.parent / summary["figure"]
        figure.parent.mkdir(exist_ok=True)
        shutil.copyfile(rel.parent / f"{rel.name}.runs" / "fast" / "curves.png", figure)
        heading = f"## Fast model on Amazon {name}"
        replace_section(heading, f"{heading}\n\n{text}\n", RESULTS)
        print(f"wrote section {heading!r} of {shlex.quote(str(RESULTS))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
