"""Reasoner RL benchmark: does GRPO make thinking pay, per domain, and does one unified model
keep the experts' quality? Run by hand, stage by stage (each stage skips work already done):

    .venv/bin/python -m benchmarks.reasoner_rl base   --work W   # release + align + SFT
    .venv/bin/python -m benchmarks.reasoner_rl rl     --work W --domain video   # one expert
    .venv/bin/python -m benchmarks.reasoner_rl unify  --work W --method rft     # or mopd
    .venv/bin/python -m benchmarks.reasoner_rl report --work W [--no-write]

`base` builds a synthetic multi-domain release (`reasonrec index build`, MiniLM SIDs), the
rule teacher's CoT corpus, and trains a `scratch:tiny` reasoner with the reasoner package's
own stages (`train_align`, `train_sft`); it writes the SFT reasoner as the release's
`reasoner/` part. `rl` and `unify` run `reasonrec train reasoner-rl | reasoner-unify` through
the `trainer.rl.cli` handlers. `report` evaluates every model on the test users of each
domain (Recall@10 / NDCG@10, thinking and non-thinking) and writes the RESULTS.md section.

Every process uses one torch thread (the box is shared); run the per-domain `rl` stages as
parallel processes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from benchmarks.results_file import replace_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Reasoner RL (GRPO, specialize-then-unify)"
DATASET = "synthetic:users=1500,items=400,categories=24,domains=video+ecommerce,seed=7"
LEVELS = "16,16"
MAX_HISTORY = 10


def _threads() -> None:
    import torch

    torch.set_num_threads(1)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _log(msg: str) -> None:
    print(f"[{datetime.now(UTC).strftime('%H:%M:%S')}] {msg}", flush=True)


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
        CorpusConfig(cuts_per_user=args.cuts, max_history=MAX_HISTORY, default_thinking_ratio=0.5),
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
             "num_personas": num_personas, "max_history": MAX_HISTORY},
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
    argv = [
        "reasoner-rl", "--release", str(release), "--domain", args.domain,
        "--steps", str(args.steps), "--prompts-per-step", str(args.prompts_per_step),
        "--group-size", str(args.group_size), "--lists-per-trace", str(args.lists_per_trace),
        "--list-size", "10", "--pool-size", "20", "--max-think-tokens", str(args.think),
        "--clip-reason", "0.2", "--clip-item", "0.1", "--miss-weight", "0.3",
        "--kl", str(args.kl), "--lr", str(args.lr), "--minibatch", "16",
        "--eval-users", str(args.eval_users), "--eval-every", str(args.eval_every),
        "--save-every", "5", "--threads", "1",
        "--work-dir", str(args.work / "runs" / "rl" / args.domain),
    ]  # fmt: skip
    t = time.perf_counter()
    _cli(argv)
    _log(f"rl {args.domain}: {time.perf_counter() - t:.0f} s")


def stage_unify(args: argparse.Namespace) -> None:
    release = args.work / "release"
    argv = [
        "reasoner-unify", "--release", str(release), "--method", args.method, "--to", "unified",
        "--max-think-tokens", str(args.think), "--eval-users", str(args.eval_users),
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


def stage_report(args: argparse.Namespace) -> None:
    from trainer.pipeline import open_workspace
    from trainer.reasoner.model import load_reasoner
    from trainer.rl.prompts import build_prompts
    from trainer.rl.train_rl import recall_evaluator

    release = args.work / "release"
    ws = open_workspace(release)
    domains = sorted(p.name for p in (release / "reasoner_rl").iterdir() if p.is_dir())
    results: dict[str, dict[str, dict[str, float]]] = {}
    saved = args.work / "report.json"
    if args.reuse and saved.is_file():
        results = json.loads(saved.read_text())
        domains = []  # nothing to evaluate again
    for d in domains:
        prompts = build_prompts(
            ws.split, ws.index.catalog, ws.codes, part="test", max_history=MAX_HISTORY,
            domain=d, limit=args.test_users, seed=0,
        )  # fmt: skip
        ev = recall_evaluator(
            prompts, ws.index.catalog, ws.codes, ws.index.trie, max_think_tokens=args.think,
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
    figure = _plot(args.work, sorted(results))
    text = _markdown(args.work, results, figure, args.note)
    print(text)
    if not args.no_write:
        _write_section(text)


def _plot(work: Path, domains: list[str]) -> Path | None:
    """Training curves of the experts and of MOPD into benchmarks/figures/."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainer.training_log import read_log

    runs = {f"RL {d}": work / "runs" / "rl" / d / "metrics.jsonl" for d in domains}
    runs["MOPD (both domains)"] = work / "runs" / "unify" / "mopd" / "metrics.jsonl"
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
        ax.legend(fontsize=7)
    fig.suptitle("Reasoner RL on synthetic video+ecommerce (scratch:tiny, CPU)")
    fig.tight_layout()
    out = REPO / "benchmarks" / "figures" / "reasoner_rl_synthetic.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    plt.close(fig)
    return out


