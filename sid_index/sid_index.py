"""`SIDIndex`: the item universe of a release — catalogue, Semantic IDs, item embeddings, the
FAISS item index and the stats of how the SIDs were made — saved as one directory.

Layout of the directory (a release's `sid_index/` part); nothing is pickled::

    config.json      format version, build config, embedder name and width
    items.jsonl      the catalogue, one JSON object per item, row order = item index
    codes.npy        (N, L) int32 Semantic ID codes
    level_sizes.json codebook size per level
    stats.json       SIDStats
    codebooks.npz    residual k-means centroids, arr_<level> (only when built here)
    embeddings.npy   (N, D) item embeddings, float16 by default (absent without item text)
    item_index/      FAISS index (faiss.write_index) + its settings (absent without embeddings)
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sid_index.codes import SemanticIDs
from sid_index.collaborative import CollaborativeConfig, collaborative_embeddings, mix
from sid_index.datasets.splits import leave_one_out
from sid_index.embedder import TextEmbedder
from sid_index.errors import ConfigError, DataError, ReleaseError
from sid_index.item_index import ItemIndex, ItemIndexConfig, build_vector_index
from sid_index.records import Catalog, Dataset
from sid_index.rq_kmeans import RQKMeans, RQKMeansConfig
from sid_index.sid_builder import SIDBuild, SIDBuildConfig, build_sids, embed_catalog, import_sids
from sid_index.sid_stats import SIDStats

if TYPE_CHECKING:
    from sid_index.trie import SIDTrie

FORMAT_VERSION = 1
_EMB_DTYPES = ("float16", "float32")


@dataclass(frozen=True, slots=True)
class SIDIndexConfig:
    """How an `SIDIndex` is built and stored."""

    sids: SIDBuildConfig = field(default_factory=SIDBuildConfig)
    """Semantic ID construction (residual k-means levels, disambiguation)."""
    index: ItemIndexConfig = field(default_factory=ItemIndexConfig)
    """FAISS item index kind and search settings."""
    collaborative: CollaborativeConfig = field(default_factory=CollaborativeConfig)
    """Collaborative part mixed into the text embeddings before quantization (weight 0:
    text-only SIDs). Needs a dataset with interactions; only the leave-one-out train parts
    are used."""
    embeddings_dtype: str = "float16"
    """Stored dtype of item embeddings; float16 halves the size at ~1e-3 cosine error."""

    def __post_init__(self) -> None:
        if self.embeddings_dtype not in _EMB_DTYPES:
            raise ConfigError(f"{self.embeddings_dtype=} must be one of {_EMB_DTYPES}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready nested dict."""
        d = asdict(self)
        d["sids"]["rq"]["levels"] = list(self.sids.rq.levels)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SIDIndexConfig:
        """Inverse of `to_dict`; ConfigError on unknown or malformed keys."""
        try:
            sids = dict(d.get("sids", {}))
            rq = RQKMeansConfig(**{**sids.pop("rq", {})})
            nested = ("sids", "index", "collaborative")
            return cls(
                sids=SIDBuildConfig(rq=rq, **sids),
                index=ItemIndexConfig(**d.get("index", {})),
                collaborative=CollaborativeConfig(**d.get("collaborative", {})),
                **{k: v for k, v in d.items() if k not in nested},
            )
        except TypeError as exc:
            raise ConfigError(f"malformed SIDIndex config ({exc})") from None


def _with_collaborative(
    data: Dataset | Catalog, text: np.ndarray | None, config: CollaborativeConfig
) -> np.ndarray:
    """Text embeddings mixed with co-occurrence embeddings of the train sequences (the latter
    alone when `text` is None)."""
    if not isinstance(data, Dataset):
        raise ConfigError("collaborative SIDs need a dataset with interactions, not a catalogue")
    split = leave_one_out(data.interactions)
    collab = collaborative_embeddings(
        split.train_indptr, split.train_items, len(data.catalog), config
    )
    return collab if text is None else mix(text, collab, config.weight)


