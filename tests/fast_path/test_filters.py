"""Request filters as trie exclusions: a decoder walking the trie with them reaches exactly
the allowed items and never a dead end."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fast_path.errors import RequestError
from fast_path.filters import CatalogFilters, RequestFilter
from sid_index.codes import SemanticIDs
from sid_index.records import Catalog
from sid_index.trie import Exclusion, SIDTrie

DOMAINS = ("ads", "live", "video")
N_ITEMS = 48


@cache
def _world(clustered: bool) -> tuple[Catalog, SIDTrie]:
    """48 items over a (3, 4, 5) code space. Clustered: the first code decides the domain
    (domain masks kill whole subtrees); otherwise domains are random (dead nodes are leaves)."""
    rng = np.random.default_rng(7)
    rows = {(int(a), int(b), int(c)) for a, b, c in rng.integers(0, (3, 4, 5), size=(400, 3))}
    codes = np.array(sorted(rows)[:N_ITEMS], dtype=np.int32)
    assert len(codes) == N_ITEMS
    codes = codes[rng.permutation(len(codes))]
    if clustered:
        domains = [DOMAINS[int(c[0])] for c in codes]
    else:
        domains = [DOMAINS[int(d)] for d in rng.integers(0, 3, len(codes))]
    n = len(codes)
    catalog = Catalog(
        item_ids=[f"i{i}" for i in range(n)],
        titles=[f"t{i}" for i in range(n)],
        texts=[""] * n,
        categories=[()] * n,
        domains=domains,
    )
    dense = 1 << 22 if clustered else 0  # cover both the dense-table and CSR code paths
    return catalog, SIDTrie.build(SemanticIDs(codes, (3, 4, 5)), dense_entries=dense)


def _walk(trie: SIDTrie, exclusion: Exclusion, num_requests: int) -> list[set[int]]:
    """Reachable items per request when following only valid children; asserts that every
    reached prefix has at least one valid child (a decoder never gets stuck)."""
    states = trie.root_state(num_requests)
    request = torch.arange(num_requests)
    for level in range(trie.num_levels):
        kids = trie.children(states, level, exclusion, request)
        stuck = ~kids.valid.any(dim=1)
        if level > 0:  # the root of a request with nothing allowed has no live child
            assert not bool(stuck.any()), f"dead end at level {level}"
        rows, cols = torch.nonzero(kids.valid, as_tuple=True)
        states, request = kids.nodes[rows, cols], request[rows]
    items = trie.leaf_item(states)
    out: list[set[int]] = [set() for _ in range(num_requests)]
    for r, i in zip(request.tolist(), items.tolist(), strict=True):
        out[r].add(i)
    return out


def _allowed(catalog: Catalog, f: RequestFilter, names: tuple[str, ...]) -> set[int]:
    return {
        i
        for i in range(len(catalog))
        if i not in set(f.excluded.tolist()) and (f.domains is None or catalog.domains[i] in names)
    }


request_spec = st.tuples(
    st.lists(st.integers(0, N_ITEMS - 1), max_size=40),
    st.one_of(st.none(), st.lists(st.sampled_from(DOMAINS), max_size=3, unique=True)),
)


@settings(max_examples=60, deadline=None)
@given(clustered=st.booleans(), specs=st.lists(request_spec, min_size=1, max_size=5))
def test_exclusion_reaches_exactly_the_allowed_items(
    clustered: bool, specs: list[tuple[list[int], list[str] | None]]
) -> None:
    catalog, trie = _world(clustered)
    filters = CatalogFilters(catalog, trie)
    made = [filters.make(excl, doms) for excl, doms in specs]
    exclusion = filters.exclusion(made)
    reached = _walk(trie, exclusion, len(made))
    for (_, doms), f, got in zip(specs, made, reached, strict=True):
        want = _allowed(catalog, f, DOMAINS if doms is None else tuple(doms))
        assert got == want
        assert filters.num_allowed(f) == len(want)
        mask = filters.allowed(f, np.arange(len(catalog)))
        assert set(np.flatnonzero(mask).tolist()) == want


def test_domain_masks_list_only_topmost_nodes() -> None:
    catalog, trie = _world(clustered=True)
    filters = CatalogFilters(catalog, trie)
    f = filters.make([], ["video"])
    exclusion = filters.exclusion([f])
    # Clustered: the two other first-level subtrees die whole, so two keys suffice.
    assert exclusion.dead_keys.numel() == 2
    assert _walk(trie, exclusion, 1)[0] == _allowed(catalog, f, ("video",))


def test_everything_excluded_reaches_nothing() -> None:
    catalog, trie = _world(clustered=False)
    filters = CatalogFilters(catalog, trie)
    f_all = filters.make(range(len(catalog)))
    f_none = filters.make([], [])
    f_free = filters.make([])
    reached = _walk(trie, filters.exclusion([f_all, f_none, f_free]), 3)
    assert reached[0] == set() and reached[1] == set()
    assert reached[2] == set(range(len(catalog)))
    assert filters.num_allowed(f_all) == filters.num_allowed(f_none) == 0


def test_every_domain_is_no_restriction_and_unknown_domains_are_named() -> None:
    catalog, trie = _world(clustered=False)
    filters = CatalogFilters(catalog, trie)
    assert filters.make([], list(DOMAINS)).domains is None
    with pytest.raises(RequestError, match="'books'"):
        filters.make([], ["video", "books"])
    with pytest.raises(RequestError, match="outside the catalogue"):
        filters.make([N_ITEMS])


def test_mask_cache_is_bounded_and_keeps_the_unrestricted_mask() -> None:
    catalog, trie = _world(clustered=True)
    filters = CatalogFilters(catalog, trie, cache_size=2)
    for doms in (["ads"], ["live"], ["video"], ["ads", "live"]):
        filters.exclusion([filters.make([], doms)])
    assert len(filters._cache) == 2 and None in filters._cache
