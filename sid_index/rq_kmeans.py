"""Residual k-means (RQ-KMeans) with FAISS: level `l` clusters what levels `0..l-1` left over.

Level 0 clusters the embeddings, level 1 clusters `x - c0[code0]`, and so on, so a code path
`(c0, c1, ..., c_{L-1})` is a coarse-to-fine description of an item. This is the robust
alternative to RQ-VAE (no codebook collapse, no training instability); its collisions are
resolved by the disambiguation level that `sid_builder` appends.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Self

import numpy as np

from sid_index.errors import ConfigError, DataError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RQKMeansConfig:
    """Residual k-means hyper-parameters."""

    levels: tuple[int, ...] = (256, 256, 256)
    """Codebook size per level (before the disambiguation level)."""
    niter: int = 20
    """Lloyd iterations per level."""
    nredo: int = 1
    """k-means restarts per level; the run with the lowest objective is kept."""
    kmeanspp_levels: int = 1
    """How many leading levels seed k-means with k-means++ (D² sampling); deeper levels use
    FAISS's random seeding. k-means++ finds separated groups that random seeding merges or
    splits (planted clusters: 47/50 recovered vs 5/50), which suits the coarse first level;
    on residuals it spends centroids on outliers and leaves dense regions crowded (Office,
    3×256: 32–54% of items collide with k-means++ everywhere vs 24–28% with it on level a
    only or nowhere)."""
    seed: int = 42
    """Seed of level 0; level `l` uses `seed + l` so levels do not share an initialization."""
    max_points_per_centroid: int = 256
    """FAISS subsamples the training set above `k * max_points_per_centroid` points."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "levels", tuple(int(k) for k in self.levels))
        if not self.levels:
            raise ConfigError(f"{self.levels=} must name at least one level")
        if len(self.levels) > 25:
            # One SID letter per level plus one for disambiguation: a..z.
            raise ConfigError(f"{len(self.levels)=} must be <= 25")
        if any(k < 1 for k in self.levels):
            raise ConfigError(f"{self.levels=}: every codebook size must be >= 1")
        if self.niter < 1:
            raise ConfigError(f"{self.niter=} must be >= 1")
        if self.nredo < 1:
            raise ConfigError(f"{self.nredo=} must be >= 1")
        if self.kmeanspp_levels < 0:
            raise ConfigError(f"{self.kmeanspp_levels=} must be >= 0")
        if self.max_points_per_centroid < 1:
            raise ConfigError(f"{self.max_points_per_centroid=} must be >= 1")


@dataclass(frozen=True, slots=True)
class LevelFit:
    """What fitting one level did."""

    requested: int
    """Codebook size asked for."""
    size: int
    """Codebook size built: `min(requested, distinct residuals)`."""
    distinct_points: int | None
    """Distinct residual vectors when fewer than `requested` (else None: not counted)."""
    mse: float
    """Mean squared norm of the residual left after this level."""

    @property
    def capped(self) -> bool:
        return self.size < self.requested