def _dynamics(work: Path, domain: str) -> dict[str, Any]:
    """Summary of an expert's RL run from its metrics log."""
    from trainer.training_log import read_log

    records = read_log(work / "runs" / "rl" / domain / "metrics.jsonl")
    # A resumed run logs the steps after its last checkpoint again: keep the last record.
    by_step = {r.step: r.metrics for r in records if "reward/total" in r.metrics}
    steps = [by_step[k] for k in sorted(by_step)]
    evals = [(r.step, r.metrics["valid/thinking/r3/recall@10"]) for r in records
             if "valid/thinking/r3/recall@10" in r.metrics]  # fmt: skip

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
    }


def _se(p: float, n: int) -> float:
    """Binomial standard error of a recall measured on n users."""
    return (p * (1 - p) / max(1, n)) ** 0.5


def _verdict(diff: float, se: float) -> str:
    return f"{'yes' if diff > 0 else 'no'} ({diff:+.4f}, {abs(diff) / se:.1f} SE)"


def _markdown(
    work: Path,
    results: dict[str, dict[str, dict[str, float]]],
    figure: Path | None,
    notes: Sequence[str] = (),
) -> str:
    release = work / "release"
    manifest = json.loads((release / "manifest.json").read_text())
    rl_cfg = next(v for k, v in manifest["configs"].items() if k.startswith("reasoner_rl/"))
    roll, grpo, reward = rl_cfg["rollout"], rl_cfg["grpo"], rl_cfg["reward"]
    base_t = json.loads((work / "base_timings.json").read_text())
    rft_cfg = manifest["configs"].get("reasoner_unified/rft", {})
    rft_m = manifest["metrics"].get("reasoner_unified/rft", {})
    mopd_cfg = manifest["configs"].get("reasoner_unified/mopd", {})
    lines = [
        SECTION,
        "",
        f"Data: `{DATASET}` (two domains, 20 planted personas), MiniLM SIDs `{LEVELS}` + "
        f"disambiguation, prompts = the last {MAX_HISTORY} items. Start: a `scratch:tiny` "
        f"reasoner (4 layers × 256) after itemic alignment (1 epoch, {base_t['align_s']:.0f} s) "
        f"and CoT SFT with the rule teacher (2 epochs, half the samples thinking, "
        f"{base_t['sft_s']:.0f} s), built by `python -m benchmarks.reasoner_rl base`.",
        "",
        f"RL per domain (`reasonrec train reasoner-rl --domain D`): {rl_cfg['steps']} steps × "
        f"{rl_cfg['prompts_per_step']} prompts of that domain, G = {roll['group_size']} "
        f"sampled thoughts (T = {roll['temperature']}) × M = {roll['lists_per_trace']} lists "
        f"of K = {roll['list_size']} from a beam pool of W = {roll['pool_size']}; reward = "
        f"{reward['hit_weight']}·NDCG-hit + {reward['coverage_weight']}·coverage + "
        f"{reward['diversity_weight']}·diversity + {reward['format_weight']}·format; clip "
        f"{grpo['clip_reason']} (reasoning) / {grpo['clip_item']} (items), non-hit groups × "
        f"{grpo['miss_weight']}, k3 KL × {grpo['kl_coef']} to the SFT model, lr {rl_cfg['lr']}. "
        f"Unify (`reasonrec train reasoner-unify`): RFT = each expert samples "
        f"{rft_cfg.get('rft', {}).get('samples_per_prompt', '?')} thoughts on "
        f"{rft_cfg.get('max_prompts', '?')} train prompts of its domain, the best one that "
        f"lists the true item is kept ({rft_m.get('samples', '?')} samples), the SFT model is "
        f"fine-tuned {rft_cfg.get('sft', {}).get('epochs', '?')} epoch(s) on the union; MOPD = "
        f"the SFT model samples on both domains ({mopd_cfg.get('mopd', {}).get('steps', '?')} "
        f"steps × {mopd_cfg.get('mopd', {}).get('prompts_per_step', '?')} prompts) and "
        "minimizes the full-vocabulary reverse KL to the prompt's domain expert.",
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
            se = _se(max(t_rl, t_sft, nt), n) * 2**0.5

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
        evals = ", ".join(f"{r:.2f} (step {s})" for s, r in dyn["evals"])
        lines += [
            f"- RL run: mean reward of the first / last 5 steps {dyn['reward'][0]:.3f} / "
            f"{dyn['reward'][1]:.3f}, lists hitting the true item {dyn['hit_rate'][0]:.2f} / "
            f"{dyn['hit_rate'][1]:.2f}, thought tokens {dyn['think'][0]:.0f} / "
            f"{dyn['think'][1]:.0f}, KL (last 5) {dyn['kl']:.3f}, clip fractions reasoning "
            f"{dyn['clip'][0]:.4f} / items {dyn['clip'][1]:.4f}, {dyn['step_s']:.0f} s per step; "
            f"validation thinking R@10 (100 users): {evals}.",
            "",
        ]
    if figure is not None:
        lines += [f"![curves]({figure.relative_to(REPO / 'benchmarks')})", ""]
    lines += [f"- {note}" for note in notes] + ([""] if notes else [])
    lines += [
        f"Machine: 2-core CPU ({platform.machine()}), no GPU, shared with other jobs (1-min "
        f"load average at report time: {os.getloadavg()[0]:.1f}); every process 1 torch thread, "
        "the two experts trained in parallel. No GPU was lent to this session, so the issue's "
        "GPU speed-up of the RL stage was not measured. Date: "
        f"{datetime.now(UTC).strftime('%Y-%m-%d')}. Reproduce: the four stages of "
        "`python -m benchmarks.reasoner_rl` (see its docstring).",
        "",
    ]
    return "\n".join(lines)


def _write_section(text: str) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, leaving others alone."""
    replace_section(SECTION, text, RESULTS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="stage", required=True)
    base = sub.add_parser("base")
    base.add_argument("--work", type=Path, required=True)
    base.add_argument("--dataset", default=DATASET)
    base.add_argument("--cuts", type=int, default=3, help="SFT cut points per user")
    base.add_argument("--sft-epochs", type=int, default=2)
    rl = sub.add_parser("rl")
    rl.add_argument("--work", type=Path, required=True)
    rl.add_argument("--domain", required=True)
    rl.add_argument("--steps", type=int, default=30)
    rl.add_argument("--prompts-per-step", type=int, default=8)
    rl.add_argument("--group-size", type=int, default=4)
    rl.add_argument("--lists-per-trace", type=int, default=4)
    rl.add_argument("--think", type=int, default=128, help="thought budget in tokens")
    rl.add_argument("--kl", type=float, default=0.02)
    rl.add_argument("--lr", type=float, default=2e-5)
    rl.add_argument("--eval-users", type=int, default=100)
    rl.add_argument("--eval-every", type=int, default=10)
    un = sub.add_parser("unify")
    un.add_argument("--work", type=Path, required=True)
    un.add_argument("--method", choices=("rft", "mopd"), required=True)
    un.add_argument("--steps", type=int, default=20, help="mopd steps")
    un.add_argument("--think", type=int, default=128)
    un.add_argument("--max-prompts", type=int, default=100, help="train prompts per domain")
    un.add_argument("--eval-users", type=int, default=100)
    un.add_argument("--eval-every", type=int, default=10)
    rep = sub.add_parser("report")
    rep.add_argument("--work", type=Path, required=True)
    rep.add_argument("--test-users", type=int, default=200, help="test users per domain")
    rep.add_argument("--think", type=int, default=128)
    rep.add_argument("--no-write", action="store_true")
    rep.add_argument("--reuse", action="store_true", help="rebuild from WORK/report.json")
    rep.add_argument("--note", action="append", default=[], help="a run note (repeatable)")
    args = parser.parse_args(argv)
    _threads()
    args.work.mkdir(parents=True, exist_ok=True)
    stages = {"base": stage_base, "rl": stage_rl, "unify": stage_unify, "report": stage_report}
    stages[args.stage](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
