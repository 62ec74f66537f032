"""`reasonrec index ...`: build a release's `sid_index/` part and report SID stats.

    reasonrec index build --dataset SPEC --out RELEASE_DIR [--levels 256,256,256]
        [--sids ASSIGNMENT.json] [--index-kind auto] [--embedder minilm] [--overwrite]
    reasonrec index stats RELEASE_DIR [--compare ASSIGNMENT.json] [--json]

Heavy modules (torch, transformers, faiss) are imported inside the handlers.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

from sid_index.errors import ConfigError, DataError

PART = "sid_index"


def register(subparsers: Any) -> None:
    """Add the `index` command group to the top-level subparsers."""
    group = subparsers.add_parser(
        "index",
        help="Semantic IDs and the FAISS item index",
        description="Build Semantic IDs (embed item text, residual k-means, disambiguation) "
        "or import an assignment, index item embeddings with FAISS, and report SID stats.",
    )
    actions = group.add_subparsers(dest="index_command", metavar="ACTION")
    group.set_defaults(handler=lambda _args: _print_help(group))

    build = actions.add_parser(
        "build",
        help="build the sid_index part of a release",
        description="Build Semantic IDs and the item index for a dataset and write them as "
        "the 'sid_index' part of a release directory.",
    )
    build.add_argument("--dataset", required=True, help="dataset spec, e.g. synthetic:items=800")
    build.add_argument("--out", required=True, type=Path, help="release directory to write")
    build.add_argument(
        "--levels",
        default="256,256,256",
        help="residual k-means codebook sizes, comma separated (default: 256,256,256)",
    )
    build.add_argument(
        "--sids",
        type=Path,
        help='import this assignment {"<item_id>": ["<a_1>", "<b_2>", ...]} instead of building',
    )
    build.add_argument(
        "--index-kind", default="auto", help="FAISS item index: auto, flat, ivf or hnsw"
    )
    build.add_argument("--embedder", default="minilm", help="minilm (default) or hashing")
    build.add_argument(
        "--collab-weight",
        type=float,
        default=0.0,
        help="share of the quantized vector given to item co-occurrence embeddings of the "
        "train sequences (0: text-only SIDs; see sid_index/collaborative.py)",
    )
    build.add_argument("--batch-size", type=int, default=64, help="MiniLM texts per batch")
    build.add_argument("--max-length", type=int, default=256, help="MiniLM tokens per text")
    build.add_argument("--niter", type=int, default=20, help="k-means iterations per level")
    build.add_argument("--seed", type=int, default=42, help="k-means seed")
    build.add_argument("--version", help="release version label (default: UTC timestamp)")
    build.add_argument("--overwrite", action="store_true", help="replace an existing release")
    build.add_argument("--json", action="store_true", help="print stats as JSON")
    build.set_defaults(handler=_build)

    stats = actions.add_parser(
        "stats",
        help="print the SID stats of a release",
        description="Print the Semantic ID stats of a release, optionally side by side with "
        "the same stats for an imported assignment.",
    )
    stats.add_argument("release", type=Path, help="release directory")
    stats.add_argument(
        "--compare", type=Path, help="an assignment JSON to compare against (same catalogue)"
    )
    stats.add_argument("--json", action="store_true", help="print stats as JSON")
    stats.set_defaults(handler=_stats)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def parse_levels(text: str) -> tuple[int, ...]:
    """Parse "256,256,256" into (256, 256, 256); ConfigError names the bad value."""
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--levels {text!r}: expected comma-separated integers") from None
    return levels


def _quiet_faiss() -> None:
    # FAISS logs its SIMD-library probing (with tracebacks of the misses) at INFO.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)


def _build(args: argparse.Namespace) -> int:
    from sid_index.collaborative import CollaborativeConfig
    from sid_index.datasets.registry import load_dataset
    from sid_index.embedder import make_embedder
    from sid_index.item_index import ItemIndexConfig
    from sid_index.release import ReleaseWriter
    from sid_index.rq_kmeans import RQKMeansConfig
    from sid_index.sid_builder import SIDBuildConfig
    from sid_index.sid_index import SIDIndex, SIDIndexConfig
    from sid_index.sid_stats import format_stats

    _quiet_faiss()
    config = SIDIndexConfig(
        sids=SIDBuildConfig(
            rq=RQKMeansConfig(levels=parse_levels(args.levels), niter=args.niter, seed=args.seed)
        ),
        index=ItemIndexConfig(kind=args.index_kind),
        collaborative=CollaborativeConfig(weight=args.collab_weight),
    )
    if args.sids is not None and not args.sids.is_file():
        raise DataError(f"SID assignment file {str(args.sids)!r} does not exist")
    options: dict[str, Any] = {}
    if args.embedder == "minilm":
        options = {"batch_size": args.batch_size, "max_length": args.max_length}
    # Fail on a bad release target before the slow part.
    writer = ReleaseWriter(args.out, version=args.version, overwrite=args.overwrite)
    with writer:
        dataset = load_dataset(args.dataset)
        # Collaborative-only SIDs read no item text (e.g. catalogues of bare ids).
        embedder = None if args.collab_weight >= 1.0 else make_embedder(args.embedder, **options)
        index = SIDIndex.build(dataset, config, embedder, sids_path=args.sids)
        index.save(writer.part_dir(PART))
        writer.set_config(
            PART,
            {
                **config.to_dict(),
                "dataset": args.dataset,
                "dataset_name": dataset.name,
                "embedder": index.embedder_name,
                "sids_file": None if args.sids is None else str(args.sids),
            },
        )
        writer.set_metrics(PART, index.stats.to_dict())
    if args.json:
        print(json.dumps(index.stats.to_dict(), indent=2))
    else:
        print(format_stats([index.stats]))
        kind = index.item_index.kind if index.item_index is not None else "none"
        print(f"item index: {kind}, {len(index)} items")
        print(f"release written to {args.out}")
    return 0


def _stats(args: argparse.Namespace) -> int:
    from sid_index.release import load_release
    from sid_index.sid_builder import import_sids
    from sid_index.sid_index import SIDIndex
    from sid_index.sid_stats import format_stats

    _quiet_faiss()
    release = load_release(args.release, require=(PART,))
    index = SIDIndex.load(release.part(PART))
    columns = [index.stats]
    if args.compare is not None:
        columns.append(
            import_sids(
                args.compare,
                index.catalog,
                round_disambiguation=index.config.sids.round_disambiguation,
            ).stats
        )
    if args.json:
        print(json.dumps([s.to_dict() for s in columns], indent=2))
    else:
        print(f"release {release.path} (version {release.version})")
        print(format_stats(columns))
    return 0
