"""Request filters — seen items, blocklist, allowed domains — as trie exclusions.

A request never gets an item it has seen (when asked), a blocklisted item, or an item outside
its allowed domains. All three become one `sid_index.trie.Exclusion` per batch: a trie node is
dead for a request when every item under it is excluded, and the beam search never extends a
beam into a dead node, so it only ever holds prefixes that still lead to an allowed item and
the filters cannot be violated (nor can the list come back short while allowed items remain).

A domain restriction excludes every item outside the allowed domains: far too many items to
list per request, so `CatalogFilters` precomputes, once per distinct set of allowed domains
(cached), how many allowed items lie under every node and which nodes have none. Only the
*topmost* such nodes are listed (a node whose parent still has allowed items, or a child of
the root): the decoder checks a node only when it extends a live parent, so nodes below a
listed one are never asked about. Seen/blocklisted items then kill a node when their count
under it reaches its allowed count, which is computed for the handful of nodes on their paths.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fast_path.errors import RequestError
from sid_index.records import Catalog
from sid_index.trie import Exclusion, SIDTrie


@dataclass(frozen=True, slots=True)
class RequestFilter:
    """What one request must never get."""

    excluded: np.ndarray
    """(M,) int64 sorted distinct catalogue indices excluded one by one (seen, blocklist)."""
    domains: frozenset[int] | None = None
    """Ids (`CatalogFilters.domain_names` positions) of the allowed domains; None: all."""


@dataclass(frozen=True, slots=True)
class _DomainMask:
    """Precomputed trie view of one set of allowed domains."""

    count: np.ndarray
    """(num_nodes,) int64 allowed items under each node."""
    dead: np.ndarray
    """(D,) int64 sorted topmost nodes without allowed items (never the root)."""
    domain_ok: np.ndarray
    """(num_domains,) bool: the domain is allowed."""


class CatalogFilters:
    """Per-catalogue precomputation that turns `RequestFilter`s into trie exclusions.

    Thread-safe: the per-domain-set cache is guarded by a lock."""

    def __init__(self, catalog: Catalog, trie: SIDTrie, cache_size: int = 64) -> None:
        """Args:
        catalog: the release's catalogue (row i is item i, as in the trie).
        trie: the SID trie over the same rows.
        cache_size: distinct allowed-domain sets whose node counts are kept.
        """
        if len(catalog) != trie.num_items:
            raise RequestError(f"catalogue of {len(catalog)} items, trie of {trie.num_items}")
        self.trie = trie
        self.domain_names: tuple[str, ...] = tuple(catalog.domain_names())
        lookup = {name: i for i, name in enumerate(self.domain_names)}
        self._domain_id = lookup
        self.item_domain = np.fromiter(
            (lookup[d] for d in catalog.domains), dtype=np.int64, count=len(catalog)
        )  # (N,)
        self.domain_items: tuple[np.ndarray, ...] = tuple(
            np.flatnonzero(self.item_domain == d) for d in range(len(self.domain_names))
        )
        """Catalogue indices of each domain's items."""
        self._paths = trie.item_path(torch.arange(trie.num_items)).numpy()  # (N, L+1)
        child_ptr = trie.child_ptr.numpy().astype(np.int64)
        self._parent = np.concatenate(  # (num_nodes,) parent node id, -1 for the root
            [[-1], np.repeat(np.arange(trie.num_internal), np.diff(child_ptr))]
        ).astype(np.int64)
        self._cache: OrderedDict[frozenset[int] | None, _DomainMask] = OrderedDict()
        self._cache_size = cache_size
        self._lock = threading.Lock()
        self._mask(None)  # the unrestricted counts are needed by every request

    # ---- building request filters ------------------------------------------------------------

    def domain_ids(self, names: Iterable[str]) -> frozenset[int]:
        """Ids of named domains (RequestError names the unknown ones)."""
        names = list(names)
        unknown = [n for n in names if n not in self._domain_id]
        if unknown:
            raise RequestError(
                f"unknown domain(s) {unknown}; this catalogue has {list(self.domain_names)}"
            )
        return frozenset(self._domain_id[n] for n in names)

    def make(
        self, excluded: Iterable[int] | np.ndarray, domains: Sequence[str] | None = None
    ) -> RequestFilter:
        """A request filter from excluded catalogue indices and allowed domain names."""
        raw = excluded if isinstance(excluded, np.ndarray) else list(excluded)
        items = np.unique(np.asarray(raw, dtype=np.int64))
        if items.size and (items[0] < 0 or items[-1] >= self.trie.num_items):
            raise RequestError(
                f"excluded item index outside the catalogue of {self.trie.num_items}"
            )
        ids = None if domains is None else self.domain_ids(domains)
        if ids is not None and len(ids) == len(self.domain_names):
            ids = None  # every domain allowed: no restriction
        return RequestFilter(items, ids)

    # ---- queries ---------------------------------------------------------------------------

    def allowed(self, request: RequestFilter, items: np.ndarray) -> np.ndarray:
        """(n,) bool: each catalogue index in `items` may be returned to the request."""
        items = np.asarray(items, dtype=np.int64)
        ok = ~np.isin(items, request.excluded)
        if request.domains is not None:
            ok &= self._mask(request.domains).domain_ok[self.item_domain[items]]
        return ok

    def num_allowed(self, request: RequestFilter) -> int:
        """How many catalogue items the request may get."""
        mask = self._mask(request.domains)
        inside = mask.domain_ok[self.item_domain[request.excluded]]
        return int(mask.count[0]) - int(inside.sum())

    def exclusion(self, requests: Sequence[RequestFilter]) -> Exclusion:
        """One trie exclusion for a batch (row r of the batch is `requests[r]`)."""
        trie = self.trie
        num_nodes = trie.num_nodes
        masks = [self._mask(r.domains) for r in requests]
        keys = [r * num_nodes + m.dead for r, m in enumerate(masks) if m.dead.size]

        sizes = np.fromiter(
            (len(r.excluded) for r in requests), dtype=np.int64, count=len(requests)
        )
        if sizes.sum():
            items = np.concatenate([r.excluded for r in requests])  # (M,)
            request = np.repeat(np.arange(len(requests), dtype=np.int64), sizes)
            domain_ok = np.stack([m.domain_ok for m in masks])  # (R, num_domains)
            # Items outside the allowed domains already count as excluded in the domain mask.
            keep = domain_ok[request, self.item_domain[items]]
            items, request = items[keep], request[keep]
            path_keys = request[:, None] * num_nodes + self._paths[items]  # (M', L+1)
            uniq, hits = np.unique(path_keys, return_counts=True)
            node, req = uniq % num_nodes, uniq // num_nodes
            allowed = np.empty(len(uniq), dtype=np.int64)
            # Gather each (request, node)'s allowed count from its own domain mask; one pass per
            # distinct mask in the batch (usually one or two), not per request.
            mask_of: dict[int, int] = {}
            mask_index = np.fromiter(
                (mask_of.setdefault(id(m), len(mask_of)) for m in masks), dtype=np.int64
            )
            distinct = list({id(m): m for m in masks}.values())
            which = mask_index[req]
            for c, m in enumerate(distinct):
                sel = which == c
                allowed[sel] = m.count[node[sel]]
            keys.append(uniq[hits >= allowed])
        dead = np.unique(np.concatenate(keys)) if keys else np.zeros(0, dtype=np.int64)
        return _exclusion(trie, len(requests), dead.astype(np.int64))

    # ---- per-domain-set precomputation ---------------------------------------------------------

    def _mask(self, domains: frozenset[int] | None) -> _DomainMask:
        with self._lock:
            mask = self._cache.get(domains)
            if mask is not None:
                self._cache.move_to_end(domains)
                return mask
        mask = self._build_mask(domains)
        with self._lock:
            self._cache[domains] = mask
            self._cache.move_to_end(domains)
            while len(self._cache) > self._cache_size:
                oldest = next(iter(self._cache))
                if oldest is None:  # the unrestricted mask stays
                    self._cache.move_to_end(None)
                    oldest = next(iter(self._cache))
                del self._cache[oldest]
        return mask

    def _build_mask(self, domains: frozenset[int] | None) -> _DomainMask:
        num_nodes = self.trie.num_nodes
        domain_ok = np.ones(len(self.domain_names), dtype=bool)
        if domains is None:
            rows = np.arange(self.trie.num_items)
        else:
            domain_ok[:] = False
            domain_ok[list(domains)] = True
            parts = [self.domain_items[d] for d in sorted(domains)]
            rows = np.concatenate([np.zeros(0, dtype=np.int64), *parts])
        count = np.bincount(self._paths[rows].ravel(), minlength=num_nodes).astype(np.int64)
        empty = count == 0
        # A node is listed when it is empty and its parent is not (the root never counts as a
        # listed parent: the decoder does not check the root, so its children must be listed).
        parent_empty = np.zeros(num_nodes, dtype=bool)
        parent_empty[1:] = empty[self._parent[1:]] & (self._parent[1:] != 0)
        dead = np.flatnonzero(empty & ~parent_empty)
        dead = dead[dead != 0].astype(np.int64)
        return _DomainMask(count, dead, domain_ok)


def _exclusion(trie: SIDTrie, num_requests: int, dead: np.ndarray) -> Exclusion:
    """An `Exclusion` from sorted dead keys."""
    return Exclusion.from_dead_keys(trie, num_requests, dead)
