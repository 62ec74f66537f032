"""Semantic IDs on Amazon Office: our MiniLM + RQ-KMeans SIDs vs the published assignment.

    .venv/bin/python -m benchmarks.sid_office              # run and write the RESULTS.md section
    .venv/bin/python -m benchmarks.sid_office --no-write   # print only

Builds our SIDs for every Office item (MiniLM embeddings → residual k-means 3×256, k-means++
seeding on the first level → disambiguation level), checks that all 2,420 SIDs are unique and that a
rebuild with the same seed gives the same codes, and computes the same stats for the published
`Office.index.rq-kmeans.json`. Also reported: the same quantizer seeded at random on every
level and with k-means++ on every level (ablations), how well level-a groups follow the
catalogue's category tree, and how often FAISS related items share the item's category.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from benchmarks.results_file import replace_section
from sid_index.cli import parse_levels
from sid_index.datasets.registry import load_dataset
from sid_index.embedder import MiniLMConfig, MiniLMEmbedder
from sid_index.item_index import ItemIndex, ItemIndexConfig
from sid_index.records import Catalog
from sid_index.rq_kmeans import RQKMeansConfig
from sid_index.sid_builder import SIDBuild, SIDBuildConfig, build_sids, embed_catalog, import_sids
from sid_index.sid_stats import SIDStats

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Semantic IDs on office"
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "office"
PUBLISHED = "Office.index.rq-kmeans.json"
CATEGORY_DEPTH = 2
"""Category path depth used for purity (Office has 43 distinct depth-2 paths)."""


@dataclass(frozen=True, slots=True)
class Column:
    """One assignment in the results table."""

    label: str
    stats: SIDStats
    purity: float
    """Share of items whose depth-2 category is the majority one of their level-a group."""


def category_labels(catalog: Catalog, depth: int = CATEGORY_DEPTH) -> np.ndarray:
    """(N,) int label of each item's category path cut to `depth`."""
    paths = [p[:depth] for p in catalog.categories]
    _, labels = np.unique(np.array([" > ".join(p) for p in paths]), return_inverse=True)
    return labels.reshape(-1)


def purity(groups: np.ndarray, labels: np.ndarray) -> float:
    """Σ_g max_c |g ∩ c| / N: how well `groups` follow `labels` (1.0 = each group is pure)."""
    pairs, counts = np.unique(np.column_stack([groups, labels]), axis=0, return_counts=True)
    best = np.zeros(int(groups.max()) + 1, dtype=np.int64)
    np.maximum.at(best, pairs[:, 0], counts)
    return float(best.sum() / len(groups))


