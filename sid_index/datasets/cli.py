"""`reasonrec data ...`: generate synthetic data and describe any dataset spec.

reasonrec data synth --users 2000 --items 800 --seed 3 --out data/synth
reasonrec data stats data/synth          # or: synthetic:users=500, amazon:PATH, ...
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sid_index.records import Dataset

_PERCENTILES = (25, 50, 75, 90, 99)


@dataclass(frozen=True, slots=True)
class DatasetSummary:
    """Headline numbers of a dataset, as `reasonrec data stats` prints them."""

    name: str
    users: int
    items: int
    interactions: int
    items_interacted: int
    """Catalogue items that occur in at least one sequence."""
    items_missing_text: int
    users_under_3: int
    """Users a leave-one-out split drops."""
    length_min: int
    length_mean: float
    length_percentiles: dict[str, float]
    length_max: int
    has_timestamps: bool
    domains: dict[str, tuple[int, int]]
    """domain -> (items, interactions)."""
    categories: int
    """Distinct category paths."""
    top_categories: list[tuple[str, int]]
    """The 10 category paths with the most items (path joined by " > ")."""
    personas: int
    """Planted personas (synthetic data only, else 0)."""


def summarize(dataset: Dataset) -> DatasetSummary:
    """Compute the `DatasetSummary` of `dataset` (vectorized over interactions)."""
    import numpy as np

    from sid_index.datasets.amazon import items_missing_text

    cat, inter = dataset.catalog, dataset.interactions
    lengths = inter.lengths()
    lens = lengths if len(lengths) else np.zeros(1, dtype=np.int64)
    domain_names = cat.domain_names()
    dom_index = {d: i for i, d in enumerate(domain_names)}
    item_dom = np.array([dom_index[d] for d in cat.domains], dtype=np.int64)
    dom_items = np.bincount(item_dom, minlength=len(domain_names))
    dom_inter = np.bincount(item_dom[inter.items], minlength=len(domain_names))
    paths: dict[tuple[str, ...], int] = {}
    for p in cat.categories:
        paths[p] = paths.get(p, 0) + 1
    top = sorted(paths.items(), key=lambda kv: (-kv[1], kv[0]))[:10]
    return DatasetSummary(
        name=dataset.name,
        users=len(inter),
        items=len(cat),
        interactions=inter.num_interactions,
        items_interacted=int(np.count_nonzero(np.bincount(inter.items, minlength=len(cat)))),
        items_missing_text=len(items_missing_text(cat)),
        users_under_3=int(np.count_nonzero(lengths < 3)),
        length_min=int(lens.min()),
        length_mean=round(float(lens.mean()), 2),
        length_percentiles={
            f"p{q}": float(v)
            for q, v in zip(_PERCENTILES, np.percentile(lens, _PERCENTILES), strict=True)
        },
        length_max=int(lens.max()),
        has_timestamps=inter.timestamps is not None,
        domains={d: (int(dom_items[i]), int(dom_inter[i])) for i, d in enumerate(domain_names)},
        categories=len(paths),
        top_categories=[(" > ".join(p) or "(none)", n) for p, n in top],
        personas=len(dataset.persona_names or []),
    )


def format_summary(s: DatasetSummary) -> str:
    """Human-readable multi-line rendering of a summary."""
    pct = " ".join(f"{k}={v:g}" for k, v in s.length_percentiles.items())
    density = s.interactions / max(s.users * s.items, 1)
    dw = max((len(d) for d in s.domains), default=0)
    cw = max((len(p) for p, _ in s.top_categories), default=0)
    lines = [
        f"dataset       {s.name}",
        f"users         {s.users:,} ({s.users_under_3:,} with < 3 interactions)",
        f"items         {s.items:,} ({s.items_interacted:,} interacted, "
        f"{s.items_missing_text:,} without text)",
        f"interactions  {s.interactions:,} (density {density:.3%}, "
        f"timestamps {'yes' if s.has_timestamps else 'no'})",
        f"length        min={s.length_min} mean={s.length_mean:g} {pct} max={s.length_max}",
        f"domains       {len(s.domains)}",
        *(f"  {d:<{dw}}  {n:>10,} items {k:>12,} interactions" for d, (n, k) in s.domains.items()),
        f"categories    {s.categories:,} distinct paths; most items:",
        *(f"  {p:<{cw}}  {n:>8,}" for p, n in s.top_categories),
    ]
    if s.personas:
        lines.append(f"personas      {s.personas} (planted, synthetic)")
    return "\n".join(lines)


def _synth(args: argparse.Namespace) -> int:
    from sid_index.datasets.registry import save_dataset
    from sid_index.datasets.synthetic import SyntheticConfig, generate

    fields = {
        "num_users": args.users,
        "num_items": args.items,
        "seed": args.seed,
        "num_personas": args.personas,
        "num_categories": args.categories,
        "min_seq_len": args.min_len,
        "max_seq_len": args.max_len,
    }
    if args.domains is not None:
        fields["domains"] = tuple(d.strip() for d in args.domains.split(","))
    config = SyntheticConfig(**{k: v for k, v in fields.items() if v is not None})
    t0 = time.perf_counter()
    dataset = generate(config, progress=True)
    t1 = time.perf_counter()
    save_dataset(dataset, args.out)
    t2 = time.perf_counter()
    inter = dataset.interactions
    print(
        f"wrote {args.out}: {len(inter):,} users, {len(dataset.catalog):,} items, "
        f"{inter.num_interactions:,} interactions, {config.num_personas} personas "
        f"(generate {t1 - t0:.2f} s, save {t2 - t1:.2f} s)"
    )
    return 0


def _stats(args: argparse.Namespace) -> int:
    from sid_index.datasets.registry import load_dataset

    summary = summarize(load_dataset(args.spec, progress=True))
    print(json.dumps(asdict(summary), indent=2) if args.json else format_summary(summary))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `data` command group (`synth`, `stats`)."""
    data = subparsers.add_parser("data", help="generate, load and describe datasets")
    sub = data.add_subparsers(dest="data_command", metavar="SUBCOMMAND", required=True)

    synth = sub.add_parser("synth", help="generate a synthetic dataset and save it to a directory")
    synth.add_argument("--users", type=int, default=2000, help="number of users (default 2000)")
    synth.add_argument("--items", type=int, default=800, help="number of items (default 800)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    synth.add_argument("--personas", type=int, help="number of planted personas (default 20)")
    synth.add_argument("--categories", type=int, help="number of categories (default 48)")
    synth.add_argument(
        "--domains", help="comma-separated domains (default video,ecommerce,ads,live)"
    )
    synth.add_argument("--min-len", type=int, help="shortest sequence (default 5)")
    synth.add_argument("--max-len", type=int, help="longest sequence (default 30)")
    synth.add_argument(
        "--out", required=True, help="output directory (new, empty or a saved dataset)"
    )
    synth.set_defaults(handler=_synth)

    stats = sub.add_parser("stats", help="describe a dataset: sizes, lengths, domains, categories")
    stats.add_argument(
        "spec",
        help="synthetic[:k=v,...], amazon:PATH, movielens:PATH, saved:PATH or a directory",
    )
    stats.add_argument("--json", action="store_true", help="print the summary as JSON")
    stats.set_defaults(handler=_stats)
