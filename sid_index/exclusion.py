"""`Exclusion`: per-request excluded items (seen, blocklisted, outside a domain) as dead nodes
of an `SIDTrie`.

The trie's leaves under any node are a contiguous range of its sorted catalogue rows, so a node
is dead for a request exactly when the request excludes as many items under it as the range
holds — counting, no trie rebuild. Decoders ask `SIDTrie.children(..., exclusion)` for live
children only, so a beam never holds a prefix that cannot reach an allowed item.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from sid_index.trie import SIDTrie


@dataclass(frozen=True, slots=True, eq=False)
class Exclusion:
    """Per-request excluded items (already seen, blocklisted, ...) as dead trie nodes.

    A node is dead for request r when every item under it is excluded for r, so a decoder that
    only follows live children only ever holds prefixes that still lead to an allowed item.
    Built once per batch in O(M·L log M) for M excluded (request, item) pairs; the trie itself
    is never rebuilt. Decoding looks dead children up by (request, parent), so its cost grows
    with the beams and the (few) dead nodes, not with the children it checks."""

    num_requests: int
    """Number of requests (rows) the exclusion was built for."""
    num_nodes: int
    """Node count of the trie it belongs to."""
    dead_keys: torch.Tensor
    """(D,) sorted int64 keys `request * num_nodes + node` of every dead node."""
    parent_keys: tuple[torch.Tensor, ...]
    """Per level l (dead nodes at depth l+1): (D_l,) sorted `request * num_nodes + parent`."""
    dead_codes: tuple[torch.Tensor, ...]
    """Per level l: (D_l,) code of each dead node (its slot in a dense level's children)."""
    dead_ranks: tuple[torch.Tensor, ...]
    """Per level l: (D_l,) rank among its siblings (its slot in a CSR level's children)."""

    @classmethod
    def build(
        cls, trie: SIDTrie, item_sets: Sequence[Sequence[int] | np.ndarray | torch.Tensor]
    ) -> Exclusion:
        """One set of excluded catalogue indices per request (duplicates are fine).

        Raises DataError for an index outside the catalogue."""
        sizes = [len(s) for s in item_sets]
        items = trie._check_items(
            np.concatenate([np.asarray(s, dtype=np.int64).reshape(-1) for s in item_sets])
            if item_sets
            else np.zeros(0, dtype=np.int64)
        ).numpy()
        request = np.repeat(np.arange(len(item_sets), dtype=np.int64), sizes)
        pairs = np.unique(request * trie.num_items + items)  # distinct (request, item)
        request, items = np.divmod(pairs, trie.num_items)
        path = trie.item_path(torch.from_numpy(items)).numpy()  # (M, L+1)
        leaf_start = trie.leaf_start.numpy()
        keys = [request * trie.num_nodes + path[:, -1]]  # every excluded leaf is dead
        for d in range(trie.num_levels):
            node_keys, hits = np.unique(request * trie.num_nodes + path[:, d], return_counts=True)
            node = node_keys % trie.num_nodes
            # Leaves under a depth-d node: its leaf range ends where the next depth-d node's
            # begins (or at N for the last one).
            nxt = node + 1
            end = np.where(
                nxt < trie.depth_offsets[d + 1],
                leaf_start[np.minimum(nxt, trie.num_internal - 1)],
                trie.num_items,
            )
            keys.append(node_keys[hits == end - leaf_start[node]])
        return cls.from_dead_keys(trie, len(item_sets), np.sort(np.concatenate(keys)))

    @classmethod
    def from_dead_keys(cls, trie: SIDTrie, num_requests: int, dead: np.ndarray) -> Exclusion:
        """An exclusion from sorted keys `request * trie.num_nodes + node` of dead nodes (e.g.
        a domain restriction computed once per domain set); a listed node's subtree is dead."""
        req, node = np.divmod(dead, trie.num_nodes)
        child_ptr, node_code = trie.child_ptr.numpy(), trie.node_code.numpy()
        parent_keys, codes, ranks = [], [], []
        for d in range(1, trie.num_levels + 1):
            at = (node >= trie.depth_offsets[d]) & (node < trie.depth_offsets[d + 1])
            r, x = req[at], node[at]
            lo, hi = trie.depth_offsets[d - 1], trie.depth_offsets[d]
            parent = lo + np.searchsorted(child_ptr[lo:hi], x, side="right") - 1
            # Sorted by (request, node) and parents grow with node ids: keys stay sorted.
            parent_keys.append(torch.from_numpy(r * trie.num_nodes + parent))
            codes.append(torch.from_numpy(node_code[x].astype(np.int64)))
            ranks.append(torch.from_numpy(x - child_ptr[parent].astype(np.int64)))
        return cls(
            num_requests,
            trie.num_nodes,
            torch.from_numpy(dead),
            tuple(parent_keys),
            tuple(codes),
            tuple(ranks),
        )

    def clear_dead_children(
        self,
        valid: torch.Tensor,
        states: torch.Tensor,
        request: torch.Tensor,
        depth: int,
        by_code: bool,
    ) -> None:
        """Set `valid[b, slot]` False for every dead child of (B,) depth-`depth` states, in
        place; a slot is the child's code (`by_code`, dense levels) or its sibling rank."""
        keys = torch.where(states >= 0, request.long() * self.num_nodes + states, -1)
        table = self.parent_keys[depth]
        first = torch.searchsorted(table, keys)
        count = torch.searchsorted(table, keys, right=True) - first  # (B,) dead children
        total = int(count.sum())
        if total == 0:
            return
        rows = torch.repeat_interleave(torch.arange(len(keys)), count)  # (total,)
        # Entry j of row b is table index first[b] + j.
        start = torch.repeat_interleave(first - (torch.cumsum(count, 0) - count), count)
        entry = start + torch.arange(total)
        slots = (self.dead_codes if by_code else self.dead_ranks)[depth][entry]
        valid[rows, slots] = False

    def is_dead(self, request: torch.Tensor, nodes: torch.Tensor) -> torch.Tensor:
        """Bool of broadcast(request, nodes) shape: the node is dead for that request (a
        `DEAD` node id is reported as not excluded; callers mask it separately)."""
        if self.dead_keys.numel() == 0:
            return torch.zeros(torch.broadcast_shapes(request.shape, nodes.shape), dtype=torch.bool)
        keys = request.long() * self.num_nodes + nodes.long()
        pos = torch.searchsorted(self.dead_keys, keys.contiguous())
        hit = self.dead_keys[pos.clamp(max=self.dead_keys.numel() - 1)] == keys
        return hit & (nodes >= 0)
