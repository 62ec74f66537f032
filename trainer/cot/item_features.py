"""Item features for persona discovery: what a user's history is summarized over.

- category prefixes (depth 1..`category_depth` of each item's category path) plus the domain,
  when the catalogue has categories;
- level-0 SID prefixes otherwise, labelled by the most distinctive title words under them;
- or any item grouping a caller supplies (`ItemFeatures.from_groups`, e.g. co-occurrence
  clusters for a catalogue with neither text nor categories).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sid_index.codes import format_sid
from sid_index.errors import DataError
from sid_index.records import Catalog


@dataclass(frozen=True, slots=True)
class ItemFeatures:
    """Each item's persona features: up to M feature ids per item, padded with -1."""

    keys: list[str]
    """(F,) stable feature keys ("cat:Office > Paper", "domain:video", "sid:<a_3>", ...)."""
    labels: list[str]
    """(F,) readable feature labels ("Paper", "video", "a_3 (serum, toner)")."""
    ids: np.ndarray
    """(N, M) int64 feature ids of each item, -1 where unused."""

    def __post_init__(self) -> None:
        if len(self.keys) != len(self.labels) or len(set(self.keys)) != len(self.keys):
            raise DataError("item feature keys must be unique and match the labels")
        if self.ids.ndim != 2 or (self.ids.size and int(self.ids.max()) >= len(self.keys)):
            raise DataError(f"item feature ids of shape {self.ids.shape} out of range")

    @property
    def num_features(self) -> int:
        return len(self.keys)

    @classmethod
    def from_catalog(
        cls, catalog: Catalog, *, category_depth: int = 2, use_domains: bool = True,
        max_features: int = 256,
    ) -> ItemFeatures:  # fmt: skip
        """Category prefixes (depth 1..category_depth) and domains of every item."""
        multi_domain = use_domains and len(set(catalog.domains)) > 1
        per_item: list[list[str]] = []
        label_of: dict[str, str] = {}
        for path, domain in zip(catalog.categories, catalog.domains, strict=True):
            keys = []
            for d in range(1, min(category_depth, len(path)) + 1):
                key = "cat:" + " > ".join(path[:d])
                label_of.setdefault(key, path[d - 1])
                keys.append(key)
            # A path that starts with the domain already carries it.
            if multi_domain and not (path and path[0] == domain):
                key = f"domain:{domain}"
                label_of.setdefault(key, domain)
                keys.append(key)
            per_item.append(keys)
        return cls._from_keys(per_item, label_of, max_features)

    @classmethod
    def from_codes(
        cls, codes: np.ndarray, *, titles: Sequence[str] | None = None, levels: int = 1,
        max_features: int = 256,
    ) -> ItemFeatures:  # fmt: skip
        """SID prefixes of `levels` levels, labelled by distinctive title words when given."""
        prefixes = np.asarray(codes)[:, :levels]
        uniq, inverse = np.unique(prefixes, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        words = distinctive_words(titles, inverse, len(uniq)) if titles is not None else None
        keys = [f"sid:{format_sid(u)}" for u in uniq]
        labels = []
        for g, u in enumerate(uniq):
            name = "_".join(map(str, ("a", *u))) if levels == 1 else format_sid(u)
            extra = f" ({', '.join(words[g])})" if words and words[g] else ""
            labels.append(name.replace("<", "").replace(">", " ").strip() + extra)
        return cls.from_groups(inverse, keys, labels, max_features=max_features)

    @classmethod
    def from_groups(
        cls, groups: np.ndarray, keys: Sequence[str], labels: Sequence[str] | None = None,
        *, max_features: int = 256,
    ) -> ItemFeatures:  # fmt: skip
        """One feature per item: its group id (e.g. a co-occurrence cluster); -1 = none."""
        groups = np.asarray(groups, dtype=np.int64)
        labels = list(keys) if labels is None else list(labels)
        count = np.bincount(groups[groups >= 0], minlength=len(keys))
        keep = np.sort(np.argsort(-count, kind="stable")[:max_features])
        remap = np.full(len(keys) + 1, -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        ids = remap[np.where(groups >= 0, groups, len(keys))][:, None]
        return cls([keys[i] for i in keep], [labels[i] for i in keep], ids)

    @classmethod
    def _from_keys(
        cls, per_item: list[list[str]], label_of: dict[str, str], max_features: int
    ) -> ItemFeatures:
        counts = Counter(k for keys in per_item for k in keys)
        n = len(per_item)
        # A feature every item has (a catalogue-wide root category) tells users apart not at all.
        kept = [k for k, c in counts.most_common() if c < n or len(counts) == 1][:max_features]
        kept.sort()
        index = {k: i for i, k in enumerate(kept)}
        width = max((len(keys) for keys in per_item), default=0) or 1
        ids = np.full((n, width), -1, dtype=np.int64)
        for row, keys in enumerate(per_item):
            cols = [index[k] for k in keys if k in index]
            ids[row, : len(cols)] = cols
        return cls(kept, [label_of[k] for k in kept], ids)


def item_features(
    catalog: Catalog,
    codes: np.ndarray | None = None,
    *,
    category_depth: int = 2,
    use_domains: bool = True,
    max_features: int = 256,
) -> ItemFeatures:
    """Category/domain features when the catalogue has categories, else level-0 SID prefixes."""
    if any(catalog.categories):
        feats = ItemFeatures.from_catalog(
            catalog,
            category_depth=category_depth,
            use_domains=use_domains,
            max_features=max_features,
        )
        if feats.num_features:
            return feats
    if codes is None:
        raise DataError("persona features need item categories or Semantic ID codes")
    titles = catalog.titles if any(t.strip() for t in catalog.titles) else None
    return ItemFeatures.from_codes(codes, titles=titles, max_features=max_features)


def distinctive_words(
    titles: Sequence[str], group: np.ndarray, num_groups: int, top: int = 2
) -> list[list[str]]:
    """Per group, the `top` title words most over-represented in it (counted once per title)."""
    by_group: list[Counter[str]] = [Counter() for _ in range(num_groups)]
    total: Counter[str] = Counter()
    for title, g in zip(titles, group.tolist(), strict=True):
        words = {w for w in title.lower().split() if w.isalpha() and len(w) > 2}
        by_group[g].update(words)
        total.update(words)
    n = max(len(titles), 1)
    out = []
    for counts in by_group:
        size = max(sum(counts.values()), 1)
        scored = sorted(
            ((c / size) * np.log(1 + (c / size) / (total[w] / n)), w)
            for w, c in counts.items()
            if c >= 2
        )
        out.append([w for _, w in scored[::-1][:top]])
    return out
