"""`reasonrec train reasoner-align` and `reasonrec train reasoner-sft`: the reasoner's stages.

reasonrec train reasoner-align --release R [--base-model scratch:tiny|scratch:small|PATH] ...
reasonrec train reasoner-sft --release R [--think-ratio 0.5] [--teacher rule|llm] ...

Both write the release's `reasoner/` part (a reasoner directory plus `personas.json`, the
persona prototypes its `<p_k>` tokens mean, so the rule teacher, the slow path and the fast
model agree on persona ids), with their settings and metrics in the manifest. Checkpoints,
metric logs and curves go to RELEASE.runs/reasoner-{align,sft}/; a rerun resumes there. Under
torchrun every rank trains and rank 0 evaluates and writes the release.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sid_index.errors import ConfigError

if TYPE_CHECKING:
    from trainer.cot.personas import PersonaModel
    from trainer.cot.rule_teacher import RuleTeacher
    from trainer.pipeline import Workspace
    from trainer.reasoner.model import Reasoner
    from trainer.reasoner.train_loop import LoopResult

log = logging.getLogger(__name__)

_CORPUS_USERS_FOR_BPE = 5000  # CoT samples whose text joins the scratch tokenizer's corpus


def add_train_commands(tsub: Any) -> None:
    """Add `reasoner-align` and `reasoner-sft` to the `train` subcommand group."""
    align = tsub.add_parser(
        "reasoner-align",
        help="itemic alignment pre-training of the reasoner into a release",
        description="Fit persona prototypes, build the alignment corpus (item <-> text, "
        "item -> related items, user sequences), extend a base model's vocabulary with SID, "
        "persona and CoT tokens (or build a scratch model and BPE tokenizer), train (embedding "
        "warm-up, then full-parameter) and write the release's reasoner/ part.",
    )
    _common(align)
    align.add_argument("--base-model", default="scratch:tiny", help="scratch:tiny|small or PATH")
    align.add_argument(
        "--arch",
        default="",
        help="scratch architecture overrides, e.g. num_layers=2,hidden_size=64",
    )
    align.add_argument("--personas", type=int, default=20, help="persona prototypes to fit")
    align.add_argument(
        "--persona-source",
        choices=("kmeans", "labels"),
        default="kmeans",
        help="kmeans: cluster users' histories into --personas prototypes; labels: one "
        "prototype per persona label the dataset carries (synthetic: the planted personas), "
        "and the CoT teacher writes each user's own label",
    )
    align.add_argument("--warmup-steps", type=int, default=100, help="embedding warm-up steps")
    align.add_argument("--warmup-lr", type=float, default=1e-3)
    align.add_argument("--max-history", type=int, default=20, help="history items per prompt")
    align.add_argument(
        "--eval-items", type=int, default=200, help="items held out of alignment for R0/R1"
    )
    align.add_argument("--align-items", type=int, help="items with per-item samples (default: all)")
    align.set_defaults(handler=_train_align, lr=3e-4, max_length=512)

    sft = tsub.add_parser(
        "reasoner-sft",
        help="chain-of-thought SFT of the release's reasoner",
        description="Continue from the release's reasoner: build three-part CoT samples "
        "(persona, interests, transition, answer) with a teacher, mixed with answer-only "
        "samples at a per-domain ratio, train, evaluate R0-R3 in thinking and non-thinking "
        "mode on validation users, and write the reasoner back into the release.",
    )
    _common(sft)
    sft.add_argument("--think-ratio", type=float, default=0.5, help="default thinking share")
    sft.add_argument(
        "--think-ratio-per-domain", default="", help="per-domain shares, e.g. video=0.7,ads=0.3"
    )
    sft.add_argument("--teacher", choices=("rule", "llm"), default="rule", help="CoT teacher")
    sft.add_argument("--llm-url", help="OpenAI-compatible server root (teacher llm)")
    sft.add_argument("--llm-model", default="default", help="model name sent to the server")
    sft.add_argument("--cuts-per-user", type=int, default=1, help="samples per user")
    sft.add_argument(
        "--persona-expansion",
        action="store_true",
        help="with labelled personas (reasoner-align --persona-source labels): the expansion "
        "interest is the persona's likeliest SID prefix the history does not hold",
    )
    sft.add_argument(
        "--no-hindsight",
        action="store_true",
        help="thoughts predict the next interest from the history alone (default: the "
        "teacher sees the target and the transition names the interest holding it)",
    )
    sft.add_argument(
        "--align-replay",
        type=float,
        default=0.2,
        help="alignment samples mixed in, as a fraction of the CoT samples (keeps R0/R1)",
    )
    sft.add_argument("--max-history", type=int, help="history items (default: the release's)")
    sft.set_defaults(handler=_train_sft, lr=1e-4, max_length=768)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--release", type=Path, required=True, help="release with a sid_index")
    p.add_argument("--dataset", help="dataset spec (default: the one the release recorded)")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--max-steps", type=int, default=0, help="stop after this many steps")
    p.add_argument("--batch-size", type=int, default=8, help="rows per micro-batch per process")
    p.add_argument("--grad-accum", type=int, default=1)
    p.add_argument("--lr", type=float, help="peak learning rate")
    p.add_argument("--max-length", type=int, help="longest sample in tokens")
    p.add_argument("--packing", action="store_true", help="pack samples into rows")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), default="no")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--save-every", type=int, default=0, help="steps between checkpoints")
    p.add_argument("--log-every", type=int, default=10, help="steps between metric records")
    p.add_argument("--eval-users", type=int, default=200, help="validation users for R2/R3")
    p.add_argument("--max-think-tokens", type=int, default=192, help="thinking budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--work-dir", type=Path, help="checkpoints/logs (default: RELEASE.runs/...)")
    p.add_argument("--no-resume", action="store_true", help="ignore earlier checkpoints")


def loop_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "batch_size": args.batch_size,
        "grad_accum": args.grad_accum,
        "lr": args.lr,
        "max_length": args.max_length,
        "packing": args.packing,
        "mixed_precision": args.mixed_precision,
        "save_every": args.save_every,
        "log_every": args.log_every,
        "seed": args.seed,
        "device": args.device,
    }


def setup(args: argparse.Namespace) -> int:
    """Threads and the process group (torchrun); returns this process's rank."""
    import torch
    from transformers.utils import logging as hf_logging

    from trainer.fast_trainer import init_distributed_from_env

    hf_logging.disable_progress_bar()  # its per-save/load bars would break the stage bars
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads {args.threads} must be >= 1")
        torch.set_num_threads(args.threads)
    if args.eval_users < 1 or args.max_think_tokens < 1:
        raise ConfigError(f"--eval-users {args.eval_users} and --max-think-tokens must be >= 1")
    return torch.distributed.get_rank() if init_distributed_from_env() else 0


