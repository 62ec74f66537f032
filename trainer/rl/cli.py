"""`reasonrec train reasoner-rl` and `reasonrec train reasoner-unify`.

reasonrec train reasoner-rl --release R [--domain D] [--steps 50] [--group-size 4]
    [--lists-per-trace 4] [--clip-reason 0.2] [--clip-item 0.1] [--miss-weight 0.3] [--kl 0.02]
    [--reward hit=1,coverage=0.2,diversity=0.1,format=0.1] ...
  GRPO from the release's SFT reasoner (`reasoner/`, also the KL reference). With --domain,
  prompts come from that domain only and the expert goes to `reasoner_rl/<D>/`; without, the
  result replaces `reasoner/`.

reasonrec train reasoner-unify --release R --method rft|mopd [--domains video,ecommerce]
  Fuse the experts in `reasoner_rl/*/` into one student (initialized from `reasoner/`); the
  student replaces `reasoner/` (or goes to `reasoner_unified/<method>/` with --to unified).

`trainer/cli.py` calls `add_train_commands(tsub)` on its `train` subparsers.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

from sid_index.errors import ConfigError, ReleaseError

RL_PART = "reasoner_rl"
UNIFIED_PART = "reasoner_unified"
_REWARD_KEYS = {"hit", "coverage", "diversity", "format"}


def add_train_commands(tsub: Any) -> None:
    """Register `reasoner-rl` and `reasoner-unify` under `reasonrec train`."""
    rl = tsub.add_parser(
        "reasoner-rl",
        help="GRPO for the reasoner (per domain: a domain expert)",
        description="RL of the SFT reasoner with two-stage rollouts (G thoughts x M item "
        "lists), a set-wise reward, separate clip ranges for reasoning and item tokens, "
        "down-weighted non-hit groups and a KL to the SFT reference.",
    )
    _common(rl)
    rl.add_argument("--domain", help="train on this domain's prompts only (a domain expert)")
    rl.add_argument("--init", type=Path, help="start from this reasoner dir (default: reasoner/)")
    rl.add_argument("--steps", type=int, default=50)
    rl.add_argument("--prompts-per-step", type=int, default=8)
    rl.add_argument("--group-size", type=int, default=4, help="G thoughts per prompt")
    rl.add_argument("--lists-per-trace", type=int, default=4, help="M item lists per thought")
    rl.add_argument("--list-size", type=int, default=10, help="K items per list")
    rl.add_argument("--pool-size", type=int, default=20, help="beam width W the lists come from")
    rl.add_argument("--temperature", type=float, default=1.0, help="thought sampling")
    rl.add_argument("--list-temperature", type=float, default=1.0)
    rl.add_argument("--clip-reason", type=float, default=0.2)
    rl.add_argument("--clip-item", type=float, default=0.1)
    rl.add_argument("--miss-weight", type=float, default=0.3)
    rl.add_argument("--kl", type=float, default=0.02, help="k3 KL weight to the SFT reference")
    rl.add_argument(
        "--reward",
        default="hit=1,coverage=0.2,diversity=0.1,format=0.1",
        help="reward weights: hit, coverage, diversity, format",
    )
    rl.add_argument("--rank-gain", choices=("ndcg", "rr"), default="ndcg")
    rl.add_argument("--interests", choices=("history", "trace"), default="history")
    rl.add_argument("--lr", type=float, default=1e-5)
    rl.add_argument("--ppo-epochs", type=int, default=1)
    rl.add_argument("--minibatch", type=int, default=16, help="trace rows per optimizer step")
    rl.set_defaults(handler=_train_rl)

    un = tsub.add_parser(
        "reasoner-unify",
        help="fuse per-domain reasoner experts into one (RFT or MOPD)",
        description="Specialize-then-unify: rejection-sampling fine-tuning on the experts' "
        "best trajectories (rft) or multi-teacher on-policy distillation (mopd).",
    )
    _common(un)
    un.add_argument("--method", choices=("rft", "mopd"), required=True)
    un.add_argument("--domains", help="comma list (default: every expert in reasoner_rl/)")
    un.add_argument("--to", choices=("reasoner", "unified"), default="reasoner")
    un.add_argument("--samples-per-prompt", type=int, default=4, help="rft: thoughts per prompt")
    un.add_argument("--epochs", type=int, default=2, help="rft: SFT epochs")
    un.add_argument("--steps", type=int, default=50, help="mopd: steps")
    un.add_argument("--prompts-per-step", type=int, default=16, help="mopd")
    un.add_argument("--temperature", type=float, default=1.0)
    un.add_argument("--lr", type=float, default=5e-5)
    un.add_argument("--batch-size", type=int, default=16)
    un.set_defaults(handler=_train_unify)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--release", type=Path, required=True, help="release with sid_index, reasoner")
    p.add_argument("--dataset", help="dataset spec (default: the one the release recorded)")
    p.add_argument("--max-think-tokens", type=int, default=128)
    p.add_argument("--max-history", type=int, help="history items per prompt (default: SFT's)")
    p.add_argument("--max-prompts", type=int, help="seeded subset of train prompts")
    p.add_argument("--eval-users", type=int, default=200, help="validation users evaluated")
    p.add_argument("--eval-every", type=int, default=10)
    p.add_argument("--save-every", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--work-dir", type=Path, help="checkpoints and logs (default: RELEASE.runs/…)")
    p.add_argument("--no-resume", action="store_true", help="ignore an earlier checkpoint")


def parse_reward(text: str) -> dict[str, float]:
    """ "hit=1,coverage=0.2" → {"hit_weight": 1.0, "coverage_weight": 0.2} (ConfigError if bad)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        if not sep or key.strip() not in _REWARD_KEYS:
            raise ConfigError(f"--reward {part!r}: expected KEY=VALUE with KEY in {_REWARD_KEYS}")
        try:
            out[f"{key.strip()}_weight"] = float(raw)
        except ValueError:
            raise ConfigError(f"--reward {part!r}: {raw!r} is not a number") from None
    return out