class SIDIndex:
    """Catalogue + Semantic IDs + item embeddings + FAISS index. Row `i` is item `i` in all."""

    def __init__(
        self,
        catalog: Catalog,
        sids: SemanticIDs,
        stats: SIDStats,
        config: SIDIndexConfig,
        *,
        embeddings: np.ndarray | None = None,
        item_index: ItemIndex | None = None,
        quantizer: RQKMeans | None = None,
        embedder_name: str | None = None,
    ) -> None:
        if sids.num_items != len(catalog):
            raise DataError(f"{sids.num_items} SIDs for a catalogue of {len(catalog)} items")
        if embeddings is not None and len(embeddings) != len(catalog):
            raise DataError(f"{len(embeddings)} embeddings for {len(catalog)} items")
        self.catalog = catalog
        self.sids = sids
        self.stats = stats
        self.config = config
        self.embeddings = embeddings
        """(N, D) item embeddings in the stored dtype, or None (no item text)."""
        self.item_index = item_index
        """FAISS item index over `embeddings`, or None when there are none."""
        self.quantizer = quantizer
        """Residual k-means codebooks (to encode new items), or None for imported SIDs."""
        self.embedder_name = embedder_name
        self._trie: SIDTrie | None = None

    @classmethod
    def build(
        cls,
        data: Dataset | Catalog,
        config: SIDIndexConfig | None = None,
        embedder: TextEmbedder | None = None,
        *,
        sids_path: Path | None = None,
    ) -> SIDIndex:
        """Build SIDs (or import them from `sids_path`), embeddings and the item index.

        Args:
            data: a dataset or a bare catalogue.
            embedder: required unless `sids_path` is given; with imported SIDs it is used
                only when every item has text (otherwise the index has no embeddings).
            sids_path: an assignment JSON `{"<item_id>": ["<a_1>", "<b_2>", ...]}`.
        """
        config = config or SIDIndexConfig()
        catalog = data.catalog if isinstance(data, Dataset) else data
        if len(catalog) == 0:
            raise DataError("cannot build an SID index for an empty catalogue")
        emb: np.ndarray | None = None
        build: SIDBuild
        if sids_path is not None:
            build = import_sids(
                sids_path, catalog, round_disambiguation=config.sids.round_disambiguation
            )
            empty = sum(1 for t in catalog.texts if not t.strip())
            if embedder is not None and not empty:
                emb, seconds = embed_catalog(catalog, embedder)
                build = SIDBuild(
                    build.sids, replace(build.stats, embed_seconds=seconds), build.quantizer
                )
            elif embedder is not None:
                note = f"no item embeddings or FAISS index: {empty} items have no text"
                build = SIDBuild(
                    build.sids, replace(build.stats, notes=(*build.stats.notes, note)), None
                )
        else:
            if config.collaborative.weight >= 1.0:  # no text needed (bare item ids)
                embedder = None
                emb, seconds = _with_collaborative(data, None, config.collaborative), 0.0
            elif embedder is None:
                raise ConfigError("building Semantic IDs needs an embedder (or import SIDs)")
            else:
                emb, seconds = embed_catalog(catalog, embedder)
                if config.collaborative.weight > 0:
                    emb = _with_collaborative(data, emb, config.collaborative)
            build = build_sids(emb, config.sids, embed_seconds=seconds)
        item_index = None
        if emb is not None:
            # Round to the stored dtype first, so a loaded index answers exactly like this one.
            emb = emb.astype(config.embeddings_dtype)
            item_index = ItemIndex(build_vector_index(emb.astype(np.float32), config.index), emb)
        return cls(
            catalog,
            build.sids,
            build.stats,
            config,
            embeddings=emb,
            item_index=item_index,
            quantizer=build.quantizer,
            embedder_name=None if emb is None else embedder.name if embedder else "collaborative",
        )

    @property
    def trie(self) -> SIDTrie:
        """The prefix trie over all SIDs, built on first use."""
        if self._trie is None:
            from sid_index.trie import SIDTrie

            self._trie = SIDTrie.build(self.sids)
        return self._trie

    def __len__(self) -> int:
        return len(self.catalog)

    def sid_text(self, item_id: str) -> str:
        """The SID of an item, spelled as tokens (DataError for an unknown id)."""
        return self.sids.sid_text(self.catalog.index_of(item_id))

    def related_items(self, item_id: str, k: int = 10) -> list[tuple[str, float]]:
        """The k most similar other items as (item id, cosine) pairs, best first."""
        if self.item_index is None:
            raise DataError("this SID index has no item embeddings (built without item text)")
        scores, idx = self.item_index.related_items(self.catalog.index_of(item_id), k)
        return [
            (self.catalog.item_ids[int(i)], float(s))
            for i, s in zip(idx[0], scores[0], strict=True)
            if i >= 0
        ]

    def save(self, directory: Path) -> None:
        """Write the bundle into `directory` (created; existing files are replaced)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "config": self.config.to_dict(),
            "embedder": self.embedder_name,
            "dim": None if self.embeddings is None else int(self.embeddings.shape[1]),
        }
        _write_json(d / "config.json", meta)
        _write_catalog(d / "items.jsonl", self.catalog)
        np.save(d / "codes.npy", self.sids.codes.astype(np.int32), allow_pickle=False)
        _write_json(d / "level_sizes.json", list(self.sids.level_sizes))
        _write_json(d / "stats.json", self.stats.to_dict())
        if self.quantizer is not None:
            # Positional arrays are stored as arr_0, arr_1, ... (one per level).
            np.savez(d / "codebooks.npz", *self.quantizer.codebooks, allow_pickle=False)
        if self.embeddings is not None:
            np.save(d / "embeddings.npy", self.embeddings, allow_pickle=False)
        if self.item_index is not None:
            self.item_index.save(d / "item_index")

    @classmethod
    def load(cls, directory: Path) -> SIDIndex:
        """Read a bundle written by `save`; ReleaseError for a missing or inconsistent one."""
        d = Path(directory)
        meta = _read_json(d / "config.json")
        if not isinstance(meta, dict) or int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise ReleaseError(f"{d / 'config.json'}: unknown SID index format")
        try:
            config = SIDIndexConfig.from_dict(meta.get("config", {}))
            catalog = _read_catalog(d / "items.jsonl")
            sids = SemanticIDs(
                _load_npy(d / "codes.npy").astype(np.int32),
                tuple(int(s) for s in _read_json(d / "level_sizes.json")),
            )
            stats = SIDStats.from_dict(_read_json(d / "stats.json"), where=str(d / "stats.json"))
            quantizer = None
            if (d / "codebooks.npz").is_file():
                with np.load(d / "codebooks.npz", allow_pickle=False) as z:
                    quantizer = RQKMeans([z[f"arr_{i}"] for i in range(len(z.files))])
            emb = _load_npy(d / "embeddings.npy") if (d / "embeddings.npy").is_file() else None
            item_index = None
            if emb is not None:
                item_index = ItemIndex.load(d / "item_index", emb)
            return cls(
                catalog,
                sids,
                stats,
                config,
                embeddings=emb,
                item_index=item_index,
                quantizer=quantizer,
                embedder_name=meta.get("embedder"),
            )
        except (DataError, ConfigError, KeyError, ValueError) as exc:
            raise ReleaseError(f"{d}: broken SID index ({exc})") from None


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise ReleaseError(f"{path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path}: not valid JSON ({exc})") from None


def _load_npy(path: Path) -> np.ndarray:
    if not path.is_file():
        raise ReleaseError(f"{path} is missing")
    return np.load(path, allow_pickle=False)


def _write_catalog(path: Path, catalog: Catalog) -> None:
    """One JSON object per item; `attributes` only when the catalogue has them."""
    with path.open("w", encoding="utf-8") as fh:
        for i in range(len(catalog)):
            row: dict[str, object] = {
                "item_id": catalog.item_ids[i],
                "title": catalog.titles[i],
                "text": catalog.texts[i],
                "category": list(catalog.categories[i]),
                "domain": catalog.domains[i],
            }
            if catalog.attributes is not None:
                row["attributes"] = dict(catalog.attributes[i])
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


def _read_catalog(path: Path) -> Catalog:
    if not path.is_file():
        raise ReleaseError(f"{path} is missing")
    rows: list[dict[str, Any]] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ReleaseError(f"{path}:{lineno}: not valid JSON ({exc})") from None
    try:
        has_attrs = bool(rows) and all("attributes" in r for r in rows)
        return Catalog(
            item_ids=[str(r["item_id"]) for r in rows],
            titles=[r["title"] for r in rows],
            texts=[r["text"] for r in rows],
            categories=[tuple(r["category"]) for r in rows],
            domains=[r["domain"] for r in rows],
            attributes=[r["attributes"] for r in rows] if has_attrs else None,
        )
    except (KeyError, TypeError) as exc:
        raise ReleaseError(f"{path}: malformed item record ({exc!r})") from None
