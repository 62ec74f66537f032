"""`SIDStats`: how good a Semantic ID assignment is — collisions, codebook use, build time.

Computed the same way for SIDs built here and for an imported assignment, so the two can be
compared side by side (`reasonrec index stats RELEASE --compare ASSIGNMENT.json`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from sid_index.errors import DataError


@dataclass(frozen=True, slots=True)
class SIDStats:
    """Quality and cost of one SID assignment over a catalogue."""

    source: str
    """Where the codes came from: "rq-kmeans" or "imported:<file name>"."""
    num_items: int
    """Catalogue size N."""
    level_sizes: tuple[int, ...]
    """Codebook size per level, the disambiguation level (if any) last."""
    codes_used: tuple[int, ...]
    """Distinct codes used per level."""
    base_levels: int
    """Levels before disambiguation; collisions below are measured on these."""
    collision_rate: float
    """Fraction of items whose base-level code is shared with at least one other item."""
    colliding_groups: int
    """Number of base-level codes shared by two or more items."""
    max_group_size: int
    """Most items sharing one base-level code (1 when there are no collisions)."""
    prefix_collision_rate: tuple[float, ...]
    """Collision rate of the depth-d prefix, for d = 1 .. num_levels."""
    disambiguation_size: int
    """Codebook size of the appended disambiguation level; 0 when none was appended."""
    unique: bool
    """True when every item's full SID is distinct."""
    embed_seconds: float | None = None
    """Wall time spent embedding item text (None: not embedded here)."""
    quantize_seconds: float | None = None
    """Wall time spent on residual k-means and encoding (None: imported)."""
    notes: tuple[str, ...] = ()
    """Things a reader should know (capped codebooks, items outside the catalogue, ...)."""

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def utilization(self) -> tuple[float, ...]:
        """Distinct codes used / codebook size, per level."""
        return tuple(u / s for u, s in zip(self.codes_used, self.level_sizes, strict=True))

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (tuples become lists); includes the derived utilization."""
        d = asdict(self)
        d["utilization"] = list(self.utilization)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Mapping[str, object], *, where: str = "stats") -> SIDStats:
        """Inverse of `to_dict` (derived keys are ignored); DataError names `where`."""
        names = {f.name for f in fields(cls)}
        missing = names - set(d) - {"embed_seconds", "quantize_seconds", "notes"}
        if missing:
            raise DataError(f"{where}: missing keys {sorted(missing)}")
        kw = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        try:
            return cls(**kw)  # type: ignore[arg-type]
        except TypeError as exc:
            raise DataError(f"{where}: {exc}") from None


def group_sizes(codes: np.ndarray) -> np.ndarray:
    """Size of the group of identical code rows each row belongs to: (N, L) -> (N,) int64."""
    inverse, counts = _groups(codes)
    return counts[inverse]


def _groups(codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(group id per row (N,), rows per group (G,)) for identical code rows."""
    if codes.shape[1] == 0:
        return np.zeros(len(codes), dtype=np.int64), np.array([len(codes)], dtype=np.int64)
    _, inverse, counts = np.unique(_row_keys(codes), return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def _row_keys(codes: np.ndarray) -> np.ndarray:
    """One sortable key per code row: a mixed-radix int64 where it fits, else a byte view."""
    c = np.ascontiguousarray(codes, dtype=np.int64)
    radices = c.max(axis=0) + 1 if len(c) else np.ones(c.shape[1], dtype=np.int64)
    if math.prod(int(r) for r in radices) < 2**62:
        key = np.zeros(len(c), dtype=np.int64)
        for level in range(c.shape[1]):
            key = key * int(radices[level]) + c[:, level]
        return key
    return c.view(np.dtype((np.void, 8 * c.shape[1])))[:, 0]


def compute_stats(
    codes: np.ndarray,
    level_sizes: Sequence[int],
    *,
    base_levels: int,
    source: str,
    embed_seconds: float | None = None,
    quantize_seconds: float | None = None,
    notes: Sequence[str] = (),
) -> SIDStats:
    """Stats of an (N, L) code matrix whose first `base_levels` columns precede disambiguation.

    Args:
        codes: (N, L) int codes, N >= 1.
        level_sizes: codebook size per level (L entries).
        base_levels: how many leading levels the collision figures are measured on.
    """
    n, num_levels = codes.shape
    if n == 0:
        raise DataError("cannot compute SID stats of an empty catalogue")
    if len(level_sizes) != num_levels or not 1 <= base_levels <= num_levels:
        raise DataError(f"{codes.shape=} does not fit {level_sizes=} and {base_levels=}")
    prefix_rates = tuple(
        float(np.mean(group_sizes(codes[:, :depth]) > 1)) for depth in range(1, num_levels + 1)
    )
    inverse, counts = _groups(codes[:, :base_levels])
    shared = counts[inverse] > 1
    used = tuple(len(np.unique(codes[:, level])) for level in range(num_levels))
    return SIDStats(
        source=source,
        num_items=n,
        level_sizes=tuple(int(s) for s in level_sizes),
        codes_used=used,
        base_levels=base_levels,
        collision_rate=float(np.mean(shared)),
        colliding_groups=int(np.sum(counts > 1)),
        max_group_size=int(counts.max()),
        prefix_collision_rate=prefix_rates,
        disambiguation_size=int(level_sizes[-1]) if base_levels < num_levels else 0,
        unique=bool(group_sizes(codes).max() == 1),
        embed_seconds=embed_seconds,
        quantize_seconds=quantize_seconds,
        notes=tuple(notes),
    )


def format_stats(columns: Sequence[SIDStats]) -> str:
    """Render one or more stats side by side as a plain-text table (one column each)."""

    def seconds(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    def pct(v: float) -> str:
        return f"{100 * v:.2f}%"

    rows: list[tuple[str, list[str]]] = [
        ("source", [s.source for s in columns]),
        ("items", [str(s.num_items) for s in columns]),
        ("levels", [str(s.num_levels) for s in columns]),
        ("level sizes", ["x".join(map(str, s.level_sizes)) for s in columns]),
        ("codes used", ["/".join(map(str, s.codes_used)) for s in columns]),
        ("utilization", ["/".join(pct(u) for u in s.utilization) for s in columns]),
        ("base levels", [str(s.base_levels) for s in columns]),
        ("collision rate", [pct(s.collision_rate) for s in columns]),
        ("colliding groups", [str(s.colliding_groups) for s in columns]),
        ("max group size", [str(s.max_group_size) for s in columns]),
        (
            "prefix collisions",
            ["/".join(pct(r) for r in s.prefix_collision_rate) for s in columns],
        ),
        ("disambiguation size", [str(s.disambiguation_size) for s in columns]),
        ("unique SIDs", ["yes" if s.unique else "NO" for s in columns]),
        ("embed seconds", [seconds(s.embed_seconds) for s in columns]),
        ("quantize seconds", [seconds(s.quantize_seconds) for s in columns]),
    ]
    width0 = max(len(name) for name, _ in rows)
    widths = [max(len(vals[i]) for _, vals in rows) for i in range(len(columns))]
    lines = [
        "  ".join(
            [name.ljust(width0), *(v.ljust(w) for v, w in zip(vals, widths, strict=True))]
        ).rstrip()
        for name, vals in rows
    ]
    for s in columns:
        lines.extend(f"note ({s.source}): {note}" for note in s.notes)
    return "\n".join(lines)
