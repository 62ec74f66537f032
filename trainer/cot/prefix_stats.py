"""Statistics over SID prefixes that ground the CoT teachers.

- `PrefixLabels`: a short readable label for every level-0 and level-0+1 prefix of the
  catalogue, from the most common category (leaf) of the items under it ("Pens & Refills",
  or "Pens & Refills / Markers" when two share it), else from the most distinctive title
  words under it ("serum & toner"), else the prefix spelled out ("a_12 b_3").
- `PrefixTransitions`: P(next item's level-0 prefix | last item's level-0 prefix), counted
  over consecutive items of the training sequences (complementary categories: "after a desk
  lamp, bulbs").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from sid_index.errors import DataError
from sid_index.records import Catalog
from trainer.cot.item_features import distinctive_words

_SECOND_LABEL_SHARE = 0.3  # a second category joins the label when it has this share
_MAX_DENSE_PREFIXES = 4096  # level-0 codebooks up to this size get a dense transition table


class PrefixLabels:
    """Readable labels of level-0 and level-0+1 SID prefixes."""

    def __init__(self, labels: dict[tuple[int, ...], str]) -> None:
        self._labels = labels

    def __len__(self) -> int:
        return len(self._labels)

    def label(self, prefix: Sequence[int]) -> str:
        """Label of a prefix; a deeper prefix falls back to its level-0 label."""
        prefix = tuple(int(c) for c in prefix)
        for n in range(len(prefix), 0, -1):
            if prefix[:n] in self._labels:
                return self._labels[prefix[:n]]
        return " ".join(f"{chr(97 + i)}_{c}" for i, c in enumerate(prefix))

    @classmethod
    def build(cls, catalog: Catalog, codes: np.ndarray) -> PrefixLabels:
        """Labels for every prefix present in `codes` ((N, L) SID codes of the catalogue)."""
        codes = np.asarray(codes, dtype=np.int64)
        if len(codes) != len(catalog):
            raise DataError(f"{len(codes)} SIDs for a catalogue of {len(catalog)} items")
        leaf = [path[-1] if path else "" for path in catalog.categories]
        has_cats = any(leaf)
        has_titles = any(t.strip() for t in catalog.titles)
        labels: dict[tuple[int, ...], str] = {}
        for levels in range(1, min(2, codes.shape[1] - 1) + 1):
            uniq, group = np.unique(codes[:, :levels], axis=0, return_inverse=True)
            group = group.reshape(-1)
            if has_cats:
                texts = _category_labels(leaf, group, len(uniq))
            elif has_titles:
                texts = [" & ".join(w) for w in distinctive_words(catalog.titles, group, len(uniq))]
            else:
                texts = [""] * len(uniq)
            for g, prefix in enumerate(uniq.tolist()):
                spelled = " ".join(f"{chr(97 + i)}_{c}" for i, c in enumerate(prefix))
                labels[tuple(prefix)] = texts[g] or spelled
        return cls(labels)


def _category_labels(leaf: list[str], group: np.ndarray, num_groups: int) -> list[str]:
    """Per group, its most common category leaf (and the runner-up when it is common too)."""
    names, cat = np.unique(np.asarray(leaf, dtype=object), return_inverse=True)
    cat = cat.reshape(-1)
    C = len(names)
    pair, count = np.unique(group * C + cat, return_counts=True)
    g, c = pair // C, pair % C
    order = np.lexsort((-count, g))  # by group, most common category first
    g, c, count = g[order], c[order], count[order]
    starts = np.searchsorted(g, np.arange(num_groups))
    ends = np.searchsorted(g, np.arange(num_groups), side="right")
    out = []
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        parts = [str(names[c[s]])] if e > s and names[c[s]] else []
        total = count[s:e].sum()
        if e - s > 1 and names[c[s + 1]] and count[s + 1] >= _SECOND_LABEL_SHARE * total:
            parts.append(str(names[c[s + 1]]))
        out.append(" / ".join(parts))
    return out


@dataclass(frozen=True, slots=True)
class PrefixTransitions:
    """P(next level-0 prefix | last level-0 prefix) over the training sequences."""

    probs: np.ndarray
    """(K0, K0) float32 rows summing to 1 (a uniform row for a prefix never seen as a source)."""

    @classmethod
    def build(
        cls, indptr: np.ndarray, items: np.ndarray, codes: np.ndarray, smoothing: float = 0.1
    ) -> PrefixTransitions:
        """Count consecutive pairs in CSR sequences (`items[indptr[u]:indptr[u+1]]` per user).

        Args:
            codes: (N, L) SID codes of the catalogue.
            smoothing: pseudo-count added to every cell.
        """
        k0 = _dense_level0_size(codes)
        items = np.asarray(items, dtype=np.int64)
        c0 = np.asarray(codes)[items, 0].astype(np.int64)  # (nnz,)
        # A pair (i, i+1) is inside one user unless i+1 starts a new sequence.
        same = np.ones(max(len(items) - 1, 0), dtype=bool)
        starts = np.asarray(indptr, dtype=np.int64)[1:-1]
        same[starts[(starts > 0) & (starts < len(items))] - 1] = False
        cell = c0[:-1][same] * k0 + c0[1:][same]
        counts = np.bincount(cell, minlength=k0 * k0).reshape(k0, k0) + smoothing
        return cls((counts / counts.sum(axis=1, keepdims=True)).astype(np.float32))

    def prob(self, last: int, nxt: int) -> float:
        """P(next level-0 code = nxt | last level-0 code = last); 0 for unknown codes."""
        k0 = len(self.probs)
        return float(self.probs[last, nxt]) if 0 <= last < k0 and 0 <= nxt < k0 else 0.0

    def row(self, last: int) -> np.ndarray:
        """(K0,) next-prefix distribution after level-0 code `last` (uniform if unknown)."""
        k0 = len(self.probs)
        return self.probs[last] if 0 <= last < k0 else np.full(k0, 1.0 / k0, dtype=np.float32)


def _dense_level0_size(codes: np.ndarray) -> int:
    """Level-0 codebook size of `codes` (N, L); DataError when too large for a dense table."""
    k0 = int(np.asarray(codes)[:, 0].max(initial=0)) + 1
    if k0 > _MAX_DENSE_PREFIXES:
        raise DataError(f"{k0} level-0 codes: too many for a dense prefix table")
    return k0


@dataclass(frozen=True, slots=True)
class PersonaPrefixes:
    """P(level-0 prefix | persona) over the training sequences of users with a persona label:
    where each persona's interests lie, including the ones a user has not shown yet."""

    probs: np.ndarray
    """(P, K0) float32 rows summing to 1 (uniform for a persona with no labelled user)."""

    @classmethod
    def build(
        cls,
        indptr: np.ndarray,
        items: np.ndarray,
        codes: np.ndarray,
        personas: np.ndarray,
        num_personas: int,
        smoothing: float = 0.1,
    ) -> PersonaPrefixes:
        """Count level-0 prefixes per persona.

        Args:
            indptr, items: CSR sequences, one row per user.
            codes: (N, L) SID codes of the catalogue.
            personas: (U,) persona label of each row (negative: unlabelled, not counted).
            smoothing: pseudo-count added to every cell.
        """
        codes = np.asarray(codes)
        k0 = _dense_level0_size(codes)
        personas = np.asarray(personas, dtype=np.int64)
        if personas.shape != (len(indptr) - 1,):
            raise DataError(f"{personas.shape=} does not match {len(indptr) - 1} sequences")
        if len(personas) and int(personas.max()) >= num_personas:
            raise DataError(f"persona labels reach {int(personas.max())} >= {num_personas=}")
        owner = np.repeat(personas, np.diff(np.asarray(indptr, dtype=np.int64)))  # (nnz,)
        keep = owner >= 0
        c0 = codes[np.asarray(items, dtype=np.int64)[keep], 0].astype(np.int64)
        cell = owner[keep] * k0 + c0
        counts = np.bincount(cell, minlength=num_personas * k0).reshape(num_personas, k0)
        counts = counts + smoothing
        return cls((counts / counts.sum(axis=1, keepdims=True)).astype(np.float32))

    def expansion(self, persona: int, held: set[int]) -> tuple[int, float] | None:
        """The persona's most likely level-0 prefix outside `held` and its probability
        (None for an unknown persona or when every prefix is held)."""
        if not 0 <= persona < len(self.probs):
            return None
        row = self.probs[persona]
        for code in np.argsort(-row, kind="stable").tolist():
            if code not in held:
                return int(code), float(row[code])
        return None
