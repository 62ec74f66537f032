"""Dataset specs -> `Dataset`, and the on-disk format of a saved dataset.

Spec forms accepted by `load_dataset`:

* `synthetic` or `synthetic:users=2000,items=800,seed=3` — keys are `SyntheticConfig` fields
  (`num_users`, ...) or their short forms (`users`, `items`, `personas`, `categories`);
  tuple values such as `domains` are `+`-separated (`domains=video+live`).
* `amazon:PATH`, `movielens:PATH`, `saved:PATH` — a loader chosen explicitly.
* `PATH` — a directory, detected by its files: `meta.json` of a saved dataset,
  `*.inter.json` (Amazon), or `ratings.dat` / `ratings.csv` (MovieLens).

Saved dataset format (no pickle; `save_dataset` / `load_saved_dataset`), one directory:

* `meta.json`: `{"format": "reasonrec.dataset", "version": 1, "name", "num_users", "num_items",
  "num_interactions", "has_timestamps", "persona_names"}`; written last, so a directory
  without it is an incomplete write.
* `items.jsonl`: one object per catalogue row, in order:
  `{"item_id", "title", "text", "category": [...], "domain", "attributes": {...}}`.
* `users.json`: a JSON list of user ids, in interaction order.
* `indptr.npy` (U+1,), `items.npy` (nnz,) int64 catalogue rows, optional `timestamps.npy`
  (nnz,) and `personas.npy` (U,) int64.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from sid_index.datasets.amazon import load_amazon, read_json_object
from sid_index.datasets.movielens import load_movielens
from sid_index.datasets.synthetic import SyntheticConfig, generate
from sid_index.errors import ConfigError, DataError
from sid_index.records import Catalog, Dataset, Interactions

FORMAT = "reasonrec.dataset"
VERSION = 1
SPEC_FORMS = (
    "synthetic",
    "synthetic:KEY=VALUE,... (keys: SyntheticConfig fields or users/items/personas/categories)",
    "amazon:PATH",
    "movielens:PATH",
    "saved:PATH",
    "PATH (a directory with meta.json, <Name>.inter.json or ratings.dat/ratings.csv)",
)
_ALIASES = {
    "users": "num_users",
    "items": "num_items",
    "personas": "num_personas",
    "categories": "num_categories",
}


def _unknown(spec: str, why: str) -> ConfigError:
    forms = "; ".join(SPEC_FORMS)
    return ConfigError(f"dataset spec {spec!r}: {why}; accepted forms: {forms}")


def parse_synthetic(params: str) -> SyntheticConfig:
    """`"users=2000,items=800,seed=3"` -> SyntheticConfig (ConfigError on bad keys/values)."""
    defaults: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(SyntheticConfig)}
    values: dict[str, Any] = {}
    for part in filter(None, (p.strip() for p in params.split(","))):
        key, sep, raw = part.partition("=")
        key = _ALIASES.get(key.strip(), key.strip())
        if not sep or key not in defaults:
            keys = ", ".join([*defaults, *_ALIASES])
            raise ConfigError(f"synthetic spec: bad parameter {part!r}; keys: {keys}")
        kind: type = type(defaults[key])
        try:
            if kind is tuple:
                values[key] = tuple(v.strip() for v in raw.split("+"))
            else:
                values[key] = kind(raw.strip())
        except ValueError:
            raise ConfigError(
                f"synthetic spec: {key}={raw!r} is not a valid {kind.__name__}"
            ) from None
    return SyntheticConfig(**values)


def detect_format(directory: Path) -> str | None:
    """ "saved", "amazon" or "movielens" for a directory by its files, else None."""
    if (directory / "meta.json").is_file():
        return "saved"
    if any(directory.glob("*.inter.json")):
        return "amazon"
    if any((directory / f"ratings.{ext}").is_file() for ext in ("dat", "csv")):
        return "movielens"
    return None


def load_dataset(spec: str, *, progress: bool = False) -> Dataset:
    """Load (or generate) the dataset a spec names; see the module docstring for the forms.

    Raises ConfigError for a spec of no known form, DataError for bad data behind a good one."""
    kind, sep, rest = spec.partition(":")
    if kind == "synthetic":
        return generate(parse_synthetic(rest), progress=progress)
    loaders: dict[str, Callable[[Path], Dataset]] = {
        "amazon": load_amazon,
        "movielens": load_movielens,
        "saved": load_saved_dataset,
    }
    if sep and kind in loaders:
        if not rest:
            raise _unknown(spec, "missing PATH")
        return loaders[kind](Path(rest))
    path = Path(spec)
    if not path.is_dir():
        raise _unknown(spec, "not a known form and not a directory")
    found = detect_format(path)
    if found is None:
        raise _unknown(spec, "directory has no meta.json, *.inter.json or ratings.dat/.csv")
    return loaders[found](path)


def save_dataset(dataset: Dataset, directory: Path | str) -> Path:
    """Write `dataset` in the saved format (module docstring) and return the directory.

    The directory must be new, empty, or hold a saved dataset (which is replaced)."""
    directory = Path(directory)
    if directory.exists() and any(directory.iterdir()):
        if not (directory / "meta.json").is_file():
            raise DataError(f"{directory}: not empty and not a saved dataset; refusing to write")
        (directory / "meta.json").unlink()  # the old dataset is incomplete from here on
        for stale in ("timestamps.npy", "personas.npy"):
            (directory / stale).unlink(missing_ok=True)
    directory.mkdir(parents=True, exist_ok=True)
    cat, inter = dataset.catalog, dataset.interactions
    attrs = cat.attributes if cat.attributes is not None else [{}] * len(cat)
    with (directory / "items.jsonl").open("w", encoding="utf-8") as fh:
        for row in zip(
            cat.item_ids, cat.titles, cat.texts, cat.categories, cat.domains, attrs, strict=True
        ):
            keys = ("item_id", "title", "text", "category", "domain", "attributes")
            fh.write(json.dumps(dict(zip(keys, row, strict=True)), ensure_ascii=False) + "\n")
    (directory / "users.json").write_text(json.dumps(inter.user_ids), encoding="utf-8")
    np.save(directory / "indptr.npy", inter.indptr.astype(np.int64))
    np.save(directory / "items.npy", inter.items.astype(np.int64))
    if inter.timestamps is not None:
        np.save(directory / "timestamps.npy", inter.timestamps.astype(np.int64))
    if dataset.personas is not None:
        np.save(directory / "personas.npy", dataset.personas.astype(np.int64))
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "name": dataset.name,
        "num_users": len(inter),
        "num_items": len(cat),
        "num_interactions": inter.num_interactions,
        "has_timestamps": inter.timestamps is not None,
        "persona_names": dataset.persona_names,
    }
    (directory / "meta.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
    return directory


def _load_array(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    try:
        arr = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except ValueError as exc:
        raise DataError(f"{path}: not a plain .npy array ({exc})") from None
    if arr.shape != shape or arr.dtype.kind not in "iu":
        raise DataError(f"{path}: expected integers of shape {shape}, got {arr.dtype} {arr.shape}")
    return arr.astype(np.int64, copy=False)


def _read_items(path: Path, expected: int) -> Catalog:
    cols: dict[str, list[Any]] = {
        k: [] for k in ("ids", "titles", "texts", "cats", "doms", "attrs")
    }
    try:
        fh = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    with fh:
        for lineno, line in enumerate(fh, start=1):
            try:
                rec = json.loads(line)
                cols["ids"].append(str(rec["item_id"]))
                cols["titles"].append(str(rec["title"]))
                cols["texts"].append(str(rec["text"]))
                cols["cats"].append(tuple(str(c) for c in rec["category"]))
                cols["doms"].append(str(rec["domain"]))
                cols["attrs"].append({str(k): str(v) for k, v in rec["attributes"].items()})
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise DataError(f"{path}: line {lineno}: bad item record ({exc!r})") from None
    if len(cols["ids"]) != expected:
        raise DataError(f"{path}: {len(cols['ids'])} items, meta.json says {expected}")
    try:
        return Catalog(
            cols["ids"], cols["titles"], cols["texts"], cols["cats"], cols["doms"], cols["attrs"]
        )
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None


def load_saved_dataset(directory: Path | str) -> Dataset:
    """Read a directory written by `save_dataset` (DataError if missing, partial or corrupt)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    meta_path = directory / "meta.json"
    meta = read_json_object(meta_path)
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(
            f"{meta_path}: format {meta.get('format')!r} version {meta.get('version')!r}, "
            f"expected {FORMAT!r} version {VERSION}"
        )
    try:
        U, N, nnz = (int(meta[k]) for k in ("num_users", "num_items", "num_interactions"))
        name, has_ts, persona_names = (
            meta["name"],
            bool(meta["has_timestamps"]),
            meta["persona_names"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise DataError(f"{meta_path}: missing or bad field ({exc!r})") from None
    catalog = _read_items(directory / "items.jsonl", N)
    users_path = directory / "users.json"
    try:
        user_ids = json.loads(users_path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError) as exc:
        raise DataError(f"{users_path}: unreadable ({exc})") from None
    if not isinstance(user_ids, list) or len(user_ids) != U:
        raise DataError(f"{users_path}: expected a list of {U} user ids")
    personas = None
    if (directory / "personas.npy").exists():
        personas = _load_array(directory / "personas.npy", (U,))
    if persona_names is not None and not isinstance(persona_names, list):
        raise DataError(f"{meta_path}: persona_names must be a list or null")
    indptr = _load_array(directory / "indptr.npy", (U + 1,))
    if indptr[0] != 0 or np.any(np.diff(indptr) < 0):
        raise DataError(f"{directory / 'indptr.npy'}: offsets must start at 0 and not decrease")
    items = _load_array(directory / "items.npy", (nnz,))
    stamps = _load_array(directory / "timestamps.npy", (nnz,)) if has_ts else None
    try:
        interactions = Interactions([str(u) for u in user_ids], indptr, items, stamps)
        return Dataset(str(name), catalog, interactions, personas, persona_names)
    except DataError as exc:
        raise DataError(f"{directory}: {exc}") from None