def _reward_config(args: argparse.Namespace) -> Any:
    from trainer.rl.rewards import RewardConfig

    base = RewardConfig(rank_gain=args.rank_gain, interest_source=args.interests)
    w = parse_reward(args.reward)
    return dataclasses.replace(
        base,
        hit_weight=w.get("hit_weight", base.hit_weight),
        coverage_weight=w.get("coverage_weight", base.coverage_weight),
        diversity_weight=w.get("diversity_weight", base.diversity_weight),
        format_weight=w.get("format_weight", base.format_weight),
    )


def _runs_dir(release: Path) -> Path:
    return release.parent / f"{release.name}.runs"


def _setup(args: argparse.Namespace) -> tuple[Any, int]:
    """Workspace and prompt history length; sets torch threads."""
    import torch

    from trainer.pipeline import open_workspace

    if args.threads:
        torch.set_num_threads(args.threads)
    ws = open_workspace(args.release, args.dataset)
    if not ws.release.has_part("reasoner"):
        raise ReleaseError(
            f"release {args.release} has no reasoner/ part; run `reasonrec train reasoner-sft`"
        )
    recorded = ws.release.manifest.configs.get("reasoner", {}).get("max_history")
    return ws, int(args.max_history or recorded or 20)  # type: ignore[arg-type]


def _load(path: Path, ws: Any) -> Any:
    from trainer.reasoner.model import load_reasoner

    reasoner = load_reasoner(path)
    if reasoner.vocab.level_sizes != tuple(ws.index.sids.level_sizes):
        raise ConfigError(
            f"reasoner {path} was built for SID levels {reasoner.vocab.level_sizes}, the "
            f"release's index has {tuple(ws.index.sids.level_sizes)}"
        )
    return reasoner


