"""`SIDTrie`: an immutable prefix trie over a catalogue's Semantic IDs, in flat arrays.

Nodes are numbered depth-major: the root is node 0, then every length-1 prefix, then every
length-2 prefix, ..., then the leaves (full SIDs). Within a depth, nodes follow the
lexicographic order of their prefixes, so

- the children of any internal node are a contiguous id range `child_ptr[n] .. child_ptr[n+1]`
  (CSR, globally monotone because depth `d+1` follows depth `d`), sorted by code;
- the leaves under any node are a contiguous range of the sorted catalogue rows, which makes
  per-request exclusions a matter of counting (see `sid_index.exclusion.Exclusion`).

Following STATIC (arXiv 2602.22647), the first levels, where fan-out is wide, also get a dense
`(nodes_at_depth, level_size)` transition table (`-1` = no child), so their masks are one row
gather; deeper levels gather only the (few) valid children from the CSR arrays. Every query is
a tensor op over the whole batch; the only Python loops run over levels.

All states are int64 node ids; `DEAD` (-1) is the sentinel for "no such prefix".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from sid_index.codes import SemanticIDs
from sid_index.errors import DataError
from sid_index.exclusion import Exclusion

__all__ = ["DEAD", "DEFAULT_DENSE_ENTRIES", "Children", "Exclusion", "SIDTrie"]

DEAD = -1
"""State of a prefix that names no node (an invalid transition, or a retired beam)."""

DEFAULT_DENSE_ENTRIES = 1 << 22
"""Levels whose dense table would hold at most this many entries get one (16 MiB as int32)."""


class Children(NamedTuple):
    """The children of a batch of states at one level, padded to a fixed width W."""

    codes: torch.Tensor
    """(B, W) int64 code of each child (arbitrary where not `valid`)."""
    nodes: torch.Tensor
    """(B, W) int64 child node id, `DEAD` where not `valid`."""
    valid: torch.Tensor
    """(B, W) bool: the slot holds a child (that is not excluded for its request)."""


@dataclass(frozen=True, slots=True, eq=False)
class SIDTrie:
    """A prefix trie over unique Semantic IDs. Build with `SIDTrie.build`."""

    level_sizes: tuple[int, ...]
    """Codebook size per level."""
    depth_offsets: tuple[int, ...]
    """(L+2,) id of the first node at each depth 0..L, then `num_nodes`."""
    max_degree: tuple[int, ...]
    """(L,) the largest number of children of a node at depth 0..L-1."""
    node_code: torch.Tensor
    """(num_nodes,) int32 code on the edge into each node (-1 for the root)."""
    child_ptr: torch.Tensor
    """(num_internal+1,) int32/int64: children of internal node n are child_ptr[n]..[n+1]-1."""
    leaf_start: torch.Tensor
    """(num_internal,) first sorted catalogue row (leaf rank) under each internal node."""
    leaf_to_item: torch.Tensor
    """(N,) catalogue index of the leaf of rank r (leaf node id = depth_offsets[L] + r)."""
    item_to_leaf: torch.Tensor
    """(N,) leaf rank of each catalogue item (inverse of `leaf_to_item`)."""
    dense: tuple[torch.Tensor | None, ...]
    """Per depth 0..L-1: (nodes at depth, level size) child id or -1, or None (CSR only)."""

    @classmethod
    def build(cls, sids: SemanticIDs, dense_entries: int = DEFAULT_DENSE_ENTRIES) -> SIDTrie:
        """Build the trie in O(N·L) vectorised numpy (one sort of the rows).

        Args:
            sids: the catalogue's codes; row i is item i.
            dense_entries: give a level a dense transition table when it has at most this
                many entries (nodes at that depth × level size); 0 disables dense tables.

        Raises DataError when the catalogue is empty or two items share a SID."""
        codes = np.ascontiguousarray(sids.codes)
        n, num_levels = codes.shape
        if n == 0:
            raise DataError("cannot build a SID trie over an empty catalogue")
        order = _sort_rows(codes, sids.level_sizes)  # (N,) lexicographic order of the rows
        rows = codes[order]  # (N, L) sorted SIDs
        if n > 1:
            diff = rows[1:] != rows[:-1]  # (N-1, L)
            same = ~diff.any(axis=1)
            if same.any():
                i = int(np.flatnonzero(same)[0])
                a, b = sorted((int(order[i]), int(order[i + 1])))
                raise DataError(
                    f"items {a} and {b} share the SID {sids.sid_text(a)}; "
                    f"{int(same.sum())} duplicate SID(s) in the catalogue"
                )
            first_diff = diff.argmax(axis=1)  # (N-1,) first level where row i+1 leaves row i
            del diff
        else:
            first_diff = np.zeros(0, dtype=np.int64)

        # starts[d]: sorted row where each depth-d node's leaf range begins. A row opens a new
        # depth-d prefix iff it differs from the previous row somewhere in the first d levels.
        starts = [np.zeros(1, dtype=np.int64)]
        for d in range(1, num_levels + 1):
            opens = np.concatenate(([True], first_diff < d))
            starts.append(np.flatnonzero(opens))
        counts = [len(s) for s in starts]
        offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)
        num_nodes = int(offsets[-1])
        num_internal = int(offsets[num_levels])
        idx = np.int32 if num_nodes < 2**31 - 1 else np.int64

        node_code = np.empty(num_nodes, dtype=np.int32)
        node_code[0] = -1
        child_ptr = np.empty(num_internal + 1, dtype=idx)
        child_ptr[-1] = num_nodes
        leaf_start = np.empty(num_internal, dtype=idx)
        max_degree: list[int] = []
        dense: list[torch.Tensor | None] = []
        for d in range(num_levels):
            lo, hi = offsets[d], offsets[d + 1]
            leaf_start[lo:hi] = starts[d]
            node_code[offsets[d + 1] : offsets[d + 2]] = rows[starts[d + 1], d]
            # A depth-d prefix starts where its first child starts: exact match in starts[d+1].
            first_child = np.searchsorted(starts[d + 1], starts[d])  # (count_d,)
            child_ptr[lo:hi] = offsets[d + 1] + first_child
            degree = np.diff(np.append(first_child, counts[d + 1]))  # (count_d,)
            max_degree.append(int(degree.max()))
            size = sids.level_sizes[d]
            if counts[d] * size <= dense_entries:
                table = np.full((counts[d], size), -1, dtype=idx)
                parent = np.repeat(np.arange(counts[d]), degree)  # (count_{d+1},)
                table[parent, node_code[offsets[d + 1] : offsets[d + 2]]] = np.arange(
                    offsets[d + 1], offsets[d + 2], dtype=idx
                )
                dense.append(torch.from_numpy(table))
            else:
                dense.append(None)
        item_leaf = np.empty(n, dtype=idx)
        item_leaf[order] = np.arange(n, dtype=idx)
        return cls(
            level_sizes=tuple(int(s) for s in sids.level_sizes),
            depth_offsets=tuple(int(o) for o in offsets),
            max_degree=tuple(max_degree),
            node_code=torch.from_numpy(node_code),
            child_ptr=torch.from_numpy(child_ptr),
            leaf_start=torch.from_numpy(leaf_start),
            leaf_to_item=torch.from_numpy(order.astype(idx)),
            item_to_leaf=torch.from_numpy(item_leaf),
            dense=tuple(dense),
        )

    # ---- sizes -------------------------------------------------------------------------------

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def num_items(self) -> int:
        return int(self.leaf_to_item.shape[0])

    @property
    def num_nodes(self) -> int:
        return self.depth_offsets[-1]

    @property
    def num_internal(self) -> int:
        return self.depth_offsets[self.num_levels]

    @property
    def nbytes(self) -> int:
        """Bytes held by the trie's arrays (dense tables included)."""
        arrays = [
            self.node_code,
            self.child_ptr,
            self.leaf_start,
            self.leaf_to_item,
            self.item_to_leaf,
        ]
        arrays += [t for t in self.dense if t is not None]
        return sum(t.numel() * t.element_size() for t in arrays)

    # ---- transitions -------------------------------------------------------------------------

    def root_state(self, batch: int) -> torch.Tensor:
        """(batch,) int64 root states."""
        return torch.zeros(batch, dtype=torch.int64)

    def advance(self, states: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """Follow one edge per row: (B,) states × (B,) codes → (B,) next states (`DEAD` when the
        state is dead or a leaf, or has no child with that code). States may mix depths."""
        states = states.long()
        codes = codes.long()
        internal = (states >= 0) & (states < self.num_internal)
        s = states.clamp(0, self.num_internal - 1)
        lo = self.child_ptr[s].long()
        end = self.child_ptr[s + 1].long()
        hi = end.clone()
        last = self.num_nodes - 1
        # Vectorised lower_bound over each node's sorted child codes: a fixed number of halvings.
        for _ in range(max(self.max_degree).bit_length()):
            open_ = lo < hi
            mid = (lo + hi) // 2
            go_right = self.node_code[mid.clamp(max=last)].long() < codes
            lo = torch.where(open_ & go_right, mid + 1, lo)
            hi = torch.where(open_ & ~go_right, mid, hi)
        found = internal & (lo < end) & (self.node_code[lo.clamp(max=last)].long() == codes)
        return torch.where(found, lo, torch.full_like(lo, DEAD))

    def children(
        self,
        states: torch.Tensor,
        level: int,
        exclusion: Exclusion | None = None,
        request: torch.Tensor | None = None,
    ) -> Children:
        """The children of (B,) depth-`level` states, padded to a fixed width W.

        W is `level_sizes[level]` on levels with a dense table (slot = code) and
        `max_degree[level]` elsewhere (slots in code order). With `exclusion`, children under
        which every item is excluded for the state's request (`request` (B,), default
        0..B-1) are not valid."""
        self._check_level(level)
        states = states.long()
        lo, hi = self.depth_offsets[level], self.depth_offsets[level + 1]
        alive = (states >= lo) & (states < hi)
        table = self.dense[level]
        if table is not None:
            nodes = table.index_select(0, (states - lo).clamp(0, hi - lo - 1)).long()  # (B, V)
            valid = (nodes >= 0) & alive[:, None]
            codes = torch.arange(self.level_sizes[level]).expand_as(nodes)
        else:
            s = states.clamp(lo, hi - 1)
            first = self.child_ptr[s].long()  # (B,)
            degree = self.child_ptr[s + 1].long() - first
            slot = torch.arange(self.max_degree[level])  # (W,)
            valid = (slot[None, :] < degree[:, None]) & alive[:, None]  # (B, W)
            nodes = first[:, None] + slot[None, :]
            codes = self.node_code[nodes.clamp(max=self.num_nodes - 1)].long()
        if exclusion is not None:
            rows = _request_rows(request, states.shape[0])
            exclusion.clear_dead_children(valid, states, rows, level, by_code=table is not None)
        nodes = torch.where(valid, nodes, torch.full_like(nodes, DEAD))
        return Children(codes, nodes, valid)

    def allowed_mask(
        self,
        states: torch.Tensor,
        level: int,
        exclusion: Exclusion | None = None,
        request: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B, level_sizes[level]) bool: codes that extend each depth-`level` state towards an
        item (that is not excluded for the state's request)."""
        kids = self.children(states, level, exclusion, request)
        if self.dense[level] is not None:
            return kids.valid
        size = self.level_sizes[level]
        # Invalid slots write into a spare column that is dropped, so they never touch a code.
        mask = torch.zeros(states.shape[0], size + 1, dtype=torch.bool)
        mask.scatter_(1, torch.where(kids.valid, kids.codes, size), True)
        return mask[:, :size]

    def allowed_mask_for_prefixes(
        self, prefixes: torch.Tensor, exclusion: Exclusion | None = None
    ) -> torch.Tensor:
        """(B, level_sizes[t]) bool mask of the next code after each (B, t) code prefix; an
        invalid prefix allows nothing. With `exclusion`, row b is request b."""
        batch, t = prefixes.shape
        if t >= self.num_levels:
            raise DataError(f"a prefix of length {t} has no next level ({self.num_levels} levels)")
        states = self.root_state(batch)
        for level in range(t):
            states = self.advance(states, prefixes[:, level])
        return self.allowed_mask(states, t, exclusion)

    # ---- leaves and paths --------------------------------------------------------------------

    def leaf_item(self, states: torch.Tensor) -> torch.Tensor:
        """(B,) catalogue index of each leaf state, -1 for non-leaves and dead states."""
        rank = states.long() - self.depth_offsets[self.num_levels]
        is_leaf = (rank >= 0) & (rank < self.num_items)
        item = self.leaf_to_item[rank.clamp(0, self.num_items - 1)].long()
        return torch.where(is_leaf, item, torch.full_like(item, -1))

    def item_path(self, items: torch.Tensor) -> torch.Tensor:
        """(M, L+1) node ids from the root to each item's leaf."""
        items = self._check_items(items)
        rank = self.item_to_leaf[items].long()  # (M,)
        path = [torch.zeros_like(rank)]
        for d in range(1, self.num_levels):
            lo, hi = self.depth_offsets[d], self.depth_offsets[d + 1]
            # The depth-d ancestor is the last depth-d node whose leaf range starts <= rank.
            pos = torch.searchsorted(
                self.leaf_start[lo:hi], rank.to(self.leaf_start.dtype), right=True
            )
            path.append(lo + pos.long() - 1)
        path.append(self.depth_offsets[self.num_levels] + rank)
        return torch.stack(path, dim=1)

    def sid_of(self, items: torch.Tensor) -> torch.Tensor:
        """(M, L) int64 codes of each item, read back from the trie."""
        return self.node_code[self.item_path(items)[:, 1:]].long()

    # ---- checks ------------------------------------------------------------------------------

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.num_levels:
            raise DataError(f"{level=} is not a decoding level of a {self.num_levels}-level trie")

    def _check_items(self, items: torch.Tensor | np.ndarray | Sequence[int]) -> torch.Tensor:
        items = torch.as_tensor(items, dtype=torch.int64).reshape(-1)
        if items.numel() and (int(items.min()) < 0 or int(items.max()) >= self.num_items):
            bad = items[(items < 0) | (items >= self.num_items)][0]
            raise DataError(f"item index {int(bad)} is outside the catalogue of {self.num_items}")
        return items


def _request_rows(request: torch.Tensor | None, batch: int) -> torch.Tensor:
    return torch.arange(batch) if request is None else request.long()


def _sort_rows(codes: np.ndarray, level_sizes: Sequence[int]) -> np.ndarray:
    """(N,) int64 permutation sorting the rows of `codes` lexicographically."""
    bits = [max(1, (int(s) - 1).bit_length()) for s in level_sizes]
    if sum(bits) <= 63:
        # Pack each row into one int64 key: one argsort instead of an L-key lexsort.
        key = np.zeros(len(codes), dtype=np.int64)
        for lvl, b in enumerate(bits):
            key <<= b
            key |= codes[:, lvl].astype(np.int64)
        return np.argsort(key, kind="stable").astype(np.int64)
    return np.lexsort(codes.T[::-1]).astype(np.int64)