def neighbour_agreement(emb: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """Share of each item's k FAISS related items that share its category."""
    index = ItemIndex.build(emb, ItemIndexConfig())
    _, idx = index.related_items(np.arange(len(emb)), k)
    return float(np.mean(labels[idx] == labels[:, None]))


def run(args: argparse.Namespace) -> str:
    dataset = load_dataset(str(args.data))
    catalog = dataset.catalog
    labels = category_labels(catalog)
    emb: np.ndarray
    embed_seconds: float | None
    if args.cache is not None and args.cache.is_file():
        # Iterating on the quantizer only: reuse embeddings (no embedding time to report).
        emb, embed_seconds = np.load(args.cache, allow_pickle=False), None
        if emb.shape != (len(catalog), 384):
            raise SystemExit(f"{args.cache}: shape {emb.shape} does not fit the catalogue")
    else:
        embedder = MiniLMEmbedder(
            MiniLMConfig(batch_size=args.batch_size, max_length=args.max_length)
        )
        cpu0 = time.process_time()
        emb, embed_seconds = embed_catalog(catalog, embedder)
        args.embed_cpu_seconds = time.process_time() - cpu0
        if args.cache is not None:
            np.save(args.cache, emb, allow_pickle=False)

    cfg = SIDBuildConfig(rq=RQKMeansConfig(levels=args.levels, niter=args.niter, seed=args.seed))
    ours = build_sids(emb, cfg, embed_seconds=embed_seconds)
    again = build_sids(emb, cfg)
    deterministic = bool(np.array_equal(ours.sids.codes, again.sids.codes))
    all_random = build_sids(emb, replace(cfg, rq=replace(cfg.rq, kmeanspp_levels=0)))
    all_pp = build_sids(emb, replace(cfg, rq=replace(cfg.rq, kmeanspp_levels=len(args.levels))))
    deeper = (*args.levels, args.levels[-1])
    four = build_sids(emb, replace(cfg, rq=replace(cfg.rq, levels=deeper)))
    published = import_sids(args.data / PUBLISHED, catalog)

    def column(label: str, build: SIDBuild) -> Column:
        return Column(label, build.stats, purity(build.sids.codes[:, 0], labels))

    columns = [
        column("ours (k-means++ seeding on level a)", ours),
        column("ablation: random seeding everywhere", all_random),
        column("ablation: k-means++ everywhere", all_pp),
        column(f"ours, {len(deeper)} levels (the published depth)", four),
        column(f"published {PUBLISHED}", published),
    ]
    agree = neighbour_agreement(emb, labels)
    mse = [f.mse for f in ours.quantizer.fits] if ours.quantizer is not None else []
    return section(args, dataset.name, len(catalog), columns, deterministic, agree, mse)


def _pct(v: float) -> str:
    return f"{100 * v:.2f}%"


def section(
    args: argparse.Namespace,
    name: str,
    num_items: int,
    columns: Sequence[Column],
    deterministic: bool,
    agree: float,
    mse: Sequence[float],
) -> str:
    """The markdown section for RESULTS.md."""
    s = [c.stats for c in columns]

    def row(label: str, values: Sequence[str]) -> str:
        return f"| {label} | " + " | ".join(values) + " |"

    def seconds(v: float | None) -> str:
        return "—" if v is None else f"{v:.1f}"

    levels = "×".join(map(str, args.levels))
    cores = os.cpu_count()
    load = ", ".join(f"{v:.1f}" for v in args.load_before + os.getloadavg()[:1])
    command = " ".join([".venv/bin/python -m benchmarks.sid_office", *map(shlex.quote, args.argv)])
    lines = [
        SECTION,
        "",
        f"Dataset: `{name}` ({num_items:,} items, Amazon 2014 Office_Products 5-core, text = "
        "title + brand + category path + description). Our SIDs: all-MiniLM-L6-v2 "
        f"(max length {args.max_length}) → residual k-means {levels} (niter {args.niter}, "
        f"seed {args.seed}) → disambiguation level. Collisions are measured on the levels "
        "before disambiguation (all k-means levels for ours, all 4 published levels for the "
        "published file); "
        '"prefix collisions" lists the collision rate of every prefix depth a, ab, abc, ….',
        "",
        "| | " + " | ".join(c.label for c in columns) + " |",
        "|---|" + "---|" * len(columns),
        row("levels (codebook sizes)", ["×".join(map(str, x.level_sizes)) for x in s]),
        row("codes used per level", ["/".join(map(str, x.codes_used)) for x in s]),
        row("codebook utilization", [" / ".join(_pct(u) for u in x.utilization) for x in s]),
        row("collision rate (before disambiguation)", [_pct(x.collision_rate) for x in s]),
        row("colliding groups", [str(x.colliding_groups) for x in s]),
        row("max group size", [str(x.max_group_size) for x in s]),
        row(
            "prefix collisions",
            [" / ".join(_pct(r) for r in x.prefix_collision_rate) for x in s],
        ),
        row(
            "disambiguation level size",
            [str(x.disambiguation_size) if x.disambiguation_size else "none" for x in s],
        ),
        row("unique SIDs (all items)", ["yes" if x.unique else "**no**" for x in s]),
        row(
            f"level-a purity vs depth-{CATEGORY_DEPTH} category",
            [_pct(c.purity) for c in columns],
        ),
        row("embedding seconds", [seconds(x.embed_seconds) for x in s]),
        row("quantization seconds", [seconds(x.quantize_seconds) for x in s]),
        "",
        f"- All {num_items:,} items have unique SIDs with ours: "
        f"{'yes' if s[0].unique and s[0].num_items == num_items else 'NO'}; a rebuild with the "
        f"same seed gives identical codes: {'yes' if deterministic else 'NO'}.",
        "- Mean squared residual after each level (ours): "
        + " → ".join(f"{m:.4f}" for m in mse)
        + " (unit-norm embeddings, so 1.0 would be no information).",
        f"- FAISS related items (top 10, flat inner product on the MiniLM embeddings) sharing "
        f"the item's depth-{CATEGORY_DEPTH} category: {_pct(agree)}.",
        *(f"- Note ({c.label}): {n}" for c in columns for n in c.stats.notes),
        "- The published file has no build-time record, hence —."
        + (
            f" Embedding: {s[0].embed_seconds:.1f} s wall, {args.embed_cpu_seconds:.1f} s CPU "
            f"(process time over both cores) for {num_items:,} texts."
            if s[0].embed_seconds is not None
            else " Embeddings were loaded from a cache (--cache), so no embedding time."
        ),
        "",
        f"Machine: {cores}-core CPU ({platform.machine()}), no GPU, shared with other jobs "
        f"(1-min load average before, after: {load}; timings are indicative). "
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d')}. Reproduce: `{command}`.",
        "",
    ]
    return "\n".join(lines)


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, leaving others alone."""
    replace_section(SECTION, text, path)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="the office directory")
    parser.add_argument("--levels", type=parse_levels, default=(256, 256, 256))
    parser.add_argument("--niter", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--no-write", action="store_true", help="do not touch RESULTS.md")
    parser.add_argument(
        "--cache", type=Path, help="reuse (or write) item embeddings in this .npy file"
    )
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.load_before = os.getloadavg()[:1]
    args.embed_cpu_seconds = None
    text = run(args)
    print(text)
    if not args.no_write:
        write_section(text)
        print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
