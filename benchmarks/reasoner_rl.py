"""Reasoner RL benchmark: does GRPO make thinking pay, per domain, and does one unified model
keep the experts' quality? Run by hand, stage by stage (each stage skips work already done):

    .venv/bin/python -m benchmarks.reasoner_rl base   --work W   # release + align + SFT
    .venv/bin/python -m benchmarks.reasoner_rl rl     --work W --domain video   # one expert
    .venv/bin/python -m benchmarks.reasoner_rl unify  --work W --method rft     # or mopd
    .venv/bin/python -m benchmarks.reasoner_rl report --work W [--title "## …"] [--no-write]

`base` builds a synthetic multi-domain release (`reasonrec index build`, MiniLM SIDs), the
rule teacher's CoT corpus, and trains a `scratch:tiny` reasoner with the reasoner package's
own stages (`train_align`, `train_sft`); it writes the SFT reasoner as the release's
`reasoner/` part. `rl` and `unify` run `reasonrec train reasoner-rl | reasoner-unify` through
the `trainer.rl.cli` handlers. `report` evaluates every model on the test users of each
domain (Recall@10 / NDCG@10, thinking and non-thinking) and writes the RESULTS.md section
named by `--title`; the data description comes from the release manifest and the figure is
named after the title (the text and figure are rendered by `benchmarks.reasoner_rl_report`).

`rl`, `unify` and `report` work on any `W/release` with a `reasoner/` part, so a real dataset
skips `base`. Amazon Office, from the release `python -m benchmarks.reasoner_office` built:

    mkdir -p W && cp -r /tmp/reasoner_office/release W/release
    .venv/bin/python -m benchmarks.reasoner_rl rl --work W --domain "Office & School Supplies"
    .venv/bin/python -m benchmarks.reasoner_rl rl --work W --domain "Office Electronics"
    .venv/bin/python -m benchmarks.reasoner_rl unify --work W --method rft   # and mopd
    .venv/bin/python -m benchmarks.reasoner_rl report --work W \
        --title "## Reasoner RL on Amazon Office"

Every process uses one torch thread (the box is shared); run the per-domain `rl` stages as
parallel processes. The thought budget defaults to the one the SFT reasoner was trained for.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.reasoner_rl_report import (
    BASE_THINKING_RATIO,
    RL_PREFIX,
    SECTION,
    curves_figure,
    data_sentence,
    figure_name,
    office_line,
    section_markdown,
    start_sentence,
)
from benchmarks.results_file import replace_section
from sid_index.errors import ConfigError, ReasonrecError, ReleaseError

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
DATASET = "synthetic:users=1500,items=400,categories=24,domains=video+ecommerce,seed=7"
LEVELS = "16,16"
MAX_HISTORY = 10
DEFAULT_THINK = 128


def _threads() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _log(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", flush=True)


def _manifest(release: Path) -> dict[str, Any]:
    """The manifest of `release`, which must hold a reasoner (ReleaseError otherwise)."""
    path = release / "manifest.json"
    if not path.is_file():
        raise ReleaseError(
            f"{release} is not a release (no manifest.json): run the `base` stage (synthetic) "
            "or copy a release with an SFT reasoner there"
        )
    manifest: dict[str, Any] = json.loads(path.read_text())
    if "reasoner" not in manifest.get("parts", []):
        raise ReleaseError(f"release {release} has no reasoner/ part (an SFT reasoner is needed)")
    return manifest


def _think(args: argparse.Namespace, manifest: Mapping[str, Any]) -> int:
    """--think, else the budget the SFT reasoner recorded, else DEFAULT_THINK tokens."""
    if args.think is not None:
        return int(args.think)
    return int(manifest["configs"].get("reasoner", {}).get("max_think_tokens", DEFAULT_THINK))


# -- base: release with an SFT'd scratch:tiny reasoner -----------------------------------------


def stage_base(args: argparse.Namespace) -> None:
    from sid_index.release import ReleaseWriter
    from trainer.cot.corpus import AlignConfig, CorpusConfig, build_align_corpus, build_sft_corpus
    from trainer.pipeline import PERSONAS_FILE, fit_personas, open_workspace, rule_teacher
    from trainer.reasoner.align import AlignTrainConfig, train_align
    from trainer.reasoner.model import load_reasoner, prepare_reasoner
    from trainer.reasoner.sft import SFTTrainConfig, train_sft

    work: Path = args.work
    release = work / "release"
    timings: dict[str, float] = {}
    if not (release / "manifest.json").is_file():
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "serving.cli", "index", "build", "--dataset", args.dataset,
             "--out", str(release), "--levels", LEVELS],
            check=True, cwd=REPO,
        )  # fmt: skip
        timings["index_s"] = time.perf_counter() - t
    ws = open_workspace(release)
    if ws.release.has_part("reasoner"):
        _log("base: release already has a reasoner")
        return
    t = time.perf_counter()
    personas = fit_personas(ws, args.persona_source)
    teacher = rule_teacher(ws, personas)
    sft = build_sft_corpus(
        ws.split, ws.index.catalog, ws.codes, teacher,
        CorpusConfig(
            cuts_per_user=args.cuts, max_history=MAX_HISTORY,
            default_thinking_ratio=args.think_ratio, hindsight=not args.no_hindsight,
        ),
    )  # fmt: skip
    align = build_align_corpus(ws.split, ws.index.catalog, ws.codes, AlignConfig())
    timings["corpus_s"] = time.perf_counter() - t
    num_personas = personas.num_personas
    _log(f"base: {len(sft)} SFT samples, {len(align)} align samples, {num_personas} personas")
    pairs: list[Any] = [*sft, *align]
    texts = [s.prompt + s.completion for s in pairs] + ws.index.catalog.texts
    reasoner = prepare_reasoner(
        "scratch:tiny", ws.index.sids.level_sizes, num_personas, corpus_texts=texts, seed=0
    )
    t = time.perf_counter()
    align_cfg = AlignTrainConfig(
        warmup_steps=0, epochs=1, batch_size=16, lr=1e-3, lr_warmup_steps=20, max_length=256,
        log_every=20,
    )  # fmt: skip
    res_a = train_align(reasoner, align, align_cfg, work / "align")
    timings["align_s"] = time.perf_counter() - t
    reasoner = load_reasoner(res_a.final_dir)
    t = time.perf_counter()
    sft_cfg = SFTTrainConfig(
        epochs=args.sft_epochs, batch_size=16, lr=5e-4, lr_warmup_steps=20, max_length=384,
        log_every=20,
    )  # fmt: skip
    res_s = train_sft(reasoner, sft, sft_cfg, work / "sft")
    timings["sft_s"] = time.perf_counter() - t
    with ReleaseWriter(release, base=ws.release) as writer:
        part = writer.part_dir("reasoner")
        reasoner.save(part)
        # The prototypes behind the `<p_k>` tokens, for the rule teacher, slow path and eval.
        personas.save(part / PERSONAS_FILE)
        writer.set_config(
            "reasoner",
            {"base": "scratch:tiny", "align": _asdict(align_cfg), "sft": _asdict(sft_cfg),
             "num_personas": num_personas, "persona_source": args.persona_source,
             "max_history": MAX_HISTORY, "sft_teacher": "rule",
             "sft_corpus": {"default_thinking_ratio": args.think_ratio,
                            "hindsight": not args.no_hindsight}},
        )  # fmt: skip
        writer.set_metrics(
            "reasoner",
            {"sft_loss": res_s.loop.final_loss, "align_loss": res_a.full.final_loss, **timings},
        )
    (work / "base_timings.json").write_text(json.dumps(timings, indent=2))
    _log(f"base done: {json.dumps({k: round(v, 1) for k, v in timings.items()})}")


def _asdict(obj: Any) -> dict[str, Any]:
    from dataclasses import asdict

    return asdict(obj)


# -- rl / unify: through the CLI handlers -----------------------------------------------------


def _cli(argv: list[str]) -> int:
    from trainer.rl.cli import add_train_commands

    parser = argparse.ArgumentParser(prog="reasonrec train")
    add_train_commands(parser.add_subparsers(dest="cmd", required=True))
    ns = parser.parse_args(argv)
    return int(ns.handler(ns))


def stage_rl(args: argparse.Namespace) -> None:
    release = args.work / "release"
    think = _think(args, _manifest(release))
    # The domain is one argv element and one directory name, so spaces and "&" are safe.
    work = args.work / "runs" / "rl" / args.domain
    argv = [
        "reasoner-rl", "--release", str(release), "--domain", args.domain,
        "--steps", str(args.steps), "--prompts-per-step", str(args.prompts_per_step),
        "--group-size", str(args.group_size), "--lists-per-trace", str(args.lists_per_trace),
        "--list-size", "10", "--pool-size", "20", "--max-think-tokens", str(think),
        "--clip-reason", "0.2", "--clip-item", "0.1", "--miss-weight", "0.3",
        "--kl", str(args.kl), "--lr", str(args.lr), "--minibatch", "16",
        "--eval-users", str(args.eval_users), "--eval-every", str(args.eval_every),
        "--save-every", "5", "--threads", "1",
        "--work-dir", str(work),
    ]  # fmt: skip
    t = time.perf_counter()
    _cli(argv)
    # What the report cannot read from the release (the validation set size).
    stage = {"eval_users": args.eval_users, "eval_every": args.eval_every, "think": think}
    (work / "stage_args.json").write_text(json.dumps(stage, indent=2))
    _log(f"rl {args.domain}: {time.perf_counter() - t:.0f} s")


def stage_unify(args: argparse.Namespace) -> None:
    release = args.work / "release"
    manifest = _manifest(release)
    if not any(k.startswith(RL_PREFIX) for k in manifest["configs"]):
        raise ReleaseError(f"release {release} has no RL experts yet: run the `rl` stage first")
    argv = [
        "reasoner-unify", "--release", str(release), "--method", args.method, "--to", "unified",
        "--max-think-tokens", str(_think(args, manifest)), "--eval-users", str(args.eval_users),
        "--threads", "1", "--work-dir", str(args.work / "runs" / "unify" / args.method),
        "--max-prompts", str(args.max_prompts), "--eval-every", str(args.eval_every),
        "--save-every", "5",
    ]  # fmt: skip
    if args.method == "rft":
        argv += ["--samples-per-prompt", "4", "--epochs", "1", "--lr", "1e-4"]
    else:
        argv += ["--steps", str(args.steps), "--prompts-per-step", "16", "--lr", "5e-5"]
    t = time.perf_counter()
    _cli(argv)
    _log(f"unify {args.method}: {time.perf_counter() - t:.0f} s")


# -- report: evaluate every model, render the section (benchmarks.reasoner_rl_report) ---------


def _models(release: Path, domain: str) -> dict[str, Path]:
    """Model label → reasoner directory, for the models that exist."""
    cands = {
        "SFT": release / "reasoner",
        f"RL expert ({domain})": release / "reasoner_rl" / domain,
        "unified RFT": release / "reasoner_unified" / "rft",
        "unified MOPD": release / "reasoner_unified" / "mopd",
    }
    return {k: v for k, v in cands.items() if (v / "config.json").is_file()}


def _notes(work: Path, given: Sequence[str]) -> list[str]:
    """--note lines, saved with the work dir; without any, the saved ones (they describe the
    runs, so a --reuse report keeps them)."""
    path = work / "report_notes.json"
    if given:
        path.write_text(json.dumps(list(given), indent=2))
        return list(given)
    return list(json.loads(path.read_text())) if path.is_file() else []


def stage_report(args: argparse.Namespace) -> None:
    from trainer.pipeline import open_workspace
    from trainer.reasoner.model import load_reasoner
    from trainer.rl.prompts import build_prompts
    from trainer.rl.train_rl import recall_evaluator

    if not args.title.startswith("## ") or "\n" in args.title:
        raise ConfigError(f"--title {args.title!r} must be one `## ` heading line")
    release = args.work / "release"
    manifest = _manifest(release)
    rl_cfgs = {k.removeprefix(RL_PREFIX): v for k, v in manifest["configs"].items()
               if k.startswith(RL_PREFIX)}  # fmt: skip
    if not rl_cfgs:
        raise ReleaseError(f"release {release} has no RL experts yet: run the `rl` stage first")
    rl_cfg = next(iter(rl_cfgs.values()))
    history = int(rl_cfg.get("max_history", MAX_HISTORY))
    think = args.think if args.think is not None else rl_cfg["rollout"]["max_think_tokens"]
    ws = open_workspace(release)
    domains = sorted(rl_cfgs)
    results: dict[str, dict[str, dict[str, float]]] = {}
    saved = args.work / "report.json"
    if args.reuse and saved.is_file():
        results = json.loads(saved.read_text())
        domains = []  # nothing to evaluate again
    for d in domains:
        prompts = build_prompts(
            ws.split, ws.index.catalog, ws.codes, part="test", max_history=history,
            domain=d, limit=args.test_users, seed=0,
        )  # fmt: skip
        ranks: dict[str, list[int]] = {}  # per mode, each user's hit rank: paired tests

        def keep(mode: str, r: Any, ranks: dict[str, list[int]] = ranks) -> None:
            ranks[mode] = [int(x) for x in r]

        ev = recall_evaluator(
            prompts, ws.index.catalog, ws.codes, ws.index.trie, max_think_tokens=think,
            modes=("thinking", "nothinking"), prefix="", batch_size=32, on_ranks=keep,
        )  # fmt: skip
        for label, path in _models(release, d).items():
            t = time.perf_counter()
            metrics = ev(load_reasoner(path))
            extra = {"num_users": float(len(prompts)), "eval_s": time.perf_counter() - t}
            results.setdefault(d, {})[label] = metrics | extra | {"ranks": dict(ranks)}
            _log(f"{d} {label}: R@10 thinking {metrics['thinking/r3/recall@10']:.4f} "
                 f"non-thinking {metrics['nothinking/r3/recall@10']:.4f}")  # fmt: skip
    saved.write_text(json.dumps(results, indent=2))
    results = dict(sorted(results.items()))
    # --no-write leaves the repository alone: the figure goes to the work dir instead.
    name = figure_name(args.title)
    out = (args.work / "figures" if args.no_write else REPO / "benchmarks" / "figures") / name
    model = manifest["configs"].get("reasoner", {})
    model_name = model.get("base_model", model.get("base", "?"))
    heading = f"{args.title.removeprefix('## ')}: {' + '.join(results)} ({model_name}, CPU)"
    figure = curves_figure(args.work, list(results), out, heading)
    arch = json.loads((release / "reasoner" / "config.json").read_text())
    spec = str(manifest["configs"].get("sid_index", {}).get("dataset", ""))
    notes = _notes(args.work, args.note)
    line = office_line(args.title, spec, RESULTS.read_text() if RESULTS.is_file() else "")
    head = [
        args.title,
        "",
        data_sentence(manifest, ws.index.catalog.domain_names(), list(rl_cfgs), history) + " "
        + start_sentence(manifest, arch),
    ]  # fmt: skip
    text = section_markdown(
        args.work, manifest, results, head, f"figures/{name}" if figure else None,
        [*notes, *([line] if line else [])], parallel=not args.sequential_experts,
        title=args.title,
    )  # fmt: skip
    print(text)
    if not args.no_write:
        replace_section(args.title, text, RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    base = sub.add_parser("base", help="synthetic release + align + SFT (real data: skip)")
    base.add_argument("--work", type=Path, required=True)
    base.add_argument("--dataset", default=DATASET)
    base.add_argument("--cuts", type=int, default=3, help="SFT cut points per user")
    base.add_argument("--sft-epochs", type=int, default=2)
    base.add_argument("--think-ratio", type=float, default=BASE_THINKING_RATIO)
    base.add_argument(
        "--no-hindsight", action="store_true", help="thoughts guess the next interest blind"
    )
    base.add_argument(
        "--persona-source",
        choices=("kmeans", "labels"),
        default="kmeans",
        help="persona prototypes: k-means, or the dataset's persona labels (synthetic: planted)",
    )
    think_help = "thought budget in tokens (default: the SFT reasoner's, else 128)"
    rl = sub.add_parser("rl", help="one domain's expert (GRPO) into W/release/reasoner_rl/D")
    rl.add_argument("--work", type=Path, required=True)
    rl.add_argument("--domain", required=True, help='a catalogue domain (quote "A & B")')
    rl.add_argument("--steps", type=int, default=30)
    rl.add_argument("--prompts-per-step", type=int, default=8)
    rl.add_argument("--group-size", type=int, default=4)
    rl.add_argument("--lists-per-trace", type=int, default=4)
    rl.add_argument("--think", type=int, default=None, help=think_help)
    rl.add_argument("--kl", type=float, default=0.02)
    rl.add_argument("--lr", type=float, default=2e-5)
    rl.add_argument("--eval-users", type=int, default=100)
    rl.add_argument("--eval-every", type=int, default=10)
    un = sub.add_parser("unify", help="fuse the experts into W/release/reasoner_unified/M")
    un.add_argument("--work", type=Path, required=True)
    un.add_argument("--method", choices=("rft", "mopd"), required=True)
    un.add_argument("--steps", type=int, default=20, help="mopd steps")
    un.add_argument("--think", type=int, default=None, help=think_help)
    un.add_argument("--max-prompts", type=int, default=100, help="train prompts per domain")
    un.add_argument("--eval-users", type=int, default=100)
    un.add_argument("--eval-every", type=int, default=10)
    rep = sub.add_parser("report", help="evaluate every model; the RESULTS.md section")
    rep.add_argument("--work", type=Path, required=True)
    rep.add_argument("--title", default=SECTION, help="the section's `## ` heading")
    rep.add_argument("--test-users", type=int, default=200, help="test users per domain")
    rep.add_argument("--think", type=int, default=None, help="default: the RL experts' budget")
    rep.add_argument("--no-write", action="store_true", help="print only (figure into WORK)")
    rep.add_argument("--reuse", action="store_true", help="rebuild from WORK/report.json")
    rep.add_argument("--note", action="append", default=[], help="a run note (repeatable)")
    rep.add_argument(
        "--sequential-experts", action="store_true", help="the experts did not train in parallel"
    )
    args = parser.parse_args(argv)
    _threads()
    if args.stage == "base":
        args.work.mkdir(parents=True, exist_ok=True)
    stages = {"base": stage_base, "rl": stage_rl, "unify": stage_unify, "report": stage_report}
    try:
        stages[args.stage](args)
    except ReasonrecError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
