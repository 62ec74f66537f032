"""FAISS item index: contract per kind, flat vs approximate agreement, related items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sid_index.errors import ConfigError, DataError
from sid_index.item_index import (
    FlatIndex,
    ItemIndex,
    ItemIndexConfig,
    build_vector_index,
    index_class,
    load_vector_index,
)

KINDS = ["flat", "ivf", "hnsw"]


def clustered(n: int = 600, dim: int = 32, clusters: int = 12, seed: int = 0) -> np.ndarray:
    """(n, dim) unit vectors around `clusters` centres."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    x = centres[rng.integers(clusters, size=n)] + 0.4 * rng.standard_normal((n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def config(kind: str, **kw: object) -> ItemIndexConfig:
    return ItemIndexConfig(**{"kind": kind, "nlist": 8, "nprobe": 8, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", KINDS)
def test_contract(kind: str, tmp_path: Path) -> None:
    x = clustered()
    index = build_vector_index(x, config(kind))
    assert index.kind == kind and len(index) == len(x) and index.dim == 32
    scores, idx = index.search(x[:5], 3)
    assert scores.shape == idx.shape == (5, 3)
    assert scores.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx[:, 0], np.arange(5))  # each vector finds itself first
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # best first
    index.save(tmp_path / kind)
    loaded = load_vector_index(tmp_path / kind)
    assert type(loaded) is type(index) and loaded.config == index.config
    s2, i2 = loaded.search(x[:5], 3)
    np.testing.assert_array_equal(i2, idx)
    np.testing.assert_allclose(s2, scores)
    assert type(index).load(tmp_path / kind).kind == kind


def test_saved_with_faiss_not_pickle(tmp_path: Path) -> None:
    import faiss

    build_vector_index(clustered(50), config("flat")).save(tmp_path)
    raw = faiss.read_index(str(tmp_path / "index.faiss"))
    assert raw.ntotal == 50
    assert not (tmp_path / "index.faiss").read_bytes().startswith(b"\x80")  # no pickle header


def test_flat_and_ivf_agree_when_all_lists_are_probed() -> None:
    x = clustered()
    q = clustered(40, seed=1)
    fs, fi = build_vector_index(x, config("flat")).search(q, 10)
    is_, ii = build_vector_index(x, config("ivf")).search(q, 10)  # nprobe == nlist: exact
    np.testing.assert_array_equal(ii, fi)
    np.testing.assert_allclose(is_, fs, atol=1e-5)


@pytest.mark.parametrize(("kind", "kw"), [("ivf", {"nprobe": 3}), ("hnsw", {})])
def test_approximate_recall(kind: str, kw: dict[str, object]) -> None:
    x = clustered()
    q = clustered(60, seed=2)
    _, exact = build_vector_index(x, config("flat")).search(q, 10)
    _, approx = build_vector_index(x, config(kind, **kw)).search(q, 10)
    recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(approx, exact, strict=True)])
    assert recall >= 0.8


def test_auto_kind_by_catalogue_size() -> None:
    cfg = ItemIndexConfig(flat_max_items=100)
    assert cfg.resolve_kind(100) == "flat" and cfg.resolve_kind(101) == "ivf"
    assert build_vector_index(clustered(80), cfg).kind == "flat"
    big = build_vector_index(clustered(400), cfg)
    assert big.kind == "ivf"
    import faiss

    # 4·sqrt(400) = 80 lists, capped at 400 // 39 = 10 (FAISS wants 39 points per list).
    assert faiss.extract_index_ivf(big.index).nlist == 400 // 39
    assert ItemIndexConfig(kind="hnsw").resolve_kind(10) == "hnsw"


def test_unknown_kind_and_bad_config() -> None:
    with pytest.raises(ConfigError, match="unknown item index kind 'annoy'"):
        ItemIndexConfig(kind="annoy")
    with pytest.raises(ConfigError, match="unknown item index kind 'pq'"):
        index_class("pq")
    with pytest.raises(ConfigError, match="nprobe=0"):
        ItemIndexConfig(nprobe=0)
    with pytest.raises(ConfigError, match="nlist=0"):
        ItemIndexConfig(nlist=0)
    with pytest.raises(ConfigError, match="nlist=64 must be <= the number of items"):
        build_vector_index(clustered(20), ItemIndexConfig(kind="ivf", nlist=64))


def test_bad_inputs(tmp_path: Path) -> None:
    index = build_vector_index(clustered(20), config("flat"))
    with pytest.raises(DataError, match=r"queries must have shape \(N, 32\)"):
        index.search(np.zeros((2, 5), dtype=np.float32), 3)
    with pytest.raises(ConfigError, match="k=0"):
        index.search(np.zeros((2, 32), dtype=np.float32), 0)
    with pytest.raises(DataError, match="cannot index an empty"):
        build_vector_index(np.zeros((0, 4), dtype=np.float32), config("flat"))
    with pytest.raises(DataError, match="no item index"):
        load_vector_index(tmp_path / "nothing")
    index.save(tmp_path / "f")
    (tmp_path / "f" / "index.json").write_text("{", encoding="utf-8")
    with pytest.raises(DataError, match="malformed index metadata"):
        load_vector_index(tmp_path / "f")
    index.save(tmp_path / "g")
    (tmp_path / "g" / "index.faiss").write_bytes(b"garbage")
    with pytest.raises(DataError, match="unreadable FAISS index"):
        load_vector_index(tmp_path / "g")
    build_vector_index(clustered(20), config("hnsw")).save(tmp_path / "h")
    with pytest.raises(DataError, match="holds a 'hnsw' index, not 'flat'"):
        FlatIndex.load(tmp_path / "h")


@pytest.mark.parametrize("kind", KINDS)
def test_related_items_exclude_the_item(kind: str) -> None:
    x = clustered(200)
    x[10] = x[11] = x[12]  # exact duplicates tie with the item itself
    items = ItemIndex.build(x, config(kind))
    rows = np.arange(200)
    scores, idx = items.related_items(rows, 5)
    assert idx.shape == (200, 5)
    assert not (idx == rows[:, None]).any()
    assert set(idx[12, :2]) == {10, 11}
    np.testing.assert_allclose(scores[12, :2], 1.0, atol=1e-5)
    _, exact = ItemIndex.build(x, config("flat")).related_items(rows, 5)
    assert np.mean(idx == exact) > 0.8


def test_related_items_pads_when_catalogue_is_small() -> None:
    items = ItemIndex.build(clustered(3), config("flat"))
    scores, idx = items.related_items(1, 4)
    assert idx.shape == (1, 4)
    assert set(idx[0, :2]) == {0, 2} and (idx[0, 2:] == -1).all()
    assert np.isneginf(scores[0, 2:]).all()
    with pytest.raises(DataError, match=r"item indices must lie in \[0, 3\)"):
        items.related_items(3, 2)
    with pytest.raises(DataError, match="vectors"):
        ItemIndex(items.index, clustered(4))