def _evaluator(args: argparse.Namespace, ws: Any, history: int, domain: str | None) -> Any:
    from trainer.rl.prompts import build_prompts
    from trainer.rl.train_rl import recall_evaluator

    valid = build_prompts(
        ws.split, ws.index.catalog, ws.codes, part="valid", max_history=history, domain=domain,
        limit=args.eval_users, seed=args.seed,
    )  # fmt: skip
    if not valid or args.eval_users == 0:
        return None
    return recall_evaluator(
        valid, ws.index.catalog, ws.codes, ws.index.trie,
        max_think_tokens=args.max_think_tokens, by_domain=domain is None,
    )  # fmt: skip


def _publish(args: argparse.Namespace, ws: Any, final: Path, part: str, sub: str | None,
             config: dict[str, Any], metrics: dict[str, Any]) -> Path:  # fmt: skip
    """Copy a trained reasoner into the release (a new version, written atomically)."""
    from sid_index.release import ReleaseWriter, load_release

    # Reload: another run (e.g. another domain's expert) may have updated the release since
    # this one started.
    current = load_release(args.release)
    source = current.part("reasoner")
    with ReleaseWriter(args.release, base=current) as writer:
        # `reasoner/` keeps its auxiliary files (e.g. the persona prototypes) and a part of
        # experts keeps the other experts; the model files are overwritten.
        target = writer.part_dir(part, replace=sub is None and part != "reasoner")
        if sub is not None:
            target = target / sub
            shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(final, target, dirs_exist_ok=True)
        for extra in source.iterdir():  # experts and students get them too
            if extra.is_file() and not (target / extra.name).exists():
                shutil.copy2(extra, target / extra.name)
        key = part if sub is None else f"{part}/{sub}"
        writer.set_config(key, config)
        writer.set_metrics(key, metrics)
    return Path(args.release) / part / (sub or "")


