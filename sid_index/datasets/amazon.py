"""Loader for Amazon-reviews style data as laid out by the TIGER/P5 preprocessing.

A dataset directory holds, for a dataset name such as `Office`:

* `<Name>.inter.json` (required): `{"<user_int>": [item_int, ...]}`, each list in time order.
* `<Name>.item.json` (optional): `{"<item_int>": {"title", "description", "brand",
  "categories"}}`, where `categories` is a comma-separated path, most general first.

Item ids are the decimal strings of the integer keys; the catalogue is ordered by integer id
and users by integer id, so loading is deterministic. An item's text is its title, brand,
category path and description, with HTML entities decoded, tags dropped and whitespace
collapsed. Items with no text at all (every item when `item.json` is absent, as for Beauty, or
items that only occur in `inter.json`) get the title `item <id>`, empty text and the attribute
`MISSING_TEXT`, so the SID builder can demand imported SIDs for them.

Domain of an item: when every categorised item shares one first category (the dataset's root,
e.g. "Beauty"), the category right below the root; otherwise the item's first category; items
without categories (or with only the root) fall back to the dataset name. So a dataset can later
be split by top-level category into domains.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from sid_index.errors import DataError
from sid_index.records import Catalog, Dataset, Interactions

MISSING_TEXT = "missing_text"
"""Attribute key set (to "true") on items that have no text to embed."""

_INT_ID = re.compile(r"\d+")
_TAG = re.compile(r"</?[A-Za-z][^<>]{0,200}>")
_SPACE = re.compile(r"\s+")
_TEXT_FIELDS = ("title", "description", "brand", "categories")


def clean_text(text: str) -> str:
    """Decode HTML entities, drop tags, collapse whitespace (`"A&amp;B <br/> x"` -> `"A&B x"`)."""
    text = html.unescape(_TAG.sub(" ", html.unescape(text)))
    return _SPACE.sub(" ", text.replace("\xa0", " ")).strip()


def items_missing_text(catalog: Catalog) -> np.ndarray:
    """(K,) int64 row indices of catalogue items flagged `MISSING_TEXT`."""
    if catalog.attributes is None:  # no flags recorded: fall back to empty text
        flags = [not t for t in catalog.texts]
    else:
        flags = [MISSING_TEXT in a for a in catalog.attributes]
    return np.flatnonzero(np.array(flags, dtype=bool)).astype(np.int64)


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json object hook: plain `json` silently keeps the last of duplicated keys."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))  # type: ignore[func-returns-value]
    return obj


def read_json_object(path: Path) -> dict[str, Any]:
    """Parse a JSON file whose top level is an object, rejecting duplicate keys.

    Raises DataError naming the file (and line/column for syntax errors)."""
    try:
        with path.open("rb") as fh:
            data = json.load(fh, object_pairs_hook=_no_duplicates)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}"
        ) from None
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except _DuplicateKey as exc:
        raise DataError(f"{path}: duplicate key {exc.key!r}") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: top level must be a JSON object, got {type(data).__name__}")
    return data


def _parse_id(key: str, path: Path, what: str) -> int:
    if not _INT_ID.fullmatch(key):
        raise DataError(f"{path}: {what} id {key!r} is not a non-negative integer")
    return int(key)


def _unique_ids(keys: list[str], path: Path, what: str) -> np.ndarray:
    """Integer ids of JSON keys; "7" and "007" name the same id, so they are duplicates."""
    ids = np.array([_parse_id(k, path, what) for k in keys], dtype=np.int64)
    uniq, counts = np.unique(ids, return_counts=True)
    if len(uniq) != len(ids):
        raise DataError(f"{path}: duplicate {what} id {int(uniq[counts > 1][0])}")
    return ids


def _find_name(directory: Path, name: str | None) -> str:
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    if name is not None:
        return name
    found = sorted(p.name[: -len(".inter.json")] for p in directory.glob("*.inter.json"))
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(found)})"
        raise DataError(f"{directory}: expected one <Name>.inter.json file, found {what}")
    return found[0]


def _read_sequences(path: Path) -> tuple[list[str], list[list[int]]]:
    """User ids (sorted by integer value) and their item-int lists."""
    raw = read_json_object(path)
    users = _unique_ids(list(raw), path, "user")
    keys = list(raw)
    order = np.argsort(users, kind="stable").tolist()
    seqs: list[list[int]] = []
    for u in order:
        seq = raw[keys[u]]
        if not isinstance(seq, list):
            raise DataError(f"{path}: user {keys[u]!r}: expected a list of item ids")
        for pos, x in enumerate(seq):
            if type(x) is not int or x < 0:
                raise DataError(
                    f"{path}: user {keys[u]!r}: item at position {pos} is {x!r}, "
                    "not a non-negative integer id"
                )
        seqs.append(seq)
    return [str(int(users[u])) for u in order], seqs


def _field(path: Path, key: str, record: Mapping[str, Any], field: str) -> str:
    value = record.get(field)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise DataError(f"{path}: item {key!r}: field {field!r} must be a string")
    return clean_text(value)


def _domains(paths: list[tuple[str, ...]], fallback: str) -> list[str]:
    """Top-level category below a shared root category, else the first category."""
    firsts = {p[0] for p in paths if p}
    depth = 1 if len(firsts) == 1 else 0
    return [p[depth] if len(p) > depth else fallback for p in paths]


def load_amazon(directory: Path | str, name: str | None = None) -> Dataset:
    """Load `<Name>.inter.json` (+ optional `<Name>.item.json`) from `directory`.

    Args:
        directory: the dataset directory.
        name: the file stem (e.g. "Office"); found from the single `*.inter.json` when None.
    Returns:
        A `Dataset` named `name`; raises DataError for missing or malformed input.
    """
    directory = Path(directory)
    name = _find_name(directory, name)
    inter_path = directory / f"{name}.inter.json"
    item_path = directory / f"{name}.item.json"
    user_ids, seqs = _read_sequences(inter_path)

    meta: dict[str, Any] = read_json_object(item_path) if item_path.exists() else {}
    meta_ids = _unique_ids(list(meta), item_path, "item")
    flat = np.fromiter((x for s in seqs for x in s), dtype=np.int64, count=sum(map(len, seqs)))
    ids = np.union1d(meta_ids, flat)  # sorted, unique
    if len(ids) == 0:
        raise DataError(f"{inter_path}: no items in {inter_path.name} or {item_path.name}")
    by_id = {int(i): k for i, k in zip(meta_ids.tolist(), meta, strict=True)}

    titles: list[str] = []
    texts: list[str] = []
    paths: list[tuple[str, ...]] = []
    attributes: list[Mapping[str, str]] = []
    for item in ids.tolist():
        key = by_id.get(item)
        record = meta[key] if key is not None else {}
        if not isinstance(record, dict):
            raise DataError(f"{item_path}: item {key!r}: expected an object with text fields")
        title, desc, brand, cats = (_field(item_path, str(key), record, f) for f in _TEXT_FIELDS)
        path = tuple(p for p in (c.strip() for c in cats.split(",")) if p)
        parts = [title, f"Brand: {brand}" if brand else "", " > ".join(path), desc]
        text = ". ".join(p for p in parts if p)
        attrs = {"brand": brand} if brand else {}
        if not text:
            attrs[MISSING_TEXT] = "true"
        titles.append(title or f"item {item}")
        texts.append(text)
        paths.append(path)
        attributes.append(attrs)

    catalog = Catalog(
        item_ids=[str(i) for i in ids.tolist()],
        titles=titles,
        texts=texts,
        categories=paths,
        domains=_domains(paths, name),
        attributes=attributes,
    )
    lengths = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    rows = np.searchsorted(ids, flat)  # every interacted id is in `ids`
    return Dataset(name, catalog, Interactions(user_ids, indptr, rows.astype(np.int64)))
