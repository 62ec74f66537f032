"""SIDIndex: build with the real MiniLM on a small catalogue, save/load, BYO SIDs, errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sid_index.embedder import HashingEmbedder, MiniLMConfig, MiniLMEmbedder
from sid_index.errors import ConfigError, DataError, ReleaseError
from sid_index.item_index import ItemIndexConfig
from sid_index.records import Catalog, Item
from sid_index.rq_kmeans import RQKMeansConfig
from sid_index.sid_builder import SIDBuildConfig
from sid_index.sid_index import SIDIndex, SIDIndexConfig

TOPICS = {
    "coffee": ["espresso machine", "coffee grinder", "latte mug", "french press", "coffee beans"],
    "office": ["stapler", "ballpoint pens", "printer paper", "file folders", "desk organizer"],
    "garden": ["garden hose", "pruning shears", "flower seeds", "watering can", "lawn mower"],
    "gaming": [
        "game controller",
        "gaming headset",
        "mechanical keyboard",
        "gaming mouse",
        "console stand",
    ],
}
ADJ = ["premium", "compact", "durable", "classic", "deluxe", "portable"]


def topic_catalog() -> tuple[Catalog, np.ndarray]:
    """120 items, 30 per topic, texts built from topic nouns; returns (catalog, topic ids)."""
    items, topic_of = [], []
    for t, (topic, nouns) in enumerate(TOPICS.items()):
        for j in range(30):
            noun = nouns[j % len(nouns)]
            text = f"{ADJ[j % len(ADJ)]} {noun} for {topic} lovers, model {j}"
            items.append(Item(f"{topic}-{j}", f"{noun} {j}", text, (topic,), domain=topic))
            topic_of.append(t)
    return Catalog.from_items(items), np.array(topic_of)


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(MiniLMConfig(show_progress=False))


@pytest.fixture(scope="module")
def built(minilm: MiniLMEmbedder) -> SIDIndex:
    cat, _ = topic_catalog()
    cfg = SIDIndexConfig(
        sids=SIDBuildConfig(rq=RQKMeansConfig(levels=(4, 8, 8), nredo=3)),
        index=ItemIndexConfig(kind="flat"),
    )
    return SIDIndex.build(cat, cfg, minilm)


def test_build_with_minilm(built: SIDIndex) -> None:
    _, topics = topic_catalog()
    assert len(built) == 120 and built.sids.is_unique() and built.stats.unique
    assert built.sids.num_levels == 4 and built.sids.level_sizes[:3] == (4, 8, 8)
    assert built.embeddings is not None and built.embeddings.dtype == np.float16
    assert built.embeddings.shape == (120, 384)
    assert built.embedder_name == "minilm" and built.item_index is not None
    assert built.stats.embed_seconds is not None and built.stats.embed_seconds > 0
    # Real semantics: level 0 (4 codes) separates the 4 topics almost perfectly.
    a = built.sids.codes[:, 0]
    purity = sum(np.bincount(topics[a == c]).max() for c in np.unique(a)) / len(a)
    assert purity >= 0.9
    # Related items of a coffee item are coffee items.
    related = built.related_items("coffee-0", 5)
    assert len(related) == 5 and all(i.startswith("coffee-") for i, _ in related)
    assert "coffee-0" not in [i for i, _ in related]
    assert built.sid_text("coffee-0").startswith("<a_")


def test_save_load_round_trip(built: SIDIndex, tmp_path: Path) -> None:
    built.save(tmp_path / "idx")
    names = sorted(p.name for p in (tmp_path / "idx").iterdir())
    assert names == sorted(
        [
            "codebooks.npz",
            "codes.npy",
            "config.json",
            "embeddings.npy",
            "item_index",
            "items.jsonl",
            "level_sizes.json",
            "stats.json",
        ]
    )
    loaded = SIDIndex.load(tmp_path / "idx")
    assert loaded.catalog == built.catalog
    np.testing.assert_array_equal(loaded.sids.codes, built.sids.codes)
    assert loaded.sids.level_sizes == built.sids.level_sizes
    assert loaded.stats == built.stats and loaded.config == built.config
    np.testing.assert_array_equal(loaded.embeddings, built.embeddings)
    assert loaded.embedder_name == "minilm"
    for item_id in ("coffee-0", "garden-7", "gaming-29"):
        assert loaded.related_items(item_id, 6) == built.related_items(item_id, 6)
    assert built.quantizer is not None and loaded.quantizer is not None
    emb = built.embeddings.astype(np.float32)  # type: ignore[union-attr]
    np.testing.assert_array_equal(loaded.quantizer.encode(emb), built.quantizer.encode(emb))
    assert loaded.trie.num_items == 120


def test_catalog_without_attributes_round_trips(tmp_path: Path) -> None:
    cat = Catalog(
        item_ids=["x", "y", "z"],
        titles=["X", "Y", "Z"],
        texts=["red pen", "blue pen", "desk lamp"],
        categories=[("a", "b"), (), ("c",)],
        domains=["d1", "d2", "d1"],
    )
    idx = SIDIndex.build(cat, SIDIndexConfig(), HashingEmbedder())
    idx.save(tmp_path)
    loaded = SIDIndex.load(tmp_path)
    assert loaded.catalog == cat and loaded.catalog.attributes is None
    assert loaded.embedder_name == "hashing" and loaded.sids.is_unique()


def test_byo_sids_without_text(tmp_path: Path) -> None:
    cat = Catalog.from_items([Item(str(i), str(i), "") for i in range(6)])
    path = tmp_path / "sids.json"
    path.write_text(json.dumps({str(i): [f"<a_{i % 2}>", "<b_0>"] for i in range(6)}))
    with pytest.raises(DataError, match=r"have no text.*--sids"):
        SIDIndex.build(cat, SIDIndexConfig(), HashingEmbedder())
    idx = SIDIndex.build(cat, SIDIndexConfig(), HashingEmbedder(), sids_path=path)
    assert idx.sids.is_unique() and idx.sids.level_sizes == (2, 1, 4)
    assert idx.embeddings is None and idx.item_index is None and idx.quantizer is None
    assert any("no item embeddings" in n for n in idx.stats.notes)
    with pytest.raises(DataError, match="no item embeddings"):
        idx.related_items("0")
    idx.save(tmp_path / "out")
    loaded = SIDIndex.load(tmp_path / "out")
    assert loaded.embeddings is None and loaded.stats == idx.stats
    np.testing.assert_array_equal(loaded.sids.codes, idx.sids.codes)


def test_byo_sids_with_text_are_embedded(tmp_path: Path) -> None:
    cat, _ = topic_catalog()
    path = tmp_path / "sids.json"
    path.write_text(json.dumps({iid: [f"<a_{i}>"] for i, iid in enumerate(cat.item_ids)}))
    idx = SIDIndex.build(cat, SIDIndexConfig(), HashingEmbedder(), sids_path=path)
    assert idx.embeddings is not None and idx.item_index is not None
    assert idx.stats.source == "imported:sids.json" and idx.stats.embed_seconds is not None
    assert idx.sids.level_sizes == (120,)


def test_build_errors() -> None:
    cat, _ = topic_catalog()
    with pytest.raises(ConfigError, match="needs an embedder"):
        SIDIndex.build(cat, SIDIndexConfig())
    with pytest.raises(DataError, match="empty catalogue"):
        SIDIndex.build(Catalog.from_items([]), SIDIndexConfig(), HashingEmbedder())
    bad = Catalog.from_items([Item("a", "A", "text"), Item("b", "B", " ")])
    with pytest.raises(DataError, match=r"1 of 2 items have no text to embed \('b'\)"):
        SIDIndex.build(bad, SIDIndexConfig(), HashingEmbedder())
    with pytest.raises(ConfigError, match="embeddings_dtype='int8'"):
        SIDIndexConfig(embeddings_dtype="int8")


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(ReleaseError, match=r"config\.json is missing"):
        SIDIndex.load(tmp_path / "none")
    cat = Catalog.from_items([Item(str(i), str(i), f"item {i} text") for i in range(10)])
    SIDIndex.build(cat, SIDIndexConfig(), HashingEmbedder()).save(tmp_path / "a")
    np.save(tmp_path / "a" / "codes.npy", np.zeros((3, 2), dtype=np.int32))
    with pytest.raises(ReleaseError, match="broken SID index"):
        SIDIndex.load(tmp_path / "a")
    SIDIndex.build(cat, SIDIndexConfig(), HashingEmbedder()).save(tmp_path / "b")
    (tmp_path / "b" / "items.jsonl").write_text('{"item_id": "0"}\n', encoding="utf-8")
    with pytest.raises(ReleaseError, match="malformed item record"):
        SIDIndex.load(tmp_path / "b")


def test_config_dict_round_trip() -> None:
    cfg = SIDIndexConfig(
        sids=SIDBuildConfig(rq=RQKMeansConfig(levels=(16, 8), seed=3), round_disambiguation=False),
        index=ItemIndexConfig(kind="hnsw", ef_search=32),
        embeddings_dtype="float32",
    )
    assert SIDIndexConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    with pytest.raises(ConfigError, match="malformed SIDIndex config"):
        SIDIndexConfig.from_dict({"bogus": 1})
