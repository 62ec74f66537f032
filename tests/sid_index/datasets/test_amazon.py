"""Amazon loader on small files of the TIGER/P5 layout written to tmp_path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sid_index.datasets.amazon import MISSING_TEXT, clean_text, items_missing_text, load_amazon
from sid_index.errors import DataError


def _write(directory: Path, name: str, inter: Any, items: Any | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    text = inter if isinstance(inter, str) else json.dumps(inter, indent=4)
    (directory / f"{name}.inter.json").write_text(text)
    if items is not None:
        text = items if isinstance(items, str) else json.dumps(items, indent=4)
        (directory / f"{name}.item.json").write_text(text)
    return directory


def _item(title: str = "", desc: str = "", brand: str = "", cats: str = "") -> dict[str, str]:
    return {"title": title, "description": desc, "brand": brand, "categories": cats}


def test_loads_catalogue_and_sequences(tmp_path: Path) -> None:
    inter = {"10": [2, 0, 11], "2": [0, 1]}
    items = {
        "0": _item(
            "Pen &amp; Pencil <b>Set</b>", "Smooth\n\n ink&nbsp;pen", "BIC", "Supplies, Pens"
        ),
        "1": _item("Stapler", "", "", "Supplies, Staplers"),
        "2": _item("Phone", "", "VTech", "Electronics, Phones, Cordless"),
        "5": _item("Never bought", "", "", "Electronics"),
    }
    ds = load_amazon(_write(tmp_path / "office", "Office", inter, items))
    cat = ds.catalog
    assert ds.name == "Office"
    # Sorted by integer id: the interacted-only item 11 and never-interacted item 5 are kept.
    assert cat.item_ids == ["0", "1", "2", "5", "11"]
    assert cat.titles[0] == "Pen & Pencil Set"
    assert cat.texts[0] == "Pen & Pencil Set. Brand: BIC. Supplies > Pens. Smooth ink pen"
    assert cat.categories[2] == ("Electronics", "Phones", "Cordless")
    assert cat.attributes is not None and cat.attributes[0] == {"brand": "BIC"}
    # No shared root category: the domain is the first category.
    assert cat.domains[:4] == ["Supplies", "Supplies", "Electronics", "Electronics"]
    assert cat.titles[4] == "item 11" and cat.texts[4] == ""
    assert cat.domains[4] == "Office"
    assert items_missing_text(cat).tolist() == [4]
    # Users sorted by integer id; sequences keep file order and map to catalogue rows.
    assert ds.interactions.user_ids == ["2", "10"]
    assert ds.interactions.sequence(0).items.tolist() == [0, 1]
    assert ds.interactions.sequence(1).items.tolist() == [2, 0, 4]
    assert ds.interactions.timestamps is None


def test_domain_below_shared_root(tmp_path: Path) -> None:
    items = {
        "0": _item("a", cats="Beauty, Skin Care, Face"),
        "1": _item("b", cats="Beauty, Makeup"),
        "2": _item("c", cats="Beauty"),
    }
    ds = load_amazon(_write(tmp_path, "Beauty", {"0": [0, 1, 2]}, items))
    assert ds.catalog.domains == ["Skin Care", "Makeup", "Beauty"]


def test_without_item_file_every_item_is_flagged(tmp_path: Path) -> None:
    ds = load_amazon(_write(tmp_path, "Beauty", {"0": [3, 1], "1": [1, 0]}))
    cat = ds.catalog
    assert cat.item_ids == ["0", "1", "3"]
    assert cat.titles == ["item 0", "item 1", "item 3"]
    assert cat.texts == ["", "", ""]
    assert cat.attributes is not None
    assert all(a == {MISSING_TEXT: "true"} for a in cat.attributes)
    assert cat.domain_names() == ["Beauty"]
    assert items_missing_text(cat).tolist() == [0, 1, 2]


def test_item_with_no_text_is_flagged_not_rejected(tmp_path: Path) -> None:
    items = {"0": _item("Pen", cats="A, B"), "1": _item(), "2": {"title": None, "brand": "Acme"}}
    ds = load_amazon(_write(tmp_path, "X", {"0": [0, 1, 2]}, items))
    assert ds.catalog.titles == ["Pen", "item 1", "item 2"]
    assert ds.catalog.texts[1] == ""
    assert ds.catalog.texts[2] == "Brand: Acme"
    assert items_missing_text(ds.catalog).tolist() == [1]


def test_name_argument_and_autodetect(tmp_path: Path) -> None:
    _write(tmp_path, "A", {"0": [0]})
    _write(tmp_path, "B", {"0": [0, 1]})
    with pytest.raises(DataError, match=r"expected one <Name>\.inter\.json file, found 2"):
        load_amazon(tmp_path)
    assert load_amazon(tmp_path, "B").interactions.num_interactions == 2
    with pytest.raises(DataError, match=r"C\.inter\.json: file not found"):
        load_amazon(tmp_path, "C")


def test_clean_text() -> None:
    assert clean_text("AT&amp;T <br/>Phone&nbsp;&nbsp;\t x  ") == "AT&T Phone x"
    assert clean_text("&lt;i&gt;italic&lt;/i&gt; &#x2019;") == "italic \u2019"
    assert clean_text("5 < 6 and 7 > 3") == "5 < 6 and 7 > 3"


@pytest.mark.parametrize(
    ("inter", "items", "message"),
    [
        ('{"0": [1, 2,]}', None, r"Office\.inter\.json: malformed JSON at line 1 column"),
        ("[1, 2]", None, r"top level must be a JSON object, got list"),
        ({"0": 5}, None, r"user '0': expected a list of item ids"),
        ({"0": [1, "2"]}, None, r"user '0': item at position 1 is '2', not a non-negative"),
        ({"0": [1.5]}, None, r"item at position 0 is 1\.5"),
        ({"0": [True]}, None, r"item at position 0 is True"),
        ({"0": [-1]}, None, r"item at position 0 is -1"),
        ({"u1": [1]}, None, r"user id 'u1' is not a non-negative integer"),
        ('{"0": [1], "0": [2]}', None, r"Office\.inter\.json: duplicate key '0'"),
        ({"0": [1], "00": [2]}, None, r"Office\.inter\.json: duplicate user id 0"),
        ({"0": [1]}, {"7": _item("a"), "007": _item("b")}, r"item\.json: duplicate item id 7"),
        ({"0": [1]}, '{"1": {"title": "a"}, "1": {"title": "b"}}', r"duplicate key '1'"),
        ({"0": [1]}, {"x": _item("a")}, r"item id 'x' is not a non-negative integer"),
        ({"0": [1]}, {"1": "just a string"}, r"item '1': expected an object"),
        ({"0": [1]}, {"1": {"title": 5}}, r"item '1': field 'title' must be a string"),
        ({"0": [1]}, '{"1": {"title": "a"', r"Office\.item\.json: malformed JSON at line 1"),
        ({}, None, r"no items"),
        ({"0": []}, {}, r"no items"),
    ],
)
def test_bad_input_raises_data_error(tmp_path: Path, inter: Any, items: Any, message: str) -> None:
    _write(tmp_path, "Office", inter, items)
    with pytest.raises(DataError, match=message):
        load_amazon(tmp_path)


def test_missing_directory_and_non_utf8(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        load_amazon(tmp_path / "absent")
    with pytest.raises(DataError, match=r"found no"):
        load_amazon(tmp_path)
    (tmp_path / "Z.inter.json").write_bytes(b'{"0": [1], "\xff": [2]}')
    with pytest.raises(DataError, match="not UTF-8"):
        load_amazon(tmp_path)


def test_large_ids_and_empty_sequences(tmp_path: Path) -> None:
    ds = load_amazon(_write(tmp_path, "Big", {"5": [10**12, 3], "6": []}))
    assert ds.catalog.item_ids == ["3", str(10**12)]
    assert ds.interactions.lengths().tolist() == [2, 0]
    np.testing.assert_array_equal(ds.interactions.items, [1, 0])
