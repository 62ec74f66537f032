"""Nearest-item look-ups over item embeddings with FAISS (inner product on unit vectors = cosine).

A `VectorIndex` is one FAISS index behind a four-method protocol; `flat` is exact and right
for small catalogues, `ivf` and `hnsw` are approximate and right for large ones. `kind="auto"`
picks flat up to `flat_max_items` items and IVF above. `ItemIndex` adds item-level queries
(related items excluding the item itself). Saved with `faiss.write_index`, never pickle.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self

import numpy as np

from sid_index.errors import ConfigError, DataError

if TYPE_CHECKING:
    import faiss

INDEX_FILE = "index.faiss"
META_FILE = "index.json"


@dataclass(frozen=True, slots=True)
class ItemIndexConfig:
    """Which FAISS index to build and how to search it."""

    kind: str = "auto"
    """"auto", "flat", "ivf" or "hnsw"."""
    flat_max_items: int = 50_000
    """`auto` builds an exact flat index up to this many items, IVF above."""
    nlist: int | None = None
    """IVF inverted lists; None picks 4·sqrt(N), at most N/39 (FAISS's points per centroid)."""
    nprobe: int = 16
    """IVF lists visited per query (recall vs speed)."""
    hnsw_m: int = 32
    """HNSW neighbours per node."""
    ef_construction: int = 80
    """HNSW candidate list size while building."""
    ef_search: int = 64
    """HNSW candidate list size while searching."""
    seed: int = 0
    """Seed of the IVF coarse quantizer's k-means."""

    def __post_init__(self) -> None:
        if self.kind != "auto":
            index_class(self.kind)  # raises ConfigError naming the kind
        if self.flat_max_items < 1:
            raise ConfigError(f"{self.flat_max_items=} must be >= 1")
        if self.nlist is not None and self.nlist < 1:
            raise ConfigError(f"{self.nlist=} must be >= 1 (or None for automatic)")
        for name in ("nprobe", "hnsw_m", "ef_construction", "ef_search"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")

    def resolve_kind(self, num_items: int) -> str:
        """The concrete kind for a catalogue of `num_items`."""
        if self.kind != "auto":
            return self.kind
        return "flat" if num_items <= self.flat_max_items else "ivf"


class VectorIndex(Protocol):
    """A vector index over inner product; rows are numbered in insertion order."""

    kind: ClassVar[str]

    @property
    def dim(self) -> int: ...

    def __len__(self) -> int: ...

    def add(self, vectors: np.ndarray) -> None:
        """Append (N, D) float32 vectors (IVF trains on the first batch)."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product.

        Returns:
            ((Q, k) float32 scores, (Q, k) int64 row indices); -1 / -inf where fewer than k.
        """
        ...

    def save(self, directory: Path) -> None:
        """Write the index (and its search settings) into `directory`."""
        ...

    @classmethod
    def load(cls, directory: Path) -> Self:
        """Read an index written by `save`."""
        ...


class _FaissIndex:
    """Shared plumbing: one faiss index, float32 checks, save/load with a JSON sidecar."""

    kind: ClassVar[str] = ""

    def __init__(self, index: faiss.Index, config: ItemIndexConfig) -> None:
        self.index = index
        self.config = config
        self._apply_search_params()

    @classmethod
    def create(cls, dim: int, num_items: int, config: ItemIndexConfig) -> Self:
        """An empty index sized for `num_items` vectors of width `dim`."""
        raise NotImplementedError

    def _apply_search_params(self) -> None:
        """Set query-time parameters (not all of them survive write_index)."""

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def add(self, vectors: np.ndarray) -> None:
        x = _as_f32(vectors, self.dim, "vectors")
        if not self.index.is_trained:
            self.index.train(x)
        self.index.add(x)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if k < 1:
            raise ConfigError(f"{k=} must be >= 1")
        q = _as_f32(queries, self.dim, "queries")
        scores, idx = self.index.search(q, k)  # (Q, k), (Q, k)
        scores = np.where(idx < 0, -np.inf, scores).astype(np.float32)
        return scores, idx.astype(np.int64)

    def save(self, directory: Path) -> None:
        import faiss

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / INDEX_FILE))
        meta = {
            "kind": self.kind,
            "dim": self.dim,
            "ntotal": len(self),
            "config": asdict(self.config),
        }
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> Self:
        index = load_vector_index(directory)
        if not isinstance(index, cls):
            raise DataError(f"{directory}: holds a {index.kind!r} index, not {cls.kind!r}")
        return index


class FlatIndex(_FaissIndex):
    """Exact search (brute force); the reference the approximate kinds are tested against."""

    kind = "flat"

    @classmethod
    def create(cls, dim: int, num_items: int, config: ItemIndexConfig) -> Self:
        import faiss

        return cls(faiss.IndexFlatIP(dim), config)


