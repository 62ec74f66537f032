"""Collaborative item embeddings: pair counts, PPMI-SVD geometry, mixing, no test leakage."""

from __future__ import annotations

import json

import numpy as np
import pytest

from sid_index.collaborative import (
    CollaborativeConfig,
    collaborative_embeddings,
    cooccurrence_counts,
    mix,
)
from sid_index.embedder import HashingEmbedder
from sid_index.errors import ConfigError, DataError
from sid_index.records import Catalog, Dataset, Interactions, Item
from sid_index.rq_kmeans import RQKMeansConfig
from sid_index.sid_builder import SIDBuildConfig
from sid_index.sid_index import SIDIndex, SIDIndexConfig


def _csr(seqs: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seqs])]).astype(np.int64)
    return indptr, np.concatenate([np.asarray(s, dtype=np.int64) for s in seqs])


def test_pair_counts_are_symmetric_windowed_and_stay_inside_a_sequence() -> None:
    indptr, items = _csr([[0, 1, 2], [2, 1], [3, 3]])
    rows, cols, counts = cooccurrence_counts(indptr, items, 4, window=1)
    got = {(int(r), int(c)): float(n) for r, c, n in zip(rows, cols, counts, strict=True)}
    # (3, 3) is a repeat, not a pair; window 1 never links 0 and 2.
    assert got == {(0, 1): 1, (1, 0): 1, (1, 2): 2, (2, 1): 2}
    rows, cols, _ = cooccurrence_counts(*_csr([[0, 1], [2, 3]]), 4, window=3)
    assert {(int(r), int(c)) for r, c in zip(rows, cols, strict=True)} == {
        (0, 1), (1, 0), (2, 3), (3, 2)
    }  # fmt: skip
    with pytest.raises(DataError, match="outside the catalogue"):
        cooccurrence_counts(*_csr([[0, 9]]), 4, window=1)


def test_items_bought_together_get_close_vectors_and_cold_items_zero() -> None:
    rng = np.random.default_rng(0)
    # Two groups of co-consumed items (0-9 and 10-19); item 20 is never seen.
    seqs = [list(rng.choice(np.arange(10) + 10 * (u % 2), size=6)) for u in range(200)]
    emb = collaborative_embeddings(*_csr(seqs), 21, CollaborativeConfig(weight=1.0, dim=8))
    assert emb.shape == (21, 8) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb[:20], axis=1), 1.0, rtol=1e-5)
    assert not emb[20].any()
    sim = emb[:20] @ emb[:20].T
    group = np.arange(20) // 10
    same = (group[:, None] == group[None, :]) & ~np.eye(20, dtype=bool)
    within, across = sim[same].mean(), sim[group[:, None] != group[None, :]].mean()
    assert within > across + 0.5


def test_mix_splits_the_norm_by_weight() -> None:
    text = np.array([[3.0, 4.0], [1.0, 0.0]])
    collab = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    x = mix(text, collab, 0.25)
    assert x.shape == (2, 5)
    np.testing.assert_allclose(np.linalg.norm(x[0, :2]) ** 2, 0.75, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(x[0, 2:]) ** 2, 0.25, rtol=1e-6)
    assert not x[1, 2:].any()  # a cold item keeps only its (scaled) text part
    with pytest.raises(DataError):
        mix(text, collab[:1], 0.5)
    with pytest.raises(ConfigError, match="weight"):
        CollaborativeConfig(weight=1.5)


def _dataset(last_items: list[int]) -> Dataset:
    items = [Item(f"i{j}", f"item {j}", f"thing number {j} of kind {j % 3}") for j in range(30)]
    rng = np.random.default_rng(1)
    users = [f"u{u}" for u in range(40)]
    seqs = [[*rng.choice(np.arange(10) + 10 * (u % 3), size=5).tolist(), last_items[u]]
            for u in range(40)]  # fmt: skip
    indptr, flat = _csr(seqs)
    return Dataset("toy", Catalog.from_items(items), Interactions(users, indptr, flat))


def test_sid_build_uses_train_parts_only_and_config_round_trips() -> None:
    cfg = SIDIndexConfig(
        sids=SIDBuildConfig(rq=RQKMeansConfig(levels=(4, 4), seed=0)),
        collaborative=CollaborativeConfig(weight=0.5, dim=4),
    )
    a = SIDIndex.build(_dataset([0] * 40), cfg, HashingEmbedder())
    # Only the test items (the last of each sequence) differ: the SIDs must not.
    b = SIDIndex.build(_dataset([(29 - u) % 30 for u in range(40)]), cfg, HashingEmbedder())
    np.testing.assert_array_equal(a.sids.codes, b.sids.codes)
    assert a.embeddings is not None and a.embeddings.shape[1] == HashingEmbedder().dim + 4
    assert SIDIndexConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="need a dataset"):
        SIDIndex.build(a.catalog, cfg, HashingEmbedder())


def test_collaborative_only_sids_need_no_text() -> None:
    data = _dataset([0] * 40)
    bare = Catalog.from_items([Item(f"i{j}", "", "") for j in range(30)])
    data = Dataset("bare", bare, data.interactions)
    cfg = SIDIndexConfig(
        sids=SIDBuildConfig(rq=RQKMeansConfig(levels=(4, 4), seed=0)),
        collaborative=CollaborativeConfig(weight=1.0, dim=4),
    )
    index = SIDIndex.build(data, cfg, None)
    assert index.embedder_name == "collaborative" and index.embeddings is not None
    assert index.embeddings.shape == (30, 4)
    # The three planted co-consumption groups (items 0-9, 10-19, 20-29) split at level 0.
    first = index.sids.codes[:, 0]
    groups = [set(first[g * 10 : g * 10 + 10].tolist()) for g in range(3)]
    assert not (groups[0] & groups[1]) and not (groups[1] & groups[2])
