"""Embedders: the real MiniLM (loaded once per module) and the hashing reference."""

from __future__ import annotations

import numpy as np
import pytest

from sid_index.embedder import (
    HashingConfig,
    HashingEmbedder,
    MiniLMConfig,
    MiniLMEmbedder,
    TextEmbedder,
    check_texts,
    make_embedder,
)
from sid_index.errors import ConfigError, DataError

TEXTS = [
    "red stapler for the office desk",
    "blue ballpoint pens, pack of 12",
    "stainless steel espresso machine with milk frother",
    "ergonomic mesh office chair with lumbar support",
    "a",
    "wireless gaming headset with surround sound " * 8,
]


@pytest.fixture(scope="module")
def minilm() -> MiniLMEmbedder:
    return MiniLMEmbedder(MiniLMConfig(show_progress=False))


def _cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(a @ b)


def test_minilm_shape_dtype_and_unit_norm(minilm: MiniLMEmbedder) -> None:
    out = minilm.embed(TEXTS)
    assert isinstance(minilm, TextEmbedder)
    assert minilm.dim == 384
    assert out.shape == (len(TEXTS), 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_minilm_batching_and_order_do_not_change_vectors(minilm: MiniLMEmbedder) -> None:
    texts = TEXTS[:5]
    whole = minilm.embed(texts)
    small = MiniLMEmbedder(MiniLMConfig(batch_size=2, show_progress=False))
    # Batches of 2 pad differently; masked mean pooling must make that irrelevant, and the
    # length sort inside embed() must put rows back in input order.
    np.testing.assert_allclose(small.embed(texts[::-1])[::-1], whole, atol=2e-5)


def test_minilm_semantics(minilm: MiniLMEmbedder) -> None:
    stapler, pens, espresso, chair, *_ = minilm.embed(TEXTS)
    [stapler2] = minilm.embed(["office stapler, red"])
    assert _cos(stapler, stapler2) > _cos(stapler, espresso) + 0.2
    assert _cos(chair, pens) > _cos(chair, espresso) - 0.3  # sanity: finite, comparable


def test_minilm_empty_input(minilm: MiniLMEmbedder) -> None:
    assert minilm.embed([]).shape == (0, 384)


def test_minilm_truncates_to_max_length(minilm: MiniLMEmbedder) -> None:
    short = MiniLMEmbedder(MiniLMConfig(max_length=16, show_progress=False))
    head = (
        "red stapler for the office desk with a heavy chrome base and a soft grip for all day use"
    )
    a, b = short.embed([head, head + " and a matching tape dispenser" * 20])
    # Both are cut to the same first 16 tokens: the head alone is longer than that.
    np.testing.assert_allclose(a, b, atol=1e-5)
    assert not np.allclose(*minilm.embed([head, head + " and a matching tape dispenser"]))


def test_minilm_config_validation() -> None:
    with pytest.raises(ConfigError, match="batch_size=0"):
        MiniLMConfig(batch_size=0)
    with pytest.raises(ConfigError, match="max_length=4"):
        MiniLMConfig(max_length=4)
    with pytest.raises(ConfigError, match="no model at"):
        MiniLMEmbedder(MiniLMConfig(model_path="/nonexistent/model"))


def test_hashing_is_deterministic_unit_norm_and_seeded() -> None:
    a = HashingEmbedder().embed(TEXTS)
    b = HashingEmbedder().embed(TEXTS)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    c = HashingEmbedder(HashingConfig(seed=1)).embed(TEXTS)
    assert not np.allclose(a, c)
    assert HashingEmbedder(HashingConfig(dim=16)).embed(TEXTS).shape == (len(TEXTS), 16)
    # Shared words make vectors closer.
    x, y, z = HashingEmbedder().embed(["red office stapler", "red stapler", "espresso machine"])
    assert _cos(x, y) > _cos(x, z) + 0.3


def test_hashing_zero_text_gives_zero_row() -> None:
    out = HashingEmbedder().embed(["", "!!"])
    np.testing.assert_array_equal(out, 0.0)


def test_make_embedder() -> None:
    emb = make_embedder("hashing", dim=8)
    assert emb.name == "hashing" and emb.dim == 8
    with pytest.raises(ConfigError, match="unknown embedder 'bert'"):
        make_embedder("bert")
    with pytest.raises(ConfigError, match="embedder 'hashing'"):
        make_embedder("hashing", batch_size=3)


def test_check_texts_names_empty_items() -> None:
    check_texts(["a", "b"], ["x", "y"])
    with pytest.raises(DataError, match=r"2 of 3 items have no text .*'b', 'c'.*--sids") as exc:
        check_texts(["a", "b", "c"], ["x", "", "  \n"], hint=" (import with --sids)")
    assert "'a'" not in str(exc.value)


@pytest.mark.parametrize("name", ["minilm", "hashing"])
def test_embedder_contract(name: str, minilm: MiniLMEmbedder) -> None:
    emb: TextEmbedder = minilm if name == "minilm" else make_embedder(name)
    assert isinstance(emb, TextEmbedder) and emb.name == name
    a = emb.embed(TEXTS[:4])
    assert a.shape == (4, emb.dim) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(emb.embed(TEXTS[:4]), a, atol=1e-6)  # deterministic
    np.testing.assert_allclose(emb.embed(TEXTS[2:3])[0], a[2], atol=2e-5)  # row-independent
