"""Collaborative item embeddings, mixed into the text embeddings that Semantic IDs quantize.

Text-only SIDs group items that *read* alike; a recommender must predict what users *do*
next. Items bought in the same sessions (a printer and its toner) can read nothing alike, so a
text-only first SID code often says little about the next item. Mixing a collaborative part
into the vector before residual k-means makes SID prefixes group items that are both similar
and co-consumed: the fast model's first decoding steps then choose between behaviourally
coherent groups (on Amazon Office this is what lets the SID model catch up with an item-id
SASRec; see benchmarks/RESULTS.md).

The collaborative part is the classic word2vec-as-matrix-factorisation recipe: counts of item
pairs that follow each other within `window` positions in the training sequences, positive
pointwise mutual information, a rank-`dim` randomized SVD (`torch.svd_lowrank`, sparse — the
N×N matrix is never dense), rows L2-normalised. Only the *train* part of each sequence is
used (the leave-one-out valid/test items never leak into the SIDs). Items without a
co-occurrence (cold items) get a zero collaborative part: their SID comes from text alone.

At 10^7 items the pair counting belongs in a batch job (Spark/BigQuery) writing the same
(N, dim) matrix; the SVD on the sparse PPMI matrix stays feasible (nnz-bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sid_index.errors import ConfigError, DataError


@dataclass(frozen=True, slots=True)
class CollaborativeConfig:
    """How the collaborative embedding is computed and mixed in."""

    weight: float = 0.0
    """Share of the mixed vector's squared norm given to the collaborative part (0: text-only
    SIDs, 1: collaborative only). Both parts are unit vectors, scaled by sqrt(1 - w), sqrt(w)."""
    dim: int = 64
    """Rank of the SVD (dimensions of the collaborative part)."""
    window: int = 3
    """Items following an item within this many positions count as co-occurring with it."""
    svd_iters: int = 4
    """Power iterations of the randomized SVD."""
    seed: int = 0
    """Seed of the randomized SVD."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.weight <= 1.0:
            raise ConfigError(f"{self.weight=} must be in [0, 1]")
        if min(self.dim, self.window) < 1 or self.svd_iters < 0:
            raise ConfigError(f"{self.dim=} and {self.window=} must be >= 1, svd_iters >= 0")


def cooccurrence_counts(
    indptr: np.ndarray, items: np.ndarray, num_items: int, window: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Symmetric counts of item pairs within `window` positions of each other in a sequence.

    Args:
        indptr, items: sequences in CSR form (oldest first), catalogue indices.
    Returns:
        (rows, cols, counts) of the nonzero entries, rows/cols int64, counts float64.
    """
    if len(items) and (items.min() < 0 or items.max() >= num_items):
        raise DataError(f"sequence items outside the catalogue [0, {num_items})")
    seq_of = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    keys = []
    for d in range(1, window + 1):
        same = seq_of[d:] == seq_of[:-d]  # positions i, i+d in one sequence
        a, b = items[:-d][same].astype(np.int64), items[d:][same].astype(np.int64)
        keep = a != b
        a, b = a[keep], b[keep]
        keys += [a * num_items + b, b * num_items + a]
    if not keys:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, np.zeros(0)
    uniq, counts = np.unique(np.concatenate(keys), return_counts=True)
    return uniq // num_items, uniq % num_items, counts.astype(np.float64)


def collaborative_embeddings(
    indptr: np.ndarray, items: np.ndarray, num_items: int, config: CollaborativeConfig
) -> np.ndarray:
    """(num_items, dim) float32 PPMI-SVD item vectors, unit rows (zero for cold items)."""
    rows, cols, counts = cooccurrence_counts(indptr, items, num_items, config.window)
    out = np.zeros((num_items, config.dim), dtype=np.float32)
    if len(counts) == 0:
        return out
    marginal = np.bincount(rows, weights=counts, minlength=num_items)
    pmi = np.log(counts * counts.sum() / (marginal[rows] * marginal[cols]))
    keep = pmi > 0
    if not keep.any():
        return out
    ppmi = torch.sparse_coo_tensor(
        torch.from_numpy(np.stack([rows[keep], cols[keep]])),
        torch.from_numpy(pmi[keep].astype(np.float32)),
        (num_items, num_items),
        check_invariants=False,  # indices come from np.unique: in range, no duplicates
    ).coalesce()
    rank = min(config.dim, num_items)
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(config.seed)
    try:
        u, s, _ = torch.svd_lowrank(ppmi, q=rank, niter=config.svd_iters)
    finally:
        torch.random.set_rng_state(gen_state)
    vecs = (u * s.sqrt()).numpy()
    norms = np.linalg.norm(vecs, axis=1, keepdims=True)
    out[:, :rank] = np.where(norms > 0, vecs / np.maximum(norms, 1e-12), 0.0)
    return out


def mix(text: np.ndarray, collab: np.ndarray, weight: float) -> np.ndarray:
    """[text ; collab] with unit text rows scaled by sqrt(1 - weight), collab by sqrt(weight)."""
    if len(text) != len(collab):
        raise DataError(f"{len(text)} text vectors but {len(collab)} collaborative vectors")
    t = text.astype(np.float32)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    return np.concatenate(
        [t * np.sqrt(1.0 - weight), collab.astype(np.float32) * np.sqrt(weight)], axis=1
    )
