"""Semantic IDs for a catalogue: build them (embed → RQ-KMeans → disambiguation) or import them.

Every path ends with a `SemanticIDs` whose full codes are unique: items that share all
quantized codes get 0, 1, 2, ... on an appended disambiguation level, in catalogue row order
(deterministic, and independent of floating point).
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sid_index.codes import LEVEL_LETTERS, SemanticIDs
from sid_index.embedder import TextEmbedder, check_texts
from sid_index.errors import ConfigError, DataError
from sid_index.records import Catalog
from sid_index.rq_kmeans import RQKMeans, RQKMeansConfig
from sid_index.sid_stats import SIDStats, compute_stats

_EMPTY_TEXT_HINT = (
    "; Semantic IDs are built from item text — fill in the text, or import an existing "
    "assignment with --sids ASSIGNMENT.json, or build SIDs from co-occurrence alone with "
    "--collab-weight 1"
)


@dataclass(frozen=True, slots=True)
class SIDBuildConfig:
    """How Semantic IDs are built."""

    rq: RQKMeansConfig = field(default_factory=RQKMeansConfig)
    """Residual k-means levels and hyper-parameters."""
    round_disambiguation: bool = True
    """Round the disambiguation codebook up to a power of two, so items added later rarely
    need a bigger one (and the SID token vocabulary keeps its size)."""

    def __post_init__(self) -> None:
        if not isinstance(self.rq, RQKMeansConfig):
            raise ConfigError(f"{type(self.rq)=} must be RQKMeansConfig")


@dataclass(frozen=True, slots=True)
class SIDBuild:
    """A finished assignment with its stats (and the quantizer, when built here)."""

    sids: SemanticIDs
    stats: SIDStats
    quantizer: RQKMeans | None = None
    """The fitted codebooks; None for an imported assignment."""


def disambiguate(codes: np.ndarray, *, round_pow2: bool = True) -> tuple[np.ndarray, int]:
    """Append a level that numbers items sharing all codes 0, 1, 2, ... in row order.

    Args:
        codes: (N, L) integer codes.
        round_pow2: round the new level's codebook size up to a power of two.
    Returns:
        ((N, L+1) int32 codes, size of the new level's codebook).
    """
    n = len(codes)
    if n == 0:
        return np.zeros((0, codes.shape[1] + 1), dtype=np.int32), 1
    # Stable sort by code row keeps rows of one group in catalogue order; the rank within a
    # group is then the position minus the group's first position.
    _, inverse = np.unique(codes, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    order = np.argsort(inverse, kind="stable")
    sorted_groups = inverse[order]
    starts = np.flatnonzero(np.r_[True, sorted_groups[1:] != sorted_groups[:-1]])
    group_start = np.repeat(starts, np.diff(np.r_[starts, n]))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - group_start
    size = int(rank.max()) + 1
    if round_pow2:
        size = 1 << (size - 1).bit_length()
    return np.column_stack([codes.astype(np.int32), rank.astype(np.int32)]), size


def build_sids(
    embeddings: np.ndarray,
    config: SIDBuildConfig,
    *,
    embed_seconds: float | None = None,
) -> SIDBuild:
    """Fit residual k-means on (N, D) embeddings, encode, and append the disambiguation level."""
    if len(embeddings) == 0:
        raise DataError("cannot build Semantic IDs for an empty catalogue")
    t0 = time.perf_counter()
    quantizer = RQKMeans.fit(embeddings, config.rq)
    codes = quantizer.encode(embeddings)  # (N, L)
    full, dsize = disambiguate(codes, round_pow2=config.round_disambiguation)
    seconds = time.perf_counter() - t0
    notes = [
        f"level {LEVEL_LETTERS[i]}: codebook capped at {f.size} of {f.requested} "
        f"(only {f.distinct_points} distinct residuals)"
        for i, f in enumerate(quantizer.fits)
        if f.capped
    ]
    sids = SemanticIDs(full, (*quantizer.level_sizes, dsize))
    stats = compute_stats(
        full,
        sids.level_sizes,
        base_levels=codes.shape[1],
        source="rq-kmeans",
        embed_seconds=embed_seconds,
        quantize_seconds=seconds,
        notes=notes,
    )
    return SIDBuild(sids=sids, stats=stats, quantizer=quantizer)


def embed_catalog(catalog: Catalog, embedder: TextEmbedder) -> tuple[np.ndarray, float]:
    """Embed every item's text; refuses empty catalogues and items without text.

    Returns:
        ((N, D) float32 embeddings, seconds spent).
    """
    if len(catalog) == 0:
        raise DataError("cannot build Semantic IDs for an empty catalogue")
    check_texts(catalog.item_ids, catalog.texts, hint=_EMPTY_TEXT_HINT)
    t0 = time.perf_counter()
    emb = embedder.embed(catalog.texts)
    seconds = time.perf_counter() - t0
    if emb.shape != (len(catalog), embedder.dim):
        raise DataError(
            f"embedder {embedder.name!r} returned shape {emb.shape}, "
            f"expected ({len(catalog)}, {embedder.dim})"
        )
    return np.ascontiguousarray(emb, dtype=np.float32), seconds


def build_catalog_sids(
    catalog: Catalog, embedder: TextEmbedder, config: SIDBuildConfig
) -> tuple[SIDBuild, np.ndarray]:
    """Embed the catalogue and build its SIDs; returns (build, (N, D) embeddings)."""
    emb, seconds = embed_catalog(catalog, embedder)
    return build_sids(emb, config, embed_seconds=seconds), emb


_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")


def read_assignment(path: Path) -> dict[str, tuple[int, ...]]:
    """Read `{"<item_id>": ["<a_159>", "<b_42>", ...], ...}`; DataError names file and item."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"SID assignment file {str(path)!r} does not exist")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or not raw:
        raise DataError(f"{path}: expected a non-empty object {{item_id: [SID tokens]}}")
    out: dict[str, tuple[int, ...]] = {}
    num_levels: int | None = None
    first_id = ""
    for item_id, tokens in raw.items():
        if not isinstance(tokens, list) or not 1 <= len(tokens) <= len(LEVEL_LETTERS):
            raise DataError(
                f"{path}: item {item_id!r}: expected a list of 1 to {len(LEVEL_LETTERS)} "
                f"SID tokens, got {tokens!r:.80}"
            )
        codes: list[int] = []
        for level, tok in enumerate(tokens):
            m = _TOKEN_RE.fullmatch(tok) if isinstance(tok, str) else None
            if m is None or m.group(1) != LEVEL_LETTERS[level]:
                raise DataError(
                    f"{path}: item {item_id!r}: token {tok!r} at level {level} is not "
                    f"'<{LEVEL_LETTERS[level]}_N>'"
                )
            codes.append(int(m.group(2)))
        if num_levels is None:
            num_levels, first_id = len(codes), item_id
        elif len(codes) != num_levels:
            raise DataError(
                f"{path}: item {item_id!r} has {len(codes)} levels, item {first_id!r} has "
                f"{num_levels}; every SID must have the same number of levels"
            )
        out[item_id] = tuple(codes)
    return out


def import_sids(path: Path, catalog: Catalog, *, round_disambiguation: bool = True) -> SIDBuild:
    """Map an assignment file onto catalogue rows by item id (bring your own SIDs).

    Level sizes are max code + 1 per level. If two items share a full SID, a disambiguation
    level is appended and reported in the stats' notes.
    """
    path = Path(path)
    if len(catalog) == 0:
        raise DataError("cannot import Semantic IDs for an empty catalogue")
    assignment = read_assignment(path)
    missing = [iid for iid in catalog.item_ids if iid not in assignment]
    if missing:
        shown = ", ".join(repr(i) for i in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise DataError(f"{path}: {len(missing)} catalogue items have no SID ({shown}{more})")
    codes = np.array([assignment[iid] for iid in catalog.item_ids], dtype=np.int64)  # (N, L)
    if codes.max() >= np.iinfo(np.int32).max:
        raise DataError(f"{path}: a SID code is too large ({int(codes.max())})")
    codes = codes.astype(np.int32)
    sizes = tuple(int(s) for s in codes.max(axis=0) + 1)
    notes: list[str] = []
    extra = len(assignment) - len(catalog)
    if extra:
        notes.append(f"{extra} items in {path.name} are not in the catalogue (ignored)")
    base_levels = codes.shape[1]
    if len(np.unique(codes, axis=0)) < len(codes):
        codes, dsize = disambiguate(codes, round_pow2=round_disambiguation)
        sizes = (*sizes, dsize)
        notes.append(
            f"duplicate SIDs in {path.name}: appended disambiguation level "
            f"{LEVEL_LETTERS[base_levels]!r} of size {dsize}"
        )
    sids = SemanticIDs(codes, sizes)
    stats = compute_stats(
        codes, sizes, base_levels=base_levels, source=f"imported:{path.name}", notes=notes
    )
    return SIDBuild(sids=sids, stats=stats)