def _barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def runs(release: Path, stage: str) -> Path:
    return release.parent / f"{release.name}.runs" / stage


def last_with(history: list[dict[str, float]], key: str) -> dict[str, float] | None:
    """The last metric record holding `key` (an epoch-end evaluation), or None."""
    return next((h for h in reversed(history) if key in h), None)


def loop_metrics(prefix: str, r: LoopResult) -> dict[str, float]:
    return {
        f"{prefix}/steps": r.steps,
        f"{prefix}/epochs": r.epochs_done,
        f"{prefix}/final_loss": round(r.final_loss, 4),
        f"{prefix}/tokens": r.tokens,
        f"{prefix}/train_seconds": round(r.train_seconds, 1),
    }


def _scratch_arch(base: str, overrides: str) -> Any:
    """The ScratchArch of `scratch:SIZE` with KEY=VALUE overrides (None for a model path)."""
    from trainer.reasoner.model import SCRATCH_PREFIX, SCRATCH_SIZES

    if not base.startswith(SCRATCH_PREFIX):
        if overrides:
            raise ConfigError("--arch applies to scratch:* base models only")
        return None
    size = base[len(SCRATCH_PREFIX) :]
    if size not in SCRATCH_SIZES:
        raise ConfigError(f"unknown scratch size {base!r}; choose from {sorted(SCRATCH_SIZES)}")
    arch = SCRATCH_SIZES[size]
    fields = {f.name: getattr(arch, f.name) for f in dataclasses.fields(arch)}
    changes: dict[str, Any] = {}
    for part in filter(None, (x.strip() for x in overrides.split(","))):
        key, sep, raw = part.partition("=")
        if not sep or key not in fields:
            raise ConfigError(f"--arch: bad item {part!r}; keys: {', '.join(fields)}")
        try:
            if isinstance(fields[key], bool):
                changes[key] = raw.lower() in ("1", "true", "yes")
            else:
                changes[key] = int(raw)
        except ValueError:
            raise ConfigError(f"--arch: {key}={raw!r} is not an integer") from None
    return dataclasses.replace(arch, **changes)


def _personas(ws: Workspace, args: argparse.Namespace, work: Path) -> PersonaModel:
    """Persona prototypes fitted on the train split (reused from `work` when resuming)."""
    from trainer.cot.personas import PersonaModel, features_for
    from trainer.pipeline import fit_personas

    saved = work / "personas.json"
    if saved.is_file() and not args.no_resume:
        model = PersonaModel.load(saved)
        model.bind(features_for(ws.index.catalog, ws.codes, model.config))
        return model
    return fit_personas(ws, args.persona_source, args.personas, args.seed)


def _cot_texts(ws: Workspace, teacher: RuleTeacher, max_history: int) -> list[str]:
    """Rule-teacher CoT samples as text (for the scratch tokenizer's BPE corpus)."""
    from trainer.cot.corpus import CorpusConfig, build_sft_corpus

    cfg = CorpusConfig(max_history=max_history, default_thinking_ratio=1.0)
    samples = build_sft_corpus(ws.split, ws.index.catalog, ws.codes, teacher, cfg)
    return [s.prompt + s.completion for s in samples[:_CORPUS_USERS_FOR_BPE]]


