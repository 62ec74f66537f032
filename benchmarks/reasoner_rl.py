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
named after the title.

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
import platform
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.results_file import replace_section
from sid_index.errors import ConfigError, ReasonrecError, ReleaseError

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Reasoner RL (GRPO, specialize-then-unify)"
OFFICE_SECTION = "## Reasoner RL on Amazon Office"
# The synthetic section's figure is older than title-derived names; it keeps its committed name.
_FIGURE_NAMES = {SECTION: "reasoner_rl_synthetic"}
DATASET = "synthetic:users=1500,items=400,categories=24,domains=video+ecommerce,seed=7"
LEVELS = "16,16"
MAX_HISTORY = 10
BASE_THINKING_RATIO = 0.5
DEFAULT_THINK = 128
RL_PREFIX = "reasoner_rl/"
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_EMBEDDERS = {"minilm": "MiniLM", "hashing": "hashing-embedder"}


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
    from trainer.pipeline import build_teacher, open_workspace
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
    teacher = build_teacher("rule", ws)
    assert teacher is not None
    sft = build_sft_corpus(
        ws.split, ws.index.catalog, ws.codes, teacher,  # type: ignore[arg-type]
        CorpusConfig(
            cuts_per_user=args.cuts, max_history=MAX_HISTORY,
            default_thinking_ratio=BASE_THINKING_RATIO,
        ),
    )  # fmt: skip
    align = build_align_corpus(ws.split, ws.index.catalog, ws.codes, AlignConfig())
    timings["corpus_s"] = time.perf_counter() - t
    num_personas = teacher.personas.num_personas  # type: ignore[attr-defined]
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
        reasoner.save(writer.part_dir("reasoner"))
        writer.set_config(
            "reasoner",
            {"base": "scratch:tiny", "align": _asdict(align_cfg), "sft": _asdict(sft_cfg),
             "num_personas": num_personas, "max_history": MAX_HISTORY, "sft_teacher": "rule",
             "sft_corpus": {"default_thinking_ratio": BASE_THINKING_RATIO}},
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


# -- report: section text ---------------------------------------------------------------------


def slug(title: str) -> str:
    """File-name slug of a section title: "## Reasoner RL on Amazon Office" →
    "reasoner_rl_on_amazon_office" (ConfigError when no letter or digit is left)."""
    words = re.findall(r"[a-z0-9]+", title.lower())
    if not words:
        raise ConfigError(f"title {title!r} has no letters or digits to name its figure")
    return "_".join(words)


def figure_name(title: str) -> str:
    """The PNG (in benchmarks/figures/) of the section `title`."""
    return _FIGURE_NAMES.get(title, slug(title)) + ".png"


def anchor(title: str) -> str:
    """GitHub's link anchor of a `## ` heading: "## Reasoner RL on X" → "reasoner-rl-on-x"."""
    text = title.removeprefix("## ").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _count(n: int, noun: str) -> str:
    word = _NUMBERS[n] if 0 <= n < len(_NUMBERS) else str(n)
    return f"{word} {noun}{'' if n == 1 else 's'}"


def _all_domains(n: int) -> str:
    return {1: "its one domain", 2: "both domains"}.get(n, f"all {_count(n, 'domain')}")


def _plural(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _and(names: Sequence[str]) -> str:
    """ "a", "a and b", "a, b and c"."""
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def data_sentence(
    manifest: Mapping[str, Any],
    catalog_domains: Sequence[str],
    rl_domains: Sequence[str],
    max_history: int,
) -> str:
    """The section's "Data:" sentence: the dataset spec and SID levels the release recorded,
    the catalogue's domains and those with an RL expert."""
    sid_cfg = manifest["configs"].get("sid_index", {})
    sid_m = manifest["metrics"].get("sid_index", {})
    spec = str(sid_cfg.get("dataset", "unknown dataset"))
    synthetic = spec.startswith("synthetic:")
    cat, rl = sorted(set(catalog_domains)), sorted(set(rl_domains))
    facts = [] if synthetic else [f"`{sid_cfg.get('dataset_name', '?')}`, "
                                  f"{sid_m.get('num_items', '?')} items"]  # fmt: skip
    if cat == rl:
        facts.append(_count(len(cat), "domain"))
    else:
        facts.append(f"{_count(len(cat), 'catalogue domain')}, RL experts for {_and(rl)}")
    personas = manifest["configs"].get("reasoner", {}).get("num_personas")
    if personas is not None:
        facts.append(f"{personas} {'planted personas' if synthetic else 'persona prototypes'}")
    levels = sid_m.get("level_sizes") or sid_cfg.get("sids", {}).get("rq", {}).get("levels", [])
    base = int(sid_m.get("base_levels", len(levels)))
    source = str(sid_m.get("source", ""))
    if source.startswith("imported:"):
        who = f"SIDs imported from `{source.removeprefix('imported:')}`"
    else:
        embedder = str(sid_cfg.get("embedder", "?"))
        who = f"{_EMBEDDERS.get(embedder, embedder)} SIDs"
    extra = " + disambiguation" if len(levels) > base else ""
    return (
        f"Data: `{spec}` ({', '.join(facts)}), {who} `{','.join(map(str, levels[:base]))}`"
        f"{extra}, prompts = the last {max_history} items."
    )


def _seconds(metrics: Mapping[str, Any], *keys: str) -> str:
    found = [float(metrics[k]) for k in keys if k in metrics]
    return f"{sum(found):.0f} s" if found else "time not recorded"


def start_sentence(manifest: Mapping[str, Any], arch: Mapping[str, Any]) -> str:
    """The section's "Start:" sentence: the SFT reasoner the RL starts from.

    Args:
        arch: the reasoner's Hugging Face `config.json` (layers, hidden size).
    """
    cfg = manifest["configs"].get("reasoner", {})
    m = manifest["metrics"].get("reasoner", {})
    ours = "base" in cfg  # written by this benchmark's `base` stage
    model = cfg.get("base_model", cfg.get("base", "?"))
    layers, hidden = arch.get("num_hidden_layers", "?"), arch.get("hidden_size", "?")

    def epochs(stage: str) -> str:
        n = cfg.get(stage, {}).get("epochs")
        return "? epochs" if n is None else f"{n} epoch{'' if n == 1 else 's'}"

    sft = [epochs("sft")]
    ratio = cfg.get("sft_corpus", {}).get("default_thinking_ratio")
    ratio = BASE_THINKING_RATIO if ratio is None and ours else ratio
    if ratio is not None:
        sft.append("half the samples thinking" if ratio == 0.5 else f"{ratio:.0%} thinking")
    if cfg.get("sft_align_replay"):
        sft.append(f"{float(cfg['sft_align_replay']):.0%} alignment replay")
    sft.append(_seconds(m, "sft_s", "sft/train_seconds"))
    align = _seconds(m, "align_s", "align_warmup/train_seconds", "align/train_seconds")
    built = (
        "built by `python -m benchmarks.reasoner_rl base`"
        if ours
        else "as the release has it (`reasonrec train reasoner-align`, `reasoner-sft`)"
    )
    return (
        f"Start: a `{model}` reasoner ({layers} layers × {hidden}) after itemic alignment "
        f"({epochs('align')}, {align}) and CoT SFT with the "
        f"{cfg.get('sft_teacher', 'rule' if ours else '?')} teacher ({', '.join(sft)}), {built}."
    )


def office_line(title: str, dataset: str, results_md: str) -> str | None:
    """The synthetic section's line about Office: a link once RESULTS.md has the Office
    section, else that it was not run; None for any other section."""
    if title == OFFICE_SECTION or not dataset.startswith("synthetic:"):
        return None
    if re.search(rf"^{re.escape(OFFICE_SECTION)}$", results_md, flags=re.MULTILINE):
        name = OFFICE_SECTION.removeprefix("## ")
        return f"Office: the same pipeline on real data is in [{name}](#{anchor(OFFICE_SECTION)})."
    return (
        "Office: not run for this section; the `rl`, `unify` and `report --title "
        f'"{OFFICE_SECTION}"` stages on a copy of an Office release with an SFT reasoner '
        "write its own section (see the module docstring)."
    )


# -- report -------------------------------------------------------------------------------------


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
        ev = recall_evaluator(
            prompts, ws.index.catalog, ws.codes, ws.index.trie, max_think_tokens=think,
            modes=("thinking", "nothinking"), prefix="", batch_size=32,
        )  # fmt: skip
        for label, path in _models(release, d).items():
            t = time.perf_counter()
            metrics = ev(load_reasoner(path))
            extra = {"num_users": float(len(prompts)), "eval_s": time.perf_counter() - t}
            results.setdefault(d, {})[label] = metrics | extra
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
    figure = _plot(args.work, list(results), out, heading)
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
    text = _markdown(
        args.work, manifest, results, head, f"figures/{name}" if figure else None,
        [*notes, *([line] if line else [])], parallel=not args.sequential_experts,
        title=args.title,
    )  # fmt: skip
    print(text)
    if not args.no_write:
        replace_section(args.title, text, RESULTS)


def _plot(work: Path, domains: list[str], out: Path, heading: str) -> Path | None:
    """Training curves of the experts and of MOPD into `out` (None when no run logged any)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.training_log import read_log

    runs = {f"RL {d}": work / "runs" / "rl" / d / "metrics.jsonl" for d in domains}
    runs[f"MOPD ({_all_domains(len(domains))})"] = (
        work / "runs" / "unify" / "mopd" / "metrics.jsonl"
    )
    keys = [
        "reward/total", "reward/hit_rate", "reward/beam_hit_rate", "reward/coverage",
        "train/kl", "train/clip_frac_reason", "train/clip_frac_item",
        "rollout/think_tokens", "valid/thinking/r3/recall@10", "mopd/reverse_kl",
    ]  # fmt: skip
    logs = {name: read_log(p) for name, p in runs.items() if p.is_file()}
    if not logs:
        return None
    fig, axes = plt.subplots(2, 5, figsize=(20, 7))
    for ax, key in zip(axes.flat, keys, strict=True):
        for name, records in logs.items():
            # Later records win: a resumed run logged the steps after its checkpoint again.
            by_step = {r.step: r.metrics[key] for r in records if key in r.metrics}
            if by_step:
                xs, ys = zip(*sorted(by_step.items()), strict=True)
                ax.plot(xs, ys, marker="o", markersize=3, label=name)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.lines:  # a key no run logged (e.g. MOPD's before it ran) gets an empty panel
            ax.legend(fontsize=7)
    fig.suptitle(heading)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _dynamics(work: Path, domain: str) -> dict[str, Any] | None:
    """Summary of an expert's RL run from its metrics log (None when this work dir has none)."""
    from trainer.training_log import read_log

    run = work / "runs" / "rl" / domain
    if not (run / "metrics.jsonl").is_file():
        return None
    records = read_log(run / "metrics.jsonl")
    # A resumed run logs the steps after its last checkpoint again: keep the last record.
    by_step = {r.step: r.metrics for r in records if "reward/total" in r.metrics}
    steps = [by_step[k] for k in sorted(by_step)]
    evals = [(r.step, r.metrics["valid/thinking/r3/recall@10"]) for r in records
             if "valid/thinking/r3/recall@10" in r.metrics]  # fmt: skip
    stage = run / "stage_args.json"
    eval_users = json.loads(stage.read_text()).get("eval_users") if stage.is_file() else None

    def mean(key: str, part: list[dict[str, float]]) -> float:
        return sum(m[key] for m in part) / max(1, len(part))

    head, tail = steps[:5], steps[-5:]
    return {
        "steps": len(steps),
        "reward": (mean("reward/total", head), mean("reward/total", tail)),
        "hit_rate": (mean("reward/hit_rate", head), mean("reward/hit_rate", tail)),
        "think": (mean("rollout/think_tokens", head), mean("rollout/think_tokens", tail)),
        "kl": mean("train/kl", tail),
        "clip": (mean("train/clip_frac_reason", steps), mean("train/clip_frac_item", steps)),
        "step_s": mean("time/rollout_s", steps) + mean("time/update_s", steps),
        "evals": evals,
        "eval_users": eval_users,
    }


def _se(p: float, n: int) -> float:
    """Binomial standard error of a recall measured on n users."""
    return (p * (1 - p) / max(1, n)) ** 0.5


def _verdict(diff: float, se: float) -> str:
    return f"{'yes' if diff > 0 else 'no'} ({diff:+.4f}, {abs(diff) / se:.1f} SE)"


def _unify_text(manifest: Mapping[str, Any]) -> str:
    """ " Unify (…): RFT = …; MOPD = …." for the unified models the release has ("" if none)."""
    rft_cfg = manifest["configs"].get("reasoner_unified/rft")
    mopd_cfg = manifest["configs"].get("reasoner_unified/mopd")
    parts = []
    if rft_cfg is not None:
        samples = manifest["metrics"].get("reasoner_unified/rft", {}).get("samples", "?")
        parts.append(
            f"RFT = each expert samples {rft_cfg['rft']['samples_per_prompt']} thoughts on "
            f"{rft_cfg.get('max_prompts', '?')} train prompts of its domain, the best one that "
            f"lists the true item is kept ({samples} samples), the SFT model is fine-tuned "
            f"{rft_cfg['sft']['epochs']} epoch(s) on the union"
        )
    if mopd_cfg is not None:
        mopd = mopd_cfg["mopd"]
        parts.append(
            f"MOPD = the SFT model samples on {_all_domains(len(mopd_cfg.get('domains', [])))} "
            f"({_plural(mopd['steps'], 'step')} × {mopd['prompts_per_step']} prompts) and "
            "minimizes the full-vocabulary reverse KL to the prompt's domain expert"
        )
    return f" Unify (`reasonrec train reasoner-unify`): {'; '.join(parts)}." if parts else ""


def _markdown(
    work: Path,
    manifest: Mapping[str, Any],
    results: dict[str, dict[str, dict[str, float]]],
    head: list[str],
    figure: str | None,
    notes: Sequence[str] = (),
    *,
    parallel: bool = True,
    title: str = SECTION,
) -> str:
    """The section: `head` (title, data), the run's settings, one table per domain, notes."""
    rl_cfg = next(v for k, v in manifest["configs"].items() if k.startswith(RL_PREFIX))
    roll, grpo, reward = rl_cfg["rollout"], rl_cfg["grpo"], rl_cfg["reward"]
    experts = [k for k in manifest["configs"] if k.startswith(RL_PREFIX)]
    ours = "base" in manifest["configs"].get("reasoner", {})
    lines = [
        *head,
        "",
        f"RL per domain (`reasonrec train reasoner-rl --domain D`): "
        f"{_plural(rl_cfg['steps'], 'step')} × {rl_cfg['prompts_per_step']} prompts of that "
        f"domain, G = {roll['group_size']} "
        f"sampled thoughts (T = {roll['temperature']}) × M = {roll['lists_per_trace']} lists "
        f"of K = {roll['list_size']} from a beam pool of W = {roll['pool_size']}; reward = "
        f"{reward['hit_weight']}·NDCG-hit + {reward['coverage_weight']}·coverage + "
        f"{reward['diversity_weight']}·diversity + {reward['format_weight']}·format; clip "
        f"{grpo['clip_reason']} (reasoning) / {grpo['clip_item']} (items), non-hit groups × "
        f"{grpo['miss_weight']}, k3 KL × {grpo['kl_coef']} to the SFT model, lr {rl_cfg['lr']}."
        + _unify_text(manifest),
        "",
        "Test: leave-one-out test users whose test item lies in the domain; Recall/NDCG@10 over "
        "the full catalogue (greedy thought, then trie-constrained beam search of 10). ± is one "
        "binomial standard error.",
        "",
    ]
    for d, per_model in results.items():
        n = int(next(iter(per_model.values()))["num_users"])
        lines += [
            f"Domain **{d}** ({n} test users):",
            "",
            "| model | thinking R@10 | thinking N@10 | non-thinking R@10 | non-thinking N@10 "
            "| thought tokens | thought parsed |",
            "|---|---|---|---|---|---|---|",
        ]
        for label, m in per_model.items():
            r_t, r_n = m["thinking/r3/recall@10"], m["nothinking/r3/recall@10"]
            lines.append(
                f"| {label} | {r_t:.4f} ± {_se(r_t, n):.3f} | {m['thinking/r3/ndcg@10']:.4f} "
                f"| {r_n:.4f} ± {_se(r_n, n):.3f} | {m['nothinking/r3/ndcg@10']:.4f} "
                f"| {m['thinking/r2/think_tokens']:.1f} | {m['thinking/r2/parsed']:.2f} |"
            )
        lines.append("")
        sft = per_model.get("SFT")
        expert = next((m for k, m in per_model.items() if k.startswith("RL expert")), None)
        if sft is not None and expert is not None:
            t_rl, t_sft = expert["thinking/r3/recall@10"], sft["thinking/r3/recall@10"]
            nt = sft["nothinking/r3/recall@10"]
            nt_rl = expert["nothinking/r3/recall@10"]
            # A floor keeps the ratio finite when every recall is 0 (tiny test sets).
            se = max(_se(max(t_rl, t_sft, nt), n) * 2**0.5, 1e-9)

            lines.append(
                f"- Issue criteria — thinking after RL beats thinking after SFT: "
                f"{_verdict(t_rl - t_sft, se)}; beats non-thinking after SFT: "
                f"{_verdict(t_rl - nt, se)}; beats non-thinking of the same RL model: "
                f"{_verdict(t_rl - nt_rl, se)}. (SE: the "
                f"standard error of a difference of two independent recalls on {n} users, "
                f"about {se:.3f}; the models are evaluated on the same users, so this is "
                "conservative.)"
            )
            for label in ("unified RFT", "unified MOPD"):
                if label in per_model and t_rl > 0:
                    ratio = per_model[label]["thinking/r3/recall@10"] / t_rl
                    ok = "meets" if ratio >= 0.9 else "misses"
                    lines.append(
                        f"- {label} keeps {ratio:.0%} of the expert's thinking R@10 ({ok} the "
                        f"≥ 90 % criterion; the SFT starting point itself is at "
                        f"{t_sft / t_rl:.0%}, so this criterion says little while RL moves "
                        "the model this little)."
                    )
        dyn = _dynamics(work, d)
        if dyn is not None:
            evals = ", ".join(f"{r:.2f} (step {s})" for s, r in dyn["evals"])
            users = f" ({dyn['eval_users']} users)" if dyn["eval_users"] else ""
            lines.append(
                f"- RL run: mean reward of the first / last 5 steps {dyn['reward'][0]:.3f} / "
                f"{dyn['reward'][1]:.3f}, lists hitting the true item {dyn['hit_rate'][0]:.2f} / "
                f"{dyn['hit_rate'][1]:.2f}, thought tokens {dyn['think'][0]:.0f} / "
                f"{dyn['think'][1]:.0f}, KL (last 5) {dyn['kl']:.3f}, clip fractions reasoning "
                f"{dyn['clip'][0]:.4f} / items {dyn['clip'][1]:.4f}, {dyn['step_s']:.0f} s per "
                f"step; validation thinking R@10{users}: {evals}."
            )
        lines.append("")
    if figure is not None:
        lines += [f"![curves]({figure})", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    how = "" if len(experts) < 2 else " in parallel" if parallel else " one after another"
    reproduce = (
        "the four stages of `python -m benchmarks.reasoner_rl` (see its docstring)"
        if ours
        else "the `rl` (per domain), `unify` (rft, mopd) and "
        f'`report --title "{title}"` stages of `python -m benchmarks.reasoner_rl` on a copy '
        "of the release (see its docstring)"
    )
    lines += [
        f"Machine: 2-core CPU ({platform.machine()}), no GPU, shared with other jobs (1-min "
        f"load average at report time: {os.getloadavg()[0]:.1f}); every process 1 torch thread, "
        f"the {_count(len(experts), 'expert')} trained{how}. No GPU was lent to this session, "
        "so the issue's GPU speed-up of the RL stage was not measured. Date: "
        f"{datetime.now(UTC).strftime('%Y-%m-%d')}. Reproduce: {reproduce}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    base = sub.add_parser("base", help="synthetic release + align + SFT (real data: skip)")
    base.add_argument("--work", type=Path, required=True)
    base.add_argument("--dataset", default=DATASET)
    base.add_argument("--cuts", type=int, default=3, help="SFT cut points per user")
    base.add_argument("--sft-epochs", type=int, default=2)
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
