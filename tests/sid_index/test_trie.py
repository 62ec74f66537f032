"""SIDTrie against a plain dict-of-dicts reference trie (hypothesis property tests)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sid_index.codes import SemanticIDs
from sid_index.errors import DataError
from sid_index.trie import DEAD, Exclusion, SIDTrie

Ref = dict[int, Any]


def _codes(mask_row: torch.Tensor) -> set[int]:
    return set(torch.nonzero(mask_row).flatten().tolist())


def _ref_trie(codes: np.ndarray) -> Ref:
    """Nested dicts code -> child; a leaf holds the item index under key -1."""
    root: Ref = {}
    for item, row in enumerate(codes.tolist()):
        node = root
        for c in row:
            node = node.setdefault(c, {})
        node[-1] = item
    return root


def _ref_items_under(node: Ref) -> set[int]:
    if -1 in node:
        return {node[-1]}
    return set().union(*(_ref_items_under(child) for child in node.values()))


def _ref_allowed(root: Ref, prefix: list[int], excluded: set[int]) -> set[int]:
    """Codes that extend `prefix` towards an item not in `excluded`."""
    node: Ref | None = root
    for c in prefix:
        node = node.get(c) if node is not None else None
    if node is None:
        return set()
    return {c for c, child in node.items() if c != -1 and _ref_items_under(child) - excluded}


def _ref_num_nodes(node: Ref) -> int:
    return 1 + sum(_ref_num_nodes(child) for c, child in node.items() if c != -1)


@st.composite
def catalogues(draw: st.DrawFn) -> tuple[SemanticIDs, int]:
    """Random unique code matrices over 1-4 levels of different sizes, and a dense budget."""
    sizes = tuple(draw(st.lists(st.integers(1, 6), min_size=1, max_size=4)))
    rows = draw(
        st.lists(
            st.tuples(*(st.integers(0, s - 1) for s in sizes)),
            min_size=1,
            max_size=40,
            unique=True,
        )
    )
    dense = draw(st.sampled_from([0, 12, 1 << 20]))  # CSR only, mixed, dense everywhere
    return SemanticIDs(np.asarray(rows, dtype=np.int32).reshape(-1, len(sizes)), sizes), dense


SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(cat=catalogues(), data=st.data())
def test_allowed_masks_match_reference(cat: tuple[SemanticIDs, int], data: st.DataObject) -> None:
    sids, dense = cat
    trie = SIDTrie.build(sids, dense_entries=dense)
    ref = _ref_trie(sids.codes)
    assert trie.num_nodes == _ref_num_nodes(ref)
    for t in range(sids.num_levels):
        # Prefixes from real items (valid) and random codes, some beyond the codebook (invalid).
        real = sids.codes[data.draw(st.lists(st.integers(0, sids.num_items - 1), max_size=5))]
        rand = data.draw(
            st.lists(
                st.tuples(*(st.integers(0, s + 1) for s in sids.level_sizes[:t])),
                max_size=5,
            )
        )
        prefixes = [list(r[:t]) for r in real.tolist()] + [list(r) for r in rand]
        if not prefixes:
            continue
        got = trie.allowed_mask_for_prefixes(
            torch.tensor(prefixes, dtype=torch.int64).view(len(prefixes), t)
        )
        assert got.shape == (len(prefixes), sids.level_sizes[t])
        for row, prefix in zip(got, prefixes, strict=True):
            assert _codes(row) == _ref_allowed(ref, prefix, set())


@SETTINGS
@given(cat=catalogues(), data=st.data())
def test_exclusion_matches_reference(cat: tuple[SemanticIDs, int], data: st.DataObject) -> None:
    sids, dense = cat
    trie = SIDTrie.build(sids, dense_entries=dense)
    ref = _ref_trie(sids.codes)
    item = st.integers(0, sids.num_items - 1)
    # Several requests, each with its own (possibly repeated, possibly total) exclusion set.
    sets = data.draw(st.lists(st.lists(item, max_size=2 * sids.num_items), min_size=1, max_size=4))
    excl = Exclusion.build(trie, sets)
    for t in range(sids.num_levels):
        prefixes = sids.codes[:, :t].astype(np.int64)  # every item's prefix, for every request
        for r, excluded in enumerate(sets):
            request = torch.full((len(prefixes),), r)
            states = trie.root_state(len(prefixes))
            for lvl in range(t):
                states = trie.advance(states, torch.from_numpy(prefixes[:, lvl]))
            got = trie.allowed_mask(states, t, excl, request)
            for row, prefix in zip(got, prefixes.tolist(), strict=True):
                want = _ref_allowed(ref, prefix, set(excluded))
                assert _codes(row) == want
            # Children agree with the mask and with `advance`.
            kids = trie.children(states, t, excl, request)
            for b in range(len(prefixes)):
                codes = kids.codes[b][kids.valid[b]]
                assert set(codes.tolist()) == _codes(got[b])
                assert codes.tolist() == sorted(codes.tolist())
                nxt = trie.advance(states[b].repeat(len(codes)), codes)
                assert torch.equal(nxt, kids.nodes[b][kids.valid[b]])
            assert bool((kids.nodes[~kids.valid] == DEAD).all())


@SETTINGS
@given(cat=catalogues())
def test_leaves_paths_and_sids_round_trip(cat: tuple[SemanticIDs, int]) -> None:
    sids, dense = cat
    trie = SIDTrie.build(sids, dense_entries=dense)
    codes = torch.from_numpy(sids.codes.astype(np.int64))
    states = trie.root_state(sids.num_items)
    walked = [states]
    for lvl in range(sids.num_levels):
        assert bool((trie.leaf_item(states) == -1).all())  # inner nodes are not leaves
        states = trie.advance(states, codes[:, lvl])
        walked.append(states)
    assert torch.equal(trie.leaf_item(states), torch.arange(sids.num_items))
    items = torch.arange(sids.num_items)
    assert torch.equal(trie.item_path(items), torch.stack(walked, dim=1))
    assert torch.equal(trie.sid_of(items), codes)
    # Leaves and dead states go nowhere.
    assert bool((trie.advance(states, codes[:, 0]) == DEAD).all())
    assert bool((trie.advance(torch.full_like(states, DEAD), codes[:, 0]) == DEAD).all())


def test_states_of_mixed_depth_advance_independently() -> None:
    sids = SemanticIDs(np.array([[0, 1, 2], [0, 2, 0], [3, 1, 1]], dtype=np.int32), (4, 3, 3))
    trie = SIDTrie.build(sids)
    a0 = trie.advance(trie.root_state(1), torch.tensor([0]))
    a01 = trie.advance(a0, torch.tensor([1]))
    got = trie.advance(torch.cat([trie.root_state(1), a0, a01]), torch.tensor([3, 2, 2]))
    assert torch.equal(trie.leaf_item(trie.advance(got[2:], torch.tensor([2]))), torch.tensor([-1]))
    assert torch.equal(trie.leaf_item(got[2:]), torch.tensor([0]))
    assert bool((got[:2] >= 0).all())
    assert torch.equal(trie.allowed_mask(got[1:2], 2), torch.tensor([[True, False, False]]))


def test_single_child_chains_and_level_sizes() -> None:
    # Node [1] has a single child; levels of different sizes; level 2 is a disambiguation level.
    codes = np.array([[1, 4, 0], [0, 0, 0], [0, 0, 1], [0, 2, 0]], dtype=np.int32)
    trie = SIDTrie.build(SemanticIDs(codes, (2, 5, 2)), dense_entries=0)
    assert trie.max_degree == (2, 2, 2)
    mask = trie.allowed_mask_for_prefixes(torch.tensor([[1, 4], [1, 3], [0, 0]]))
    assert mask.tolist() == [[True, False], [False, False], [True, True]]
    assert trie.allowed_mask_for_prefixes(torch.tensor([[1]])).tolist() == [
        [False, False, False, False, True]
    ]


def test_whole_catalogue_excluded_kills_the_root() -> None:
    sids = SemanticIDs(np.array([[0, 0], [1, 1]], dtype=np.int32), (2, 2))
    trie = SIDTrie.build(sids)
    excl = Exclusion.build(trie, [[0, 1], [1], []])
    assert bool(excl.is_dead(torch.tensor([0]), torch.tensor([0])).item())
    mask = trie.allowed_mask(trie.root_state(3), 0, excl)
    assert mask.tolist() == [[False, False], [True, False], [True, True]]


def test_build_rejects_duplicates_and_empty() -> None:
    dup = SemanticIDs(np.array([[0, 1], [1, 1], [0, 1]], dtype=np.int32), (2, 2))
    with pytest.raises(DataError, match="items 0 and 2 share the SID <a_0><b_1>"):
        SIDTrie.build(dup)
    with pytest.raises(DataError, match="empty catalogue"):
        SIDTrie.build(SemanticIDs(np.zeros((0, 2), dtype=np.int32), (2, 2)))


def test_bad_inputs_raise_data_errors() -> None:
    trie = SIDTrie.build(SemanticIDs(np.array([[0, 1], [1, 0]], dtype=np.int32), (2, 2)))
    with pytest.raises(DataError, match="item index 2 is outside the catalogue of 2"):
        Exclusion.build(trie, [[0, 2]])
    with pytest.raises(DataError, match="level=2"):
        trie.allowed_mask(trie.root_state(1), 2)
    with pytest.raises(DataError, match="no next level"):
        trie.allowed_mask_for_prefixes(torch.zeros((1, 2), dtype=torch.int64))


def test_wide_codes_fall_back_to_lexsort() -> None:
    # 3 levels of 2^22 codes do not pack into one int64 key.
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 1 << 22, size=(500, 3), dtype=np.int32)
    codes[:, 0] %= 3  # shared first levels so the trie branches
    codes = np.unique(codes, axis=0)[rng.permutation(len(np.unique(codes, axis=0)))]
    trie = SIDTrie.build(SemanticIDs(codes, (1 << 22,) * 3))
    assert torch.equal(trie.sid_of(torch.arange(len(codes))), torch.from_numpy(codes).long())
    assert trie.nbytes > 0
