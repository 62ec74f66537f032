"""Typed records for the item catalogue and user interaction sequences.

Both are columnar so that a 10^7-item catalogue or a 10^6-user log fits in memory without one
Python object per row: `Catalog` keeps parallel lists/arrays, `Interactions` keeps CSR arrays.
`Item` and `UserSequence` are the row views handed across boundaries.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sid_index.errors import DataError


@dataclass(frozen=True, slots=True)
class Item:
    """One catalogue item."""

    item_id: str
    """Stable external id (a string, whatever the source uses)."""
    title: str
    """Short human-readable name."""
    text: str
    """Text that is embedded to build Semantic IDs (title + description + brand + ...)."""
    category: tuple[str, ...] = ()
    """Category path, most general first (e.g. ("Office Products", "Paper"))."""
    domain: str = "default"
    """Business domain (e.g. video, ecommerce, ads, live); RL specializes per domain."""
    attributes: Mapping[str, str] = field(default_factory=dict)
    """Free-form extra attributes (brand, price bucket, ...)."""


@dataclass(frozen=True, slots=True)
class Catalog:
    """An immutable, columnar item catalogue. Row `i` is item index `i` everywhere else
    (SID codes, trie leaves, interaction arrays)."""

    item_ids: list[str]
    titles: list[str]
    texts: list[str]
    categories: list[tuple[str, ...]]
    domains: list[str]
    attributes: list[Mapping[str, str]] | None = None
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.item_ids)
        for name in ("titles", "texts", "categories", "domains"):
            if len(getattr(self, name)) != n:
                raise DataError(
                    f"Catalog column {name!r} has {len(getattr(self, name))} rows, item_ids has {n}"
                )
        if self.attributes is not None and len(self.attributes) != n:
            raise DataError(
                f"Catalog column 'attributes' has {len(self.attributes)} rows, item_ids has {n}"
            )
        index = {iid: i for i, iid in enumerate(self.item_ids)}
        if len(index) != n:
            seen: set[str] = set()
            dup = next(i for i in self.item_ids if i in seen or seen.add(i))  # type: ignore[func-returns-value]
            raise DataError(f"duplicate item id {dup!r} in catalogue")
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_items(cls, items: Sequence[Item]) -> Catalog:
        """Build a catalogue from row records (raises DataError on duplicate ids)."""
        return cls(
            item_ids=[it.item_id for it in items],
            titles=[it.title for it in items],
            texts=[it.text for it in items],
            categories=[tuple(it.category) for it in items],
            domains=[it.domain for it in items],
            attributes=[dict(it.attributes) for it in items],
        )

    def __len__(self) -> int:
        return len(self.item_ids)

    def __iter__(self) -> Iterator[Item]:
        return (self[i] for i in range(len(self)))

    def __getitem__(self, i: int) -> Item:
        return Item(
            item_id=self.item_ids[i],
            title=self.titles[i],
            text=self.texts[i],
            category=self.categories[i],
            domain=self.domains[i],
            attributes=self.attributes[i] if self.attributes is not None else {},
        )

    def index_of(self, item_id: str) -> int:
        """Row index of an external item id (raises DataError for an unknown id)."""
        try:
            return self._index[item_id]
        except KeyError:
            raise DataError(f"unknown item id {item_id!r}") from None

    def get_index(self, item_id: str) -> int | None:
        """Row index of an external item id, or None."""
        return self._index.get(item_id)

    def domain_names(self) -> list[str]:
        """Distinct domains, sorted."""
        return sorted(set(self.domains))


@dataclass(frozen=True, slots=True)
class UserSequence:
    """One user's interactions in time order, as catalogue row indices."""

    user_id: str
    items: np.ndarray
    """(T,) int64 catalogue indices, oldest first."""
    timestamps: np.ndarray | None = None
    """(T,) int64 unix seconds, or None where the source has no times."""


@dataclass(frozen=True, slots=True)
class Interactions:
    """All users' sequences in CSR layout: user `u` owns `items[indptr[u]:indptr[u+1]]`."""

    user_ids: list[str]
    indptr: np.ndarray
    """(U+1,) int64 offsets."""
    items: np.ndarray
    """(nnz,) int64 catalogue indices."""
    timestamps: np.ndarray | None = None
    """(nnz,) int64 unix seconds, or None."""

    def __post_init__(self) -> None:
        if self.indptr.shape != (len(self.user_ids) + 1,):
            raise DataError(
                f"indptr has shape {self.indptr.shape}, expected ({len(self.user_ids) + 1},)"
            )
        if int(self.indptr[-1]) != len(self.items):
            raise DataError(f"indptr[-1]={int(self.indptr[-1])} != len(items)={len(self.items)}")
        if self.timestamps is not None and len(self.timestamps) != len(self.items):
            raise DataError("timestamps and items have different lengths")

    @classmethod
    def from_sequences(cls, seqs: Sequence[UserSequence]) -> Interactions:
        """Pack row records into CSR arrays."""
        lengths = np.fromiter((len(s.items) for s in seqs), dtype=np.int64, count=len(seqs))
        indptr = np.zeros(len(seqs) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        items = (
            np.concatenate([np.asarray(s.items, dtype=np.int64) for s in seqs])
            if seqs
            else np.zeros(0, dtype=np.int64)
        )
        ts = None
        if seqs and all(s.timestamps is not None for s in seqs):
            ts = np.concatenate([np.asarray(s.timestamps, dtype=np.int64) for s in seqs])
        return cls([s.user_id for s in seqs], indptr, items, ts)

    def __len__(self) -> int:
        return len(self.user_ids)

    @property
    def num_interactions(self) -> int:
        return len(self.items)

    def sequence(self, u: int) -> UserSequence:
        """User `u`'s sequence (views into the CSR arrays, no copy)."""
        lo, hi = int(self.indptr[u]), int(self.indptr[u + 1])
        ts = self.timestamps[lo:hi] if self.timestamps is not None else None
        return UserSequence(self.user_ids[u], self.items[lo:hi], ts)

    def __iter__(self) -> Iterator[UserSequence]:
        return (self.sequence(u) for u in range(len(self)))

    def lengths(self) -> np.ndarray:
        """(U,) sequence lengths."""
        return np.diff(self.indptr)


@dataclass(frozen=True, slots=True)
class Dataset:
    """A catalogue plus the interactions over it; `name` identifies it in releases and reports."""

    name: str
    catalog: Catalog
    interactions: Interactions
    personas: np.ndarray | None = None
    """(U,) ground-truth persona id per user, only for synthetic data (planted structure)."""
    persona_names: list[str] | None = None
    """Readable names of the planted personas, indexed by persona id."""

    def __post_init__(self) -> None:
        if len(self.catalog) == 0:
            raise DataError(f"dataset {self.name!r}: empty catalogue")
        if self.interactions.num_interactions and (
            int(self.interactions.items.max()) >= len(self.catalog)
            or int(self.interactions.items.min()) < 0
        ):
            raise DataError(
                f"dataset {self.name!r}: interactions reference items outside the "
                f"catalogue of {len(self.catalog)}"
            )
