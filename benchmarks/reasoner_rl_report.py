"""The RESULTS.md section of the reasoner RL benchmark (`python -m benchmarks.reasoner_rl
report`): the data and start sentences read from the release manifest, one table per domain with
the issue's verdicts, the RL runs' dynamics, the training-curve figure and the names (figure file,
link anchor) derived from the section title. Rendering only: the evaluation that produces the
numbers lives in `benchmarks.reasoner_rl`.
"""

from __future__ import annotations

import json
import os
import platform
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sid_index.errors import ConfigError
from trainer.metrics import metrics_from_ranks, paired_difference

SECTION = "## Reasoner RL (GRPO, specialize-then-unify)"
OFFICE_SECTION = "## Reasoner RL on Amazon Office"
# The synthetic section's figure is older than title-derived names; it keeps its committed name.
_FIGURE_NAMES = {SECTION: "reasoner_rl_synthetic"}
# The `base` stage's share of thinking SFT samples; its older releases did not record it.
BASE_THINKING_RATIO = 0.5
# Release config keys of the per-domain RL experts ("reasoner_rl/<domain>").
RL_PREFIX = "reasoner_rl/"
_NUMBERS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
_EMBEDDERS = {"minilm": "MiniLM", "hashing": "hashing-embedder"}


# -- names derived from the title and sentences read from the manifest -------------------------


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
    if cfg.get("sft_corpus", {}).get("hindsight") is False:
        sft.append("no hindsight")
    if cfg.get("sft_align_replay"):
        sft.append(f"{float(cfg['sft_align_replay']):.0%} alignment replay")
    sft.append(_seconds(m, "sft_s", "sft/train_seconds"))
    align = _seconds(m, "align_s", "align_warmup/train_seconds", "align/train_seconds")
    built = (
        "built by `python -m benchmarks.reasoner_rl base`"
        if ours
        else "as the release has it (`reasonrec train reasoner-align`, `reasoner-sft`)"
    )
    personas = (
        "; its persona part names each user's own labelled persona (`--persona-source labels`)"
        if cfg.get("persona_source") == "labels"
        else ""
    )
    return (
        f"Start: a `{model}` reasoner ({layers} layers × {hidden}) after itemic alignment "
        f"({epochs('align')}, {align}) and CoT SFT with the "
        f"{cfg.get('sft_teacher', 'rule' if ours else '?')} teacher ({', '.join(sft)}{personas}), "
        f"{built}."
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


# -- figure, tables and the whole section ------------------------------------------------------


def curves_figure(work: Path, domains: list[str], out: Path, heading: str) -> Path | None:
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


def _paired(a: Mapping[str, Any], b: Mapping[str, Any], mode_a: str, mode_b: str) -> float | None:
    """Standard error of Recall@10(a, mode_a) - Recall@10(b, mode_b) paired over the same users,
    from the per-user hit ranks the report keeps (None when a report predates them)."""
    ra, rb = a.get("ranks", {}).get(mode_a), b.get("ranks", {}).get(mode_b)
    if ra is None or rb is None or len(ra) != len(rb) or len(ra) < 2:
        return None
    _, se = paired_difference(metrics_from_ranks(ra, (10,)), metrics_from_ranks(rb, (10,)), 10)
    return max(se, 1e-9)


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


def section_markdown(
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

            pairs = (
                _paired(expert, sft, "thinking", "thinking"),
                _paired(expert, sft, "thinking", "nothinking"),
                _paired(expert, expert, "thinking", "nothinking"),
            )
            if all(p is not None for p in pairs):
                se1, se2, se3 = (float(p) for p in pairs)  # type: ignore[arg-type]
                how = f"SE: paired over the same {n} users, from each user's hit"
            else:
                se1 = se2 = se3 = se
                how = (
                    f"SE: the standard error of a difference of two independent recalls on {n} "
                    f"users, about {se:.3f}; the models are evaluated on the same users, so this "
                    "is conservative"
                )
            lines.append(
                f"- Issue criteria — thinking after RL beats thinking after SFT: "
                f"{_verdict(t_rl - t_sft, se1)}; beats non-thinking after SFT: "
                f"{_verdict(t_rl - nt, se2)}; beats non-thinking of the same RL model: "
                f"{_verdict(t_rl - nt_rl, se3)}. ({how}.)"
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
