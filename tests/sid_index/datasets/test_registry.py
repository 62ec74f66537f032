"""Dataset specs, format detection and the saved-dataset round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sid_index.datasets.registry import (
    detect_format,
    load_dataset,
    load_saved_dataset,
    parse_synthetic,
    save_dataset,
)
from sid_index.datasets.synthetic import SyntheticConfig, generate
from sid_index.errors import ConfigError, DataError
from sid_index.records import Dataset


def _assert_same(a: Dataset, b: Dataset) -> None:
    assert a.name == b.name
    for col in ("item_ids", "titles", "texts", "categories", "domains"):
        assert getattr(a.catalog, col) == getattr(b.catalog, col), col
    attrs_a = a.catalog.attributes or [{}] * len(a.catalog)
    assert [dict(x) for x in attrs_a] == [dict(x) for x in b.catalog.attributes or []]
    assert a.interactions.user_ids == b.interactions.user_ids
    np.testing.assert_array_equal(a.interactions.indptr, b.interactions.indptr)
    np.testing.assert_array_equal(a.interactions.items, b.interactions.items)
    if a.interactions.timestamps is None:
        assert b.interactions.timestamps is None
    else:
        np.testing.assert_array_equal(a.interactions.timestamps, b.interactions.timestamps)
    if a.personas is None:
        assert b.personas is None
    else:
        np.testing.assert_array_equal(a.personas, b.personas)
    assert a.persona_names == b.persona_names


def _amazon_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "Toy.inter.json").write_text(json.dumps({"0": [0, 1, 2], "1": [2, 1]}))
    item = {"title": "Pen", "description": "", "brand": "Ac\u00e9", "categories": "A, B"}
    (root / "Toy.item.json").write_text(json.dumps({"0": item}))
    return root


def _movielens_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "ratings.dat").write_text("1::10::5::3\n1::20::4::1\n")
    (root / "movies.dat").write_text("10::A (1999)::Drama\n")
    return root


def test_parse_synthetic() -> None:
    assert parse_synthetic("") == SyntheticConfig()
    config = parse_synthetic(
        "users=2000, items=800,seed=3,domains=video+live,interest_strength=0.5"
    )
    assert config == SyntheticConfig(
        num_users=2000, num_items=800, seed=3, domains=("video", "live"), interest_strength=0.5
    )
    assert parse_synthetic("num_personas=4,categories=8").num_categories == 8
    with pytest.raises(ConfigError, match=r"bad parameter 'colour=red'; keys: num_users"):
        parse_synthetic("colour=red")
    with pytest.raises(ConfigError, match=r"bad parameter 'users'"):
        parse_synthetic("users")
    with pytest.raises(ConfigError, match=r"num_items='many' is not a valid int"):
        parse_synthetic("items=many")
    with pytest.raises(ConfigError, match=r"num_users=0 must be >= 1"):
        parse_synthetic("users=0")


def test_load_dataset_forms(tmp_path: Path) -> None:
    assert load_dataset("synthetic:users=40,items=60").interactions.user_ids[-1] == "39"
    assert len(load_dataset("synthetic").catalog) == SyntheticConfig().num_items
    amazon = _amazon_dir(tmp_path / "amz")
    movielens = _movielens_dir(tmp_path / "ml")
    assert load_dataset(f"amazon:{amazon}").name == "Toy"
    assert load_dataset(str(amazon)).name == "Toy"
    assert load_dataset(f"movielens:{movielens}").catalog.item_ids == ["10", "20"]
    assert load_dataset(str(movielens)).interactions.num_interactions == 2
    assert detect_format(amazon) == "amazon" and detect_format(movielens) == "movielens"
    saved = save_dataset(load_dataset(str(amazon)), tmp_path / "saved")
    assert detect_format(saved) == "saved"
    _assert_same(load_dataset(str(amazon)), load_dataset(str(saved)))
    _assert_same(load_dataset(str(amazon)), load_dataset(f"saved:{saved}"))


@pytest.mark.parametrize("spec", ["nope", "imagenet:x", "/definitely/not/here", "amazon:"])
def test_unknown_specs_list_the_forms(spec: str) -> None:
    with pytest.raises(ConfigError, match=r"accepted forms: synthetic; synthetic:KEY=VALUE"):
        load_dataset(spec)


def test_empty_directory_is_not_a_dataset(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"directory has no meta\.json"):
        load_dataset(str(tmp_path))
    assert detect_format(tmp_path) is None


def test_bad_data_behind_a_good_spec_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        load_dataset(f"amazon:{tmp_path / 'absent'}")
    (tmp_path / "X.inter.json").write_text("{")
    with pytest.raises(DataError, match=r"X\.inter\.json: malformed JSON"):
        load_dataset(str(tmp_path))


def test_synthetic_round_trip(tmp_path: Path) -> None:
    ds = generate(SyntheticConfig(num_users=120, num_items=90, seed=5))
    out = save_dataset(ds, tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == [
        "indptr.npy",
        "items.jsonl",
        "items.npy",
        "meta.json",
        "personas.npy",
        "timestamps.npy",
        "users.json",
    ]
    for npy in out.glob("*.npy"):  # plain integer arrays: loadable without pickle
        assert np.load(npy, allow_pickle=False).dtype == np.int64
    _assert_same(ds, load_saved_dataset(out))


def test_overwrite_rules(tmp_path: Path) -> None:
    synthetic = generate(SyntheticConfig(num_users=30, num_items=60))
    out = save_dataset(synthetic, tmp_path / "out")
    amazon = load_dataset(str(_amazon_dir(tmp_path / "amz")))
    save_dataset(amazon, out)  # replacing a saved dataset drops its stale personas/timestamps
    assert not (out / "personas.npy").exists() and not (out / "timestamps.npy").exists()
    _assert_same(amazon, load_saved_dataset(out))
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty and not a saved dataset"):
        save_dataset(amazon, other)
    assert (other / "notes.txt").read_text() == "keep me"


def _corrupt(out: Path, name: str, content: str | bytes | None) -> None:
    path = out / name
    if content is None:
        path.unlink()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("meta.json", None, r"meta\.json: file not found"),
        ("meta.json", '{"format": "other", "version": 1}', r"format 'other' version 1, expected"),
        ("meta.json", '{"format": "reasonrec.dataset", "version": 1}', r"missing or bad field"),
        ("items.jsonl", None, r"items\.jsonl: file not found"),
        ("items.jsonl", '{"item_id": "0"}\n', r"items\.jsonl: line 1: bad item record"),
        ("items.jsonl", "not json\n", r"items\.jsonl: line 1: bad item record"),
        ("users.json", "[1, 2", r"users\.json: unreadable"),
        ("users.json", '["a"]', r"users\.json: expected a list of 30 user ids"),
        ("items.npy", None, r"items\.npy: file not found"),
        ("indptr.npy", b"garbage", r"indptr\.npy: not a plain \.npy array"),
    ],
)
def test_corrupt_saved_dataset(
    tmp_path: Path, name: str, content: str | bytes | None, message: str
) -> None:
    out = save_dataset(generate(SyntheticConfig(num_users=30, num_items=60)), tmp_path / "out")
    _corrupt(out, name, content)
    with pytest.raises(DataError, match=message):
        load_saved_dataset(out)


def test_saved_arrays_are_checked(tmp_path: Path) -> None:
    out = save_dataset(generate(SyntheticConfig(num_users=30, num_items=60)), tmp_path / "out")
    indptr = np.load(out / "indptr.npy")
    np.save(out / "indptr.npy", indptr[:-1])
    with pytest.raises(DataError, match=r"indptr\.npy: expected integers of shape \(31,\)"):
        load_saved_dataset(out)
    np.save(out / "indptr.npy", indptr[::-1].copy())
    with pytest.raises(DataError, match="must start at 0 and not decrease"):
        load_saved_dataset(out)
    np.save(out / "indptr.npy", indptr)
    items = np.load(out / "items.npy")
    np.save(out / "items.npy", np.full_like(items, 60))
    with pytest.raises(DataError, match="outside the catalogue of 60"):
        load_saved_dataset(out)
    np.save(out / "items.npy", items.astype(np.float64))
    with pytest.raises(DataError, match=r"items\.npy: expected integers"):
        load_saved_dataset(out)
    with pytest.raises(DataError, match="no such directory"):
        load_saved_dataset(tmp_path / "absent")
