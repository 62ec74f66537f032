"""The reasoner's tiers in `reasonrec eval` and in the reasoner trainers' validation.

R0 item perception and R1 item-to-item on the items whose per-item alignment samples were held
out of training (`align_holdout`), R2 interest (and, with persona labels, persona match) and
R3 recommendation on (history, target) samples, per decoding mode (thinking / non-thinking;
R2 needs a thought).
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from sid_index.datasets.splits import SequenceSamples
from sid_index.errors import ConfigError, DataError
from trainer.fast_eval import eval_subset
from trainer.metrics import KS
from trainer.pipeline import (
    Workspace,
    known_personas,
    reasoner_config,
    release_personas,
    require_reasoner,
)

if TYPE_CHECKING:
    from trainer.cot.corpus import AlignConfig, AlignSample
    from trainer.evaluation import EvalRequest
    from trainer.reasoner.model import Reasoner

REASONER_TIERS = ("r0", "r1", "r2", "r3")
REASONER_MODES = ("thinking", "nonthinking")


def check_reasoner_tiers(tiers: Sequence[str], modes: Sequence[str]) -> None:
    """ConfigError naming unknown tiers or modes (or no mode while R2/R3 are asked for)."""
    bad_tiers = [t for t in tiers if t not in REASONER_TIERS]
    if bad_tiers:
        raise ConfigError(f"unknown reasoner tiers {bad_tiers}; choose from {REASONER_TIERS}")
    bad_modes = [m for m in modes if m not in REASONER_MODES]
    if bad_modes:
        raise ConfigError(f"unknown reasoner modes {bad_modes}; choose from {REASONER_MODES}")
    if {"r2", "r3"} & set(tiers) and not modes:
        raise ConfigError("reasoner tiers r2/r3 need at least one mode (thinking, nonthinking)")


_SID_RUN_RE = re.compile(r"(?:<[a-z]_\d+>)+")


@dataclass(frozen=True, slots=True)
class AlignHoldout:
    """Alignment samples split into the trained ones and the R0/R1 evaluation sets."""

    items: np.ndarray
    """(H,) catalogue rows whose per-item samples (sid2text, text2sid, item2item) are held out."""
    train: list[AlignSample]
    """Every other alignment sample."""
    r0: list[AlignSample]
    """sid2text samples of the held-out items (R0: SID -> category)."""
    r1: list[AlignSample]
    """item2item samples of the held-out items (R1: related items)."""


def holdout_items(num_items: int, count: int, seed: int) -> np.ndarray:
    """(H,) sorted seeded catalogue rows to hold out; at most a fifth of the catalogue."""
    count = max(0, min(count, num_items // 5))
    rng = np.random.default_rng([seed, 31])
    return np.sort(rng.choice(num_items, size=count, replace=False))


def align_holdout(ws: Workspace, config: AlignConfig, count: int, seed: int) -> AlignHoldout:
    """The workspace's alignment corpus with `count` items' per-item samples held out."""
    from sid_index.codes import format_sid
    from trainer.cot.corpus import build_align_corpus

    samples = build_align_corpus(ws.split, ws.index.catalog, ws.codes, config)
    items = holdout_items(len(ws.index.catalog), count, seed)
    held = {format_sid(c) for c in ws.codes[items].tolist()}
    train: list[AlignSample] = []
    r0: list[AlignSample] = []
    r1: list[AlignSample] = []
    for s in samples:
        # The item a per-item sample is about: the first SID of its prompt (sid2text,
        # item2item) or its completion (text2sid).
        text = s.completion if s.task == "text2sid" else s.prompt
        m = _SID_RUN_RE.search(text)
        if s.task != "sequence" and m is not None and m.group(0) in held:
            if s.task == "sid2text":
                r0.append(s)
            elif s.task == "item2item":
                r1.append(s)
            continue
        train.append(s)
    return AlignHoldout(items, train, r0, r1)


def evaluate_reasoner(
    reasoner: Reasoner,
    ws: Workspace,
    samples: SequenceSamples | None,
    *,
    tiers: Sequence[str] = REASONER_TIERS,
    modes: Sequence[str] = REASONER_MODES,
    holdout: AlignHoldout | None = None,
    max_history: int = 20,
    max_think_tokens: int = 192,
    limit: int | None = None,
    beams: int = 20,
    batch_size: int = 16,
    persona_labels: np.ndarray | None = None,
) -> dict[str, float]:
    """The reasoner's tiers as flat metrics ("r0/...", "r1/...", "thinking/r2/...",
    "thinking/r3/...", "nothinking/r3/...").

    Args:
        samples: (history, target) samples for R2/R3 (the split's valid or test inputs); None
            when only r0/r1 are asked for.
        holdout: the R0/R1 evaluation sets (required for r0/r1).
        limit: evaluate R2/R3 on a seeded subset of this many samples.
        persona_labels: (U,) known persona id per split user (`known_personas`): R2 then
            also reports how often the thought names the user's own persona.
    """
    from slow_path.cot_format import PromptItem
    from trainer.reasoner.evaluation import (
        item_perception,
        item_to_item,
        persona_match,
        recommendation,
    )
    from trainer.reasoner.generate import ReasonConfig

    check_reasoner_tiers(tiers, modes)
    out: dict[str, float] = {}
    if {"r0", "r1"} & set(tiers) and holdout is None:
        raise ConfigError("reasoner tiers r0/r1 need the alignment hold-out")
    if "r0" in tiers and holdout is not None:
        if not holdout.r0:
            raise DataError("no held-out sid2text samples to evaluate R0 on")
        r0 = item_perception(reasoner, holdout.r0, batch_size=batch_size)
        out.update({**r0.to_dict(), "r0/items": float(r0.num_items)})
    if "r1" in tiers and holdout is not None and holdout.r1:
        out.update(item_to_item(reasoner, holdout.r1, ws.index.trie, k=max(KS)))
        out["r1/items"] = float(len(holdout.r1))
    if not {"r2", "r3"} & set(tiers):
        return out
    if samples is None:
        raise ConfigError("reasoner tiers r2/r3 need (history, target) samples")
    idx = eval_subset(len(samples), limit)
    catalog, codes = ws.index.catalog, ws.codes
    histories = [samples.history(int(j))[-max_history:] for j in idx]
    order = np.argsort([len(h) for h in histories], kind="stable")  # less padding per batch
    prompts = [
        [PromptItem(tuple(codes[i].tolist()), catalog.titles[i]) for i in histories[j].tolist()]
        for j in order.tolist()
    ]
    targets = samples.targets[idx][order]
    out["users"] = float(len(idx))
    for mode in modes:
        thinking = mode == "thinking"
        if not thinking and "r3" not in tiers:
            continue  # R2 needs a thought
        t = time.perf_counter()
        config = ReasonConfig(
            thinking=thinking, max_think_tokens=max_think_tokens, num_answers=max(KS),
            num_beams=max(beams, max(KS)), batch_size=batch_size,
        )  # fmt: skip
        metrics, outputs = recommendation(
            reasoner, ws.index.trie, prompts, targets, config=config, ks=KS
        )
        if thinking and persona_labels is not None:
            truth = np.asarray(persona_labels)[samples.users[idx][order]]
            metrics["thinking/r2/persona_match"] = persona_match(outputs, truth, reasoner)
        keep = {t_ for t_ in ("r2", "r3") if t_ in tiers}
        out.update({k: v for k, v in metrics.items() if k.split("/")[1] in keep})
        out[f"{'thinking' if thinking else 'nothinking'}/seconds"] = round(
            time.perf_counter() - t, 1
        )
    return out


def split_persona_labels(ws: Workspace) -> np.ndarray | None:
    """(U,) known persona per split user when the release's personas come from labels."""
    personas = release_personas(ws)
    known = None if personas is None else known_personas(ws, personas)
    return None if known is None else known[ws.split.user_index]


def reasoner_report(ws: Workspace, samples: SequenceSamples, req: EvalRequest) -> dict[str, Any]:
    """The release reasoner's tiers for `run_evaluation` (settings from the release config)."""
    from trainer.cot.corpus import AlignConfig
    from trainer.reasoner.model import load_reasoner

    cfg = reasoner_config(ws)
    reasoner = load_reasoner(require_reasoner(ws))
    holdout = None
    if {"r0", "r1"} & set(req.tiers):
        corpus = dict(cfg.get("align_corpus", {}))
        corpus["tasks"] = tuple(corpus.get("tasks", AlignConfig().tasks))
        holdout = align_holdout(
            ws,
            AlignConfig(**corpus),
            int(cfg.get("eval_items", 200)),
            int(cfg.get("seed", 0)),
        )
    think = req.max_think_tokens or int(cfg.get("max_think_tokens", 192))
    metrics = evaluate_reasoner(
        reasoner, ws, samples, tiers=req.tiers, modes=req.modes, holdout=holdout,
        max_history=int(cfg.get("max_history", 20)), max_think_tokens=think, limit=req.limit,
        beams=req.beams, persona_labels=split_persona_labels(ws),
    )  # fmt: skip
    return {"tiers": list(req.tiers), "modes": list(req.modes), "max_think_tokens": think} | metrics


def reasoner_markdown(rep: dict[str, Any]) -> str:
    """The reasoner's R0-R2 tiers as Markdown (its R3 rows are in the main table)."""
    out = ["Reasoner tiers\n"]
    if "r0/category_acc" in rep:
        out.append(
            f"- R0 item perception ({int(rep['r0/items'])} held-out items): category accuracy "
            f"{rep['r0/category_acc']:.4f} (chance {rep['r0/chance']:.4f}, majority class "
            f"{rep['r0/majority']:.4f}); whole description {rep['r0/description_acc']:.4f}"
        )
    k = max(KS)
    if f"r1/hit@{k}" in rep:
        out.append(
            f"- R1 item-to-item ({int(rep['r1/items'])} held-out items): hit@{k} "
            f"{rep[f'r1/hit@{k}']:.4f} (random {rep[f'r1/random_hit@{k}']:.4f})"
        )
    if "thinking/r2/parsed" in rep:
        out.append(
            f"- R2 interest (thinking, {int(rep['users'])} users, budget "
            f"{rep['max_think_tokens']} tokens): parseable thoughts "
            f"{rep['thinking/r2/parsed']:.1%}, an interest contains the next item "
            f"{rep['thinking/r2/interest_hit']:.4f}, the predicted next interest does "
            f"{rep['thinking/r2/next_interest_hit']:.4f}; {rep['thinking/r2/interests']:.2f} "
            f"interests and {rep['thinking/r2/think_tokens']:.0f} thought tokens per user, "
            f"{rep['thinking/r2/budget_hit']:.1%} cut by the budget"
        )
    if "thinking/r2/persona_match" in rep:
        out.append(
            f"- R2 persona: the thought names the user's own (labelled) persona "
            f"{rep['thinking/r2/persona_match']:.4f}"
        )
    return "\n".join(out) + "\n"
