"""`reasonrec train reasoner-sft`: CoT SFT of the release's aligned reasoner.

The rule (or LLM) teacher writes the three-part thoughts for the train split's cut points, a
share of alignment samples is replayed against forgetting, validation reports R0–R3 on the
valid split, and the release's `reasoner/` part is rewritten (options: `reasoner_cli.py`).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import TYPE_CHECKING, Any

from sid_index.errors import ConfigError, ReleaseError
from trainer.reasoner_cli import (
    last_with,
    loop_kwargs,
    loop_metrics,
    print_metrics,
    runs,
    setup,
    write_release,
)

if TYPE_CHECKING:
    from trainer.reasoner.model import Reasoner


def domain_ratios(spec: str) -> dict[str, float]:
    """ "video=0.7,ads=0.3" -> {"video": 0.7, "ads": 0.3} (ConfigError naming a bad item)."""
    out: dict[str, float] = {}
    for part in filter(None, (x.strip() for x in spec.split(","))):
        name, sep, raw = part.partition("=")
        try:
            if not sep or not name.strip():
                raise ValueError(part)
            out[name.strip()] = float(raw)
        except ValueError:
            raise ConfigError(
                f"--think-ratio-per-domain: bad item {part!r} (expected DOMAIN=RATIO)"
            ) from None
    return out


def train_sft_command(args: argparse.Namespace) -> int:
    """`reasonrec train reasoner-sft`: CoT SFT of the release's aligned reasoner."""
    import numpy as np

    from trainer.cot.corpus import (
        AlignConfig,
        CorpusConfig,
        CorpusStats,
        build_sft_corpus,
        write_jsonl,
    )
    from trainer.pipeline import (
        open_workspace,
        reasoner_config,
        release_personas,
        require_reasoner,
        rule_teacher,
    )
    from trainer.reasoner.model import load_reasoner
    from trainer.reasoner.sft import SFTTrainConfig, train_sft
    from trainer.reasoner_eval import align_holdout, evaluate_reasoner, split_persona_labels

    if not 0.0 <= args.align_replay <= 10.0:
        raise ConfigError(f"--align-replay {args.align_replay} must be in [0, 10]")
    rank = setup(args)
    ws = open_workspace(args.release, args.dataset)
    directory = require_reasoner(ws)
    personas = release_personas(ws)
    if personas is None:
        raise ReleaseError(f"{directory} has no personas.json; rerun 'train reasoner-align'")
    previous = reasoner_config(ws)
    max_history = args.max_history or int(previous.get("max_history", 20))
    work = args.work_dir or runs(args.release, "reasoner-sft")
    work.mkdir(parents=True, exist_ok=True)
    if args.persona_expansion and personas.config.source != "labels":
        raise ConfigError(
            "--persona-expansion needs labelled personas (reasoner-align --persona-source labels)"
        )
    rule = rule_teacher(ws, personas, persona_expansion=args.persona_expansion)
    teacher: Any = rule
    if args.teacher == "llm":
        from trainer.cot.llm_teacher import LLMTeacher, LLMTeacherConfig

        if not args.llm_url:
            raise ConfigError("--teacher llm needs --llm-url URL")
        llm_cfg = LLMTeacherConfig(
            base_url=args.llm_url, model=args.llm_model, max_history=max_history
        )
        teacher = LLMTeacher(ws.index.catalog, ws.codes, personas, llm_cfg, fallback=rule)
    corpus_cfg = CorpusConfig(
        cuts_per_user=args.cuts_per_user, max_history=max_history,
        thinking_ratio=domain_ratios(args.think_ratio_per_domain),
        default_thinking_ratio=args.think_ratio, seed=args.seed, hindsight=not args.no_hindsight,
    )  # fmt: skip
    stats = CorpusStats()
    samples = build_sft_corpus(
        ws.split, ws.index.catalog, ws.codes, teacher, corpus_cfg, stats=stats,
        progress=rank == 0,
    )  # fmt: skip
    if rank == 0:
        write_jsonl(work / "sft.jsonl", samples)
    reasoner = load_reasoner(directory)
    align_corpus = dict(previous.get("align_corpus", {}))
    align_corpus["tasks"] = tuple(align_corpus.get("tasks", AlignConfig().tasks))
    holdout = align_holdout(
        ws, AlignConfig(**align_corpus), int(previous.get("eval_items", 200)),
        int(previous.get("seed", 0)),
    )  # fmt: skip
    # Without replay the CoT-only data makes the model forget the alignment tasks (R0 fell
    # from 0.86 to 0.0 after one SFT epoch on synthetic data).
    rng = np.random.default_rng([args.seed, 41])
    k = min(len(holdout.train), round(args.align_replay * len(samples)))
    replay = [holdout.train[i] for i in np.sort(rng.choice(len(holdout.train), k, replace=False))]
    valid = ws.split.valid_inputs()
    train_cfg = SFTTrainConfig(**loop_kwargs(args))
    persona_labels = split_persona_labels(ws)

    def validate(r: Reasoner) -> dict[str, float]:
        return evaluate_reasoner(
            r, ws, valid, holdout=holdout, max_history=max_history,
            max_think_tokens=args.max_think_tokens, limit=args.eval_users,
            persona_labels=persona_labels,
        )  # fmt: skip

    result = train_sft(
        reasoner, [*samples, *replay], train_cfg, work, evaluate=validate,
        resume=not args.no_resume,
    )  # fmt: skip
    if rank != 0:
        return 0
    final = last_with(result.loop.history, "thinking/r3/recall@10") or validate(reasoner)
    old_metrics = ws.release.manifest.metrics.get("reasoner", {})
    metrics: dict[str, Any] = {
        **{k: v for k, v in old_metrics.items() if k.startswith("align")},
        **{f"valid/{k}": v for k, v in final.items()},
        **loop_metrics("sft", result.loop),
        "sft/samples": result.num_samples,
        "sft/thinking_samples": stats.thinking,
        "sft/align_replay_samples": len(replay),
        "sft/teacher_failures": stats.teacher_failures,
        "sft/truncated": result.truncated,
        "sft/dropped": result.dropped,
    }
    if args.teacher == "llm":
        metrics["sft/llm_teacher"] = dataclasses.asdict(teacher.stats)
    config = {
        **previous,
        "stage": "sft",
        "max_history": max_history,
        "max_think_tokens": args.max_think_tokens,
        "sft_teacher": args.teacher,
        "sft_align_replay": args.align_replay,
        "persona_expansion": args.persona_expansion,
        "sft_corpus": {**dataclasses.asdict(corpus_cfg), "per_domain": stats.per_domain},
        "sft": dataclasses.asdict(train_cfg),
    }
    write_release(ws, args.release, reasoner, personas, config, metrics)
    print_metrics("reasoner sft", metrics, work, args.release)
    return 0