class IVFIndex(_FaissIndex):
    """Inverted lists over a k-means coarse quantizer; searches `nprobe` lists."""

    kind = "ivf"

    @classmethod
    def create(cls, dim: int, num_items: int, config: ItemIndexConfig) -> Self:
        import faiss

        nlist = config.nlist or max(1, min(int(4 * math.sqrt(num_items)), num_items // 39))
        if nlist > num_items:
            raise ConfigError(f"nlist={nlist} must be <= the number of items ({num_items})")
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = config.seed
        index.cp.min_points_per_centroid = 1  # small training sets are fine; silence FAISS
        return cls(index, config)

    def _apply_search_params(self) -> None:
        import faiss

        faiss.extract_index_ivf(self.index).nprobe = self.config.nprobe


class HNSWIndex(_FaissIndex):
    """Hierarchical navigable small-world graph; no training, fast queries, more memory."""

    kind = "hnsw"

    @classmethod
    def create(cls, dim: int, num_items: int, config: ItemIndexConfig) -> Self:
        import faiss

        index = faiss.IndexHNSWFlat(dim, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.ef_construction
        return cls(index, config)

    def _apply_search_params(self) -> None:
        index: Any = self.index  # an IndexHNSWFlat; the faiss stubs only know faiss.Index
        index.hnsw.efSearch = self.config.ef_search


# Kind name → implementation. FAISS itself is imported only when an index is created or read.
_KINDS: dict[str, type[_FaissIndex]] = {"flat": FlatIndex, "ivf": IVFIndex, "hnsw": HNSWIndex}


def index_class(kind: str) -> type[_FaissIndex]:
    """The implementation of a kind; ConfigError for an unknown one."""
    try:
        return _KINDS[kind]
    except KeyError:
        raise ConfigError(
            f"unknown item index kind {kind!r}; choose 'auto' or one of {sorted(_KINDS)}"
        ) from None


def build_vector_index(vectors: np.ndarray, config: ItemIndexConfig) -> _FaissIndex:
    """Create the configured kind for (N, D) vectors and add them."""
    if vectors.ndim != 2 or len(vectors) == 0:
        raise DataError(f"cannot index an empty or non-matrix array of shape {vectors.shape}")
    cls = index_class(config.resolve_kind(len(vectors)))
    index = cls.create(int(vectors.shape[1]), len(vectors), config)
    index.add(vectors)
    return index


def load_vector_index(directory: Path) -> _FaissIndex:
    """Read an index written by `save`; DataError for a missing or unreadable one."""
    import faiss

    directory = Path(directory)
    meta_path, index_path = directory / META_FILE, directory / INDEX_FILE
    if not meta_path.is_file() or not index_path.is_file():
        raise DataError(f"{directory}: no item index ({META_FILE} and {INDEX_FILE} expected)")
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta["kind"]
        config = ItemIndexConfig(**meta["config"])
    except (json.JSONDecodeError, KeyError, TypeError, ConfigError) as exc:
        raise DataError(f"{meta_path}: malformed index metadata ({exc})") from None
    try:
        raw = faiss.read_index(str(index_path))
    except RuntimeError as exc:
        raise DataError(f"{index_path}: unreadable FAISS index ({exc})") from None
    return index_class(kind)(raw, config)


class ItemIndex:
    """Item-level queries over a vector index whose row `i` is catalogue item `i`."""

    def __init__(self, index: VectorIndex, vectors: np.ndarray) -> None:
        if len(index) != len(vectors):
            raise DataError(f"index holds {len(index)} vectors, {len(vectors)} item vectors given")
        self.index = index
        self.vectors = vectors
        """(N, D) item vectors (float16 or float32) used as queries for related items."""

    @classmethod
    def build(cls, vectors: np.ndarray, config: ItemIndexConfig) -> ItemIndex:
        """Index (N, D) item vectors."""
        return cls(build_vector_index(vectors, config), vectors)

    @property
    def kind(self) -> str:
        return self.index.kind

    def __len__(self) -> int:
        return len(self.index)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k items for (Q, D) query vectors: ((Q, k) scores, (Q, k) item indices)."""
        return self.index.search(queries, k)

    def related_items(self, items: int | np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k nearest other items of each item (the item itself is never returned).

        Args:
            items: one item index or (B,) item indices.
        Returns:
            ((B, k) scores, (B, k) item indices); -inf / -1 where fewer than k exist.
        """
        rows = np.atleast_1d(np.asarray(items, dtype=np.int64))  # (B,)
        if rows.ndim != 1 or (len(rows) and (rows.min() < 0 or rows.max() >= len(self))):
            raise DataError(f"item indices must lie in [0, {len(self)}), got {items!r:.80}")
        if k < 1:
            raise ConfigError(f"{k=} must be >= 1")
        scores, idx = self.index.search(self.vectors[rows].astype(np.float32), k + 1)
        keep = (idx != rows[:, None]) & (idx >= 0)  # (B, k+1)
        # A stable sort on "not kept" moves kept hits to the front in score order; the item
        # itself need not come first (exact duplicates tie with it, IVF may miss it).
        order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # (B, k)
        idx = np.take_along_axis(idx, order, axis=1)
        scores = np.take_along_axis(scores, order, axis=1)
        kept = np.take_along_axis(keep, order, axis=1)
        return np.where(kept, scores, -np.inf).astype(np.float32), np.where(kept, idx, -1)

    def save(self, directory: Path) -> None:
        """Write the FAISS index (item vectors are saved by the owner, e.g. `SIDIndex`)."""
        self.index.save(directory)

    @classmethod
    def load(cls, directory: Path, vectors: np.ndarray) -> ItemIndex:
        """Read an index written by `save`, pairing it with its (N, D) item vectors."""
        return cls(load_vector_index(directory), vectors)


def _as_f32(x: np.ndarray, dim: int, what: str) -> np.ndarray:
    """C-contiguous float32 (N, dim) or DataError."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[1] != dim:
        raise DataError(f"{what} must have shape (N, {dim}), got {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)
