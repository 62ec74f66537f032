"""Persona assignment for the rule backend, without importing `trainer`.

Two sources of personas:

- `PersonaAssigner`: the persona prototypes a trainer discovered (`trainer/cot/personas.py`
  `PersonaModel.save`, format version 1: `feature_keys`, `centroids` in square-root histogram
  space, `names`, `descriptions`, `config`). Item features are rebuilt here from the catalogue
  by their keys (`cat:A > B` category prefixes, `domain:d`, `sid:<a_3>` SID prefixes, exactly
  as the trainer spells them), a user's feature histogram is normalized over the model's
  features, square-rooted, and the nearest centroid wins — the trainer's `assign_many`.
- `PrefixPersonas`: no model file (a release without a trained reasoner): one persona per
  level-0 SID code, named after the most common category (or title word) under it.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sid_index.codes import parse_sid
from sid_index.errors import DataError
from sid_index.records import Catalog

FORMAT_VERSION = 1
"""`trainer/cot/personas.py` persona model format this reader understands."""


def recency_weights(length: int, half_life: float | None) -> np.ndarray:
    """(T,) weight of each history position, oldest first (1.0 for the most recent)."""
    if half_life is None:
        return np.ones(length)
    age = np.arange(length - 1, -1, -1, dtype=np.float64)
    return 0.5 ** (age / half_life)


class PersonaAssigner:
    """Nearest persona prototype of a history (a trainer's persona model, see module doc)."""

    def __init__(
        self,
        names: Sequence[str],
        descriptions: Sequence[str],
        centroids: np.ndarray,
        item_features: np.ndarray,
        half_life: float | None,
    ) -> None:
        """Args:
        centroids: (P, F) prototypes in square-root histogram space.
        item_features: (N, M) feature ids (columns of `centroids`) of each item, -1 unused.
        half_life: recency half-life in items of the histogram (None: equal weights).
        """
        self.names = list(names)
        self.descriptions = list(descriptions)
        self.centroids = np.asarray(centroids, dtype=np.float64)
        self.item_features = item_features
        self.half_life = half_life

    @property
    def num_personas(self) -> int:
        return len(self.names)

    @classmethod
    def load(cls, path: Path, catalog: Catalog, codes: np.ndarray) -> PersonaAssigner:
        """Read a persona model JSON and bind it to this catalogue's items.

        Raises:
            DataError: missing/malformed file, or no feature of the model exists here.
        """
        try:
            doc = json.loads(Path(path).read_text(encoding="utf-8"))
            if doc.get("format_version") != FORMAT_VERSION:
                raise DataError(f"{path}: persona model format {doc.get('format_version')!r}")
            keys = [str(k) for k in doc["feature_keys"]]
            names = [str(n) for n in doc["names"]]
            descriptions = [str(d) for d in doc["descriptions"]]
            centroids = np.asarray(doc["centroids"], dtype=np.float64).reshape(
                len(names), len(keys)
            )
            config = doc.get("config", {})
            half_life = config.get("half_life")
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: not a persona model ({type(exc).__name__}: {exc})") from None
        if len(descriptions) != len(names) or not names:
            raise DataError(f"{path}: {len(names)} names and {len(descriptions)} descriptions")
        features = _item_features(keys, catalog, codes)
        if (features < 0).all():
            raise DataError(f"{path}: none of its {len(keys)} features exists in this catalogue")
        return cls(names, descriptions, centroids, features, half_life)

    def assign_many(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(U,) persona id of each history ((T,) catalogue rows, oldest first)."""
        num_features = self.centroids.shape[1]
        hist = np.zeros((len(histories), num_features))
        for u, rows in enumerate(histories):
            fid = self.item_features[np.asarray(rows, dtype=np.int64)]  # (T, M)
            w = np.broadcast_to(recency_weights(len(rows), self.half_life)[:, None], fid.shape)
            valid = fid >= 0
            hist[u] = np.bincount(fid[valid], w[valid], num_features)
        total = hist.sum(axis=1, keepdims=True)
        v = np.sqrt(np.divide(hist, total, out=np.zeros_like(hist), where=total > 0))
        c = self.centroids
        dist = -2 * v @ c.T + (c * c).sum(axis=1)[None]  # (U, P), up to the constant |v|^2
        return dist.argmin(axis=1).astype(np.int64)

    def text(self, persona_id: int) -> str:
        """ "name: description", the persona part of the CoT."""
        return f"{self.names[persona_id]}: {self.descriptions[persona_id]}"


def _item_features(keys: Sequence[str], catalog: Catalog, codes: np.ndarray) -> np.ndarray:
    """(N, M) ids into `keys` of each item's features, -1 where unused (see module doc)."""
    index = {k: i for i, k in enumerate(keys)}
    sid_prefixes: list[tuple[int, tuple[int, ...]]] = []
    for i, key in enumerate(keys):
        if key.startswith("sid:"):
            try:
                sid_prefixes.append((i, parse_sid(key[4:])))
            except DataError:
                continue
    per_item: list[list[int]] = []
    for path, domain in zip(catalog.categories, catalog.domains, strict=True):
        ids = [index[k] for k in _category_keys(path) if k in index]
        if not (path and path[0] == domain):  # a path that starts with the domain carries it
            d = index.get(f"domain:{domain}")
            if d is not None:
                ids.append(d)
        per_item.append(ids)
    width = max((len(x) for x in per_item), default=0) + len(sid_prefixes)
    out = np.full((len(catalog), max(width, 1)), -1, dtype=np.int64)
    for row, ids in enumerate(per_item):
        out[row, : len(ids)] = ids
    col = np.array([len(x) for x in per_item], dtype=np.int64)  # next free column per item
    for fid, prefix in sid_prefixes:
        if len(prefix) > codes.shape[1]:
            continue
        hit = np.flatnonzero((codes[:, : len(prefix)] == np.asarray(prefix)).all(axis=1))
        out[hit, col[hit]] = fid
        col[hit] += 1
    return out


def _category_keys(path: Sequence[str]) -> list[str]:
    return ["cat:" + " > ".join(path[:d]) for d in range(1, len(path) + 1)]


def group_label(catalog: Catalog, rows: np.ndarray, weights: np.ndarray | None = None) -> str:
    """A short readable label of a group of items: the most common (weighted) category leaf,
    else the most common title word, else ""."""
    rows = np.asarray(rows, dtype=np.int64)
    w = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)
    counts: Counter[str] = Counter()
    for r, wt in zip(rows.tolist(), w.tolist(), strict=True):
        path = catalog.categories[r]
        if path:
            counts[path[-1]] += wt
    if not counts:
        for r, wt in zip(rows.tolist(), w.tolist(), strict=True):
            for word in {
                x for x in catalog.titles[r].lower().split() if x.isalpha() and len(x) > 2
            }:
                counts[word] += wt
    if not counts:
        return ""
    # Ties break by name so the label is deterministic.
    return min(counts.items(), key=lambda kv: (-kv[1], kv[0]))[0]


class PrefixPersonas:
    """One persona per level-0 SID code (no persona model available)."""

    def __init__(self, catalog: Catalog, codes: np.ndarray, level0_size: int) -> None:
        order = np.argsort(codes[:, 0], kind="stable")
        bounds = np.searchsorted(codes[order, 0], np.arange(level0_size + 1))
        self.names: list[str] = []
        for code in range(level0_size):
            label = group_label(catalog, order[bounds[code] : bounds[code + 1]])
            self.names.append(f"{label or f'group a_{code}'} fan")

    @property
    def num_personas(self) -> int:
        return len(self.names)

    def assign(self, level0_codes: np.ndarray, weights: np.ndarray) -> int:
        """The dominant (weighted) level-0 code of a history; ties go to the smaller code."""
        totals = np.bincount(level0_codes, weights, len(self.names))
        return int(totals.argmax())

    def text(self, persona_id: int) -> str:
        return f"{self.names[persona_id]}: mostly items under a_{persona_id}"