def _train_rl(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from trainer.rl.grpo import GRPOConfig
    from trainer.rl.prompts import build_prompts
    from trainer.rl.rollout import RolloutConfig
    from trainer.rl.train_rl import RLTrainConfig, train_rl

    ws, history = _setup(args)
    cfg = RLTrainConfig(
        steps=args.steps, prompts_per_step=args.prompts_per_step, ppo_epochs=args.ppo_epochs,
        minibatch_rows=args.minibatch, lr=args.lr, eval_every=args.eval_every,
        save_every=args.save_every, seed=args.seed, device=args.device,
        rollout=RolloutConfig(
            group_size=args.group_size, lists_per_trace=args.lists_per_trace,
            list_size=args.list_size, pool_size=args.pool_size, temperature=args.temperature,
            list_temperature=args.list_temperature, max_think_tokens=args.max_think_tokens,
        ),
        grpo=GRPOConfig(
            clip_reason=args.clip_reason, clip_item=args.clip_item,
            miss_weight=args.miss_weight, kl_coef=args.kl,
        ),
        reward=_reward_config(args),
    )  # fmt: skip
    prompts = build_prompts(
        ws.split, ws.index.catalog, ws.codes, part="train", max_history=history,
        domain=args.domain, limit=args.max_prompts, seed=args.seed,
    )  # fmt: skip
    if not prompts:
        raise ConfigError(f"no train prompts for domain {args.domain!r}")
    start = args.init or ws.release.part("reasoner")
    policy = _load(start, ws)
    reference = _load(start, ws) if cfg.grpo.kl_coef > 0 else None
    name = args.domain or "all"
    work = args.work_dir or _runs_dir(args.release) / RL_PART / name
    result = train_rl(
        policy, reference, prompts, ws.index.trie, ws.codes, cfg, work,
        evaluate=_evaluator(args, ws, history, args.domain), resume=not args.no_resume,
        stage=f"rl {name}",
    )  # fmt: skip
    config = {**asdict(cfg), "domain": args.domain, "init": str(start), "max_history": history}
    metrics = {**result.last_eval, "steps": result.steps, "train_s": round(result.train_seconds)}
    if args.domain:
        where = _publish(args, ws, result.final_dir, RL_PART, args.domain, config, metrics)
    else:
        where = _publish(args, ws, result.final_dir, "reasoner", None, config, metrics)
    print(f"rl {name}: {json.dumps({k: round(v, 4) for k, v in result.last_eval.items()})}")
    print(f"curves: {work / 'curves.png'}  log: {work / 'metrics.jsonl'}")
    print(f"release updated: {where}")
    return 0


def _train_unify(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from trainer.reasoner.sft import SFTTrainConfig
    from trainer.rl.prompts import build_prompts
    from trainer.rl.unify import (
        MOPDConfig,
        RFTConfig,
        collect_rft_samples,
        train_mopd,
        train_rft,
    )

    ws, history = _setup(args)
    if not ws.release.has_part(RL_PART):
        raise ReleaseError(f"release {args.release} has no {RL_PART}/ experts to unify")
    root = ws.release.part(RL_PART)
    found = sorted(p.name for p in root.iterdir() if p.is_dir())
    domains = [d for d in args.domains.split(",") if d] if args.domains else found
    missing = [d for d in domains if d not in found]
    if missing or not domains:
        raise ReleaseError(f"no expert for domains {missing or domains} in {root} (has {found})")
    experts = {d: _load(root / d, ws) for d in domains}
    prompts = [
        p
        for d in domains
        for p in build_prompts(
            ws.split, ws.index.catalog, ws.codes, part="train", max_history=history, domain=d,
            limit=args.max_prompts, seed=args.seed,
        )
    ]  # fmt: skip
    student = _load(ws.release.part("reasoner"), ws)
    work = args.work_dir or _runs_dir(args.release) / "reasoner_unify" / args.method
    evaluate = _evaluator(args, ws, history, None)
    if args.method == "rft":
        rft = RFTConfig(
            samples_per_prompt=args.samples_per_prompt, temperature=args.temperature,
            max_think_tokens=args.max_think_tokens, seed=args.seed,
        )  # fmt: skip
        samples = []
        for d, expert in experts.items():
            mine = [p for p in prompts if p.domain == d]
            samples += collect_rft_samples(expert, mine, ws.index.trie, ws.codes, rft)
        sft = SFTTrainConfig(
            epochs=args.epochs, lr=args.lr, batch_size=args.batch_size, seed=args.seed,
            device=args.device,
        )  # fmt: skip
        res = train_rft(student, samples, sft, work, evaluate=evaluate, resume=not args.no_resume)
        final = res.final_dir
        config: dict[str, Any] = {"rft": asdict(rft), "sft": asdict(sft)}
        metrics: dict[str, Any] = {"samples": len(samples), "final_loss": res.loop.final_loss}
        evals = [h for h in res.loop.history if any(k.startswith("valid/") for k in h)]
        metrics.update(evals[-1] if evals else {})  # the SFT loop's last epoch-end evaluation
    else:
        mopd = MOPDConfig(
            steps=args.steps, prompts_per_step=args.prompts_per_step,
            temperature=args.temperature, max_think_tokens=args.max_think_tokens, lr=args.lr,
            minibatch_rows=args.batch_size, eval_every=args.eval_every,
            save_every=args.save_every, seed=args.seed, device=args.device,
        )  # fmt: skip
        out = train_mopd(
            student, experts, prompts, ws.index.trie, ws.codes, mopd, work, evaluate=evaluate,
            resume=not args.no_resume,
        )  # fmt: skip
        final, config, metrics = out.final_dir, {"mopd": asdict(mopd)}, dict(out.last_eval)
    config.update(
        {"method": args.method, "domains": domains, "max_history": history,
         "max_prompts": args.max_prompts}
    )  # fmt: skip
    if args.to == "unified":
        where = _publish(args, ws, final, UNIFIED_PART, args.method, config, metrics)
    else:
        where = _publish(args, ws, final, "reasoner", None, config, metrics)
    print(f"unify {args.method}: {json.dumps({k: v for k, v in metrics.items()}, default=str)}")
    print(f"release updated: {where}")
    return 0