class RQKMeans:
    """A fitted (or loaded) residual k-means quantizer: one (k_l, D) codebook per level."""

    def __init__(self, codebooks: list[np.ndarray], fits: list[LevelFit] | None = None) -> None:
        if not codebooks:
            raise ConfigError("RQKMeans needs at least one codebook")
        dims = {int(c.shape[1]) for c in codebooks}
        if len(dims) != 1 or any(c.ndim != 2 or len(c) == 0 for c in codebooks):
            raise DataError(f"codebooks must be non-empty (k, D) arrays of one D, got {dims}")
        self.codebooks = [np.ascontiguousarray(c, dtype=np.float32) for c in codebooks]
        self.fits = fits or []

    @property
    def dim(self) -> int:
        return int(self.codebooks[0].shape[1])

    @property
    def level_sizes(self) -> tuple[int, ...]:
        return tuple(len(c) for c in self.codebooks)

    @classmethod
    def fit(cls, x: np.ndarray, config: RQKMeansConfig) -> Self:
        """Fit every level on the residuals of the previous ones.

        Args:
            x: (N, D) float embeddings, N >= 1.
        """
        x = _as_matrix(x)
        residual = x.copy()
        codebooks: list[np.ndarray] = []
        fits: list[LevelFit] = []
        for level, k in enumerate(config.levels):
            distinct = _distinct_rows_if_fewer(residual, k)
            if distinct is not None:
                # Too few distinct residuals for k centroids: each distinct vector is its own
                # centroid. Exact (zero residual) and needs no k-means at all.
                centroids, codes = distinct
                log.info(
                    "rq-kmeans level %d: codebook capped at %d (only %d distinct residuals)",
                    level,
                    len(centroids),
                    len(centroids),
                )
            else:
                centroids = _kmeans(
                    residual,
                    k,
                    config,
                    seed=config.seed + level,
                    kmeanspp=level < config.kmeanspp_levels,
                )
                codes = _nearest(centroids, residual)
            residual -= centroids[codes]
            codebooks.append(centroids)
            fits.append(
                LevelFit(
                    requested=k,
                    size=len(centroids),
                    distinct_points=len(centroids) if distinct is not None else None,
                    mse=float(np.mean(np.sum(residual.astype(np.float64) ** 2, axis=1))),
                )
            )
        return cls(codebooks, fits)

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Quantize vectors level by level.

        Args:
            x: (N, D) float embeddings.
        Returns:
            (N, L) int32 codes; column `l` lies in [0, level_sizes[l]).
        """
        x = _as_matrix(x)
        if x.shape[1] != self.dim:
            raise DataError(f"embeddings have width {x.shape[1]}, the codebooks {self.dim}")
        residual = x.copy()
        codes = np.empty((len(x), len(self.codebooks)), dtype=np.int32)  # (N, L)
        for level, centroids in enumerate(self.codebooks):
            codes[:, level] = _nearest(centroids, residual)
            residual -= centroids[codes[:, level]]
        return codes

    def reconstruct(self, codes: np.ndarray) -> np.ndarray:
        """Sum of the chosen centroids: (N, L) codes -> (N, D) float32."""
        out = np.zeros((len(codes), self.dim), dtype=np.float32)
        for level, centroids in enumerate(self.codebooks):
            out += centroids[codes[:, level]]
        return out


def _kmeans(
    x: np.ndarray, k: int, config: RQKMeansConfig, *, seed: int, kmeanspp: bool
) -> np.ndarray:
    """Best of `nredo` FAISS k-means runs on (N, D) x with more than k distinct rows: (k, D)."""
    import faiss

    best: tuple[float, np.ndarray] | None = None
    for redo in range(config.nredo):
        km = faiss.Kmeans(
            x.shape[1],
            k,
            niter=config.niter,
            seed=seed + 1000 * redo,
            verbose=False,
            # FAISS prints a warning below 39 points per centroid; small catalogues are
            # legitimate here and k-means stays correct down to 1 point per centroid.
            min_points_per_centroid=1,
            max_points_per_centroid=config.max_points_per_centroid,
        )
        init = None
        if kmeanspp:
            rng = np.random.default_rng(seed + 1000 * redo)
            sample = x
            if len(x) > k * config.max_points_per_centroid:
                sample = x[rng.choice(len(x), k * config.max_points_per_centroid, replace=False)]
            init = _kmeans_pp(sample, k, rng)
        km.train(x, init_centroids=init)
        obj = km.obj  # objective after each iteration (None when FAISS copied the points)
        objective = float(obj[-1]) if obj is not None and len(obj) else 0.0
        if best is None or objective < best[0]:
            best = (objective, np.ascontiguousarray(np.asarray(km.centroids), dtype=np.float32))
    assert best is not None  # nredo >= 1
    return best[1]


def _kmeans_pp(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: each next centre is drawn with probability ∝ D² to the chosen ones.

    One (N, D) @ (D,) product per centre, O(N·D·k) in all; x must have >= k distinct rows."""
    xx = np.einsum("nd,nd->n", x, x, dtype=np.float64)  # (N,)
    chosen = np.empty(k, dtype=np.int64)
    chosen[0] = rng.integers(len(x))
    d2 = np.full(len(x), np.inf)
    for j in range(k):
        if j:
            cdf = np.cumsum(d2)
            # Points already chosen have d2 == 0 and can never be drawn again.
            chosen[j] = min(
                int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right")), len(x) - 1
            )
        c = x[chosen[j]]
        cc = float(c.astype(np.float64) @ c)
        dist = xx - 2.0 * (x @ c).astype(np.float64) + cc  # (N,) squared distances
        # The float32 product leaves rounding noise where a row equals the centre: call it 0.
        dist[dist <= 1e-5 * (xx + cc)] = 0.0
        d2 = np.minimum(d2, dist)
        d2[chosen[j]] = 0.0
    return np.ascontiguousarray(x[chosen], dtype=np.float32)


def _as_matrix(x: np.ndarray) -> np.ndarray:
    """Validate and convert to C-contiguous float32 (N, D)."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise DataError(f"expected a non-empty (N, D) embedding matrix, got shape {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
        raise DataError(f"embeddings of rows {bad[:10].tolist()} contain NaN or inf")
    return x


def _nearest(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest centroid (L2) per row: (k, D), (N, D) -> (N,) int64."""
    import faiss

    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(centroids)
    _, idx = index.search(x, 1)  # (N, 1)
    return idx[:, 0].astype(np.int64)


def _distinct_rows_if_fewer(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(unique rows (U, D), inverse (N,)) when x has at most k distinct rows, else None."""
    # Cheap screen first: a random projection maps equal rows to equal values, so more than k
    # distinct projections proves more than k distinct rows without sorting (N, D) bytes.
    proj = x.astype(np.float64) @ np.random.default_rng(0).standard_normal(x.shape[1])
    if len(np.unique(proj)) > k:
        return None
    rows = np.ascontiguousarray(x).view(np.dtype((np.void, x.dtype.itemsize * x.shape[1])))
    _, first, inverse = np.unique(rows[:, 0], return_index=True, return_inverse=True)
    if len(first) > k:
        return None
    # Centroids in order of first appearance, so codes do not depend on byte order of floats.
    order = np.argsort(first, kind="stable")
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    return x[first[order]].copy(), rank[inverse.reshape(-1)].astype(np.int64)