def _initial_reasoner(
    ws: Workspace,
    args: argparse.Namespace,
    personas: PersonaModel,
    align_texts: list[str],
    work: Path,
    rank: int,
) -> tuple[Reasoner, Any]:
    """The alignment stage's starting point; rank 0 builds it once into `work/init` (a resumed
    run and the other ranks load it, so every process has the same tokenizer)."""
    from trainer.pipeline import rule_teacher
    from trainer.reasoner.model import is_reasoner_dir, load_reasoner, prepare_reasoner

    arch = _scratch_arch(args.base_model, args.arch)
    init = work / "init"
    if rank == 0 and (args.no_resume or not is_reasoner_dir(init)):
        cat = ws.index.catalog
        texts: list[str] = []
        if arch is not None:  # only a scratch model trains a tokenizer
            texts = cat.texts + cat.titles + align_texts
            texts += _cot_texts(ws, rule_teacher(ws, personas), args.max_history)
        reasoner = prepare_reasoner(
            arch if arch is not None else args.base_model, ws.index.sids.level_sizes,
            personas.num_personas, corpus_texts=texts, sid_codes=ws.codes, titles=cat.titles,
            seed=args.seed,
        )  # fmt: skip
        reasoner.save(init)
    _barrier()
    return load_reasoner(init), arch


def write_release(
    ws: Workspace,
    release: Path,
    reasoner: Reasoner,
    personas: PersonaModel,
    config: dict[str, Any],
    metrics: dict[str, Any],
) -> None:
    from sid_index.release import ReleaseWriter
    from trainer.pipeline import PERSONAS_FILE, REASONER_PART

    with ReleaseWriter(release, base=ws.release) as writer:
        part = writer.part_dir(REASONER_PART)
        reasoner.save(part)
        personas.save(part / PERSONAS_FILE)
        writer.set_config(REASONER_PART, config)
        writer.set_metrics(REASONER_PART, metrics)


def print_metrics(stage: str, metrics: dict[str, Any], work: Path, release: Path) -> None:
    shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
    print(f"{stage}: {json.dumps(shown)}")
    print(f"logs and curves: {work}/*/metrics.jsonl, {work}/*/curves.png")
    print(f"release updated: {release}")


def _train_align(args: argparse.Namespace) -> int:
    from trainer.cot.corpus import AlignConfig, write_jsonl
    from trainer.pipeline import open_workspace
    from trainer.reasoner.align import AlignTrainConfig, train_align
    from trainer.reasoner_eval import align_holdout, evaluate_reasoner

    rank = setup(args)
    ws = open_workspace(args.release, args.dataset)
    work = args.work_dir or runs(args.release, "reasoner-align")
    work.mkdir(parents=True, exist_ok=True)
    personas = _personas(ws, args, work)
    corpus_cfg = AlignConfig(
        max_items=args.align_items, max_sequence_items=args.max_history, seed=args.seed
    )
    holdout = align_holdout(ws, corpus_cfg, args.eval_items, args.seed)
    if rank == 0:
        personas.save(work / "personas.json")
        write_jsonl(work / "align.jsonl", holdout.train)
    texts = [s.prompt + s.completion for s in holdout.train]
    reasoner, arch = _initial_reasoner(ws, args, personas, texts, work, rank)
    train_cfg = AlignTrainConfig(
        warmup_steps=args.warmup_steps, warmup_lr=args.warmup_lr, **loop_kwargs(args)
    )

    def validate(r: Reasoner) -> dict[str, float]:
        return evaluate_reasoner(r, ws, None, tiers=("r0", "r1"), holdout=holdout)

    result = train_align(
        reasoner, holdout.train, train_cfg, work, evaluate=validate, resume=not args.no_resume
    )
    if rank != 0:
        return 0
    final = last_with(result.full.history, "r0/category_acc") or validate(reasoner)
    metrics: dict[str, Any] = {
        **final,
        **loop_metrics("align", result.full),
        "align/samples": result.num_samples,
        "align/truncated": result.truncated,
        "align/heldout_items": len(holdout.items),
    }
    if result.warmup is not None:
        metrics.update(loop_metrics("align_warmup", result.warmup))
    config = {
        "stage": "align",
        "base_model": args.base_model,
        "arch": dataclasses.asdict(arch) if arch is not None else None,
        "num_personas": personas.num_personas,
        "max_history": args.max_history,
        "max_think_tokens": args.max_think_tokens,
        "eval_items": args.eval_items,
        "seed": args.seed,
        "align_corpus": dataclasses.asdict(corpus_cfg),
        "align": dataclasses.asdict(train_cfg),
    }
    write_release(ws, args.release, reasoner, personas, config, metrics)
    print_metrics("reasoner align", metrics, work, args.release)
    return 0


def _train_sft(args: argparse.Namespace) -> int:
    from trainer.reasoner_sft_cli import train_sft_command

    return train_sft_command(args)
