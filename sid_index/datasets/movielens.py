"""Loader for MovieLens rating logs, as an implicit-feedback sequence dataset.

Two layouts are recognised in a directory:

* ML-1M / ML-10M: `ratings.dat` (`UserID::MovieID::Rating::Timestamp`) and `movies.dat`
  (`MovieID::Title::Genres`, genres `|`-separated; ML-1M is Latin-1 encoded).
* ML-latest / ML-20M / ML-25M: `ratings.csv` (`userId,movieId,rating,timestamp`) and
  `movies.csv` (`movieId,title,genres`, quoted titles), each with a header line.

Every rating counts as an interaction (optionally only ratings >= `min_rating`). A user's
sequence is ordered by timestamp; ties keep file order (stable sort); timestamps are kept.
Items: every movie of the movies file plus any movie that is rated but not listed (title
`movie <id>`, empty text, flagged `MISSING_TEXT`), ordered by integer id. Text is the title and
genres; the genres form the category path; the domain is "movies".
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from sid_index.datasets.amazon import MISSING_TEXT, clean_text
from sid_index.errors import DataError
from sid_index.records import Catalog, Dataset, Interactions

DOMAIN = "movies"
_NO_GENRES = "(no genres listed)"


def _read_text(path: Path) -> str:
    """File text: UTF-8, else Latin-1 (ML-1M's movies.dat is Latin-1)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _find_files(directory: Path) -> tuple[Path, Path, bool]:
    """(ratings path, movies path, is_csv) for the layout present in `directory`."""
    if not directory.is_dir():
        raise DataError(f"{directory}: no such directory")
    for ext, is_csv in ((".dat", False), (".csv", True)):
        ratings, movies = directory / f"ratings{ext}", directory / f"movies{ext}"
        if ratings.exists() or movies.exists():
            for p in (ratings, movies):
                if not p.exists():
                    raise DataError(f"{p}: file not found (needed beside {ratings.name})")
            return ratings, movies, is_csv
    raise DataError(f"{directory}: no ratings.dat/movies.dat or ratings.csv/movies.csv")


def _loadtxt_message(msg: str, skip: int) -> str:
    """Rewrite numpy's row numbers (0-based for bad values, 1-based for bad field counts) as
    1-based file lines, counting `skip` header lines."""
    m = re.search(r"could not convert string (.*) to \w+ at row (\d+), column (\d+)", msg)
    if m:
        line = int(m.group(2)) + 1 + skip
        return f"line {line}, column {m.group(3)}: not a number: {m.group(1)}"
    m = re.search(r"invalid column index \d+ at row (\d+) with (\d+) columns", msg)
    if m:
        return f"line {int(m.group(1)) + skip}: expected 4 fields, found {m.group(2)}"
    return msg


def _read_ratings(path: Path, is_csv: bool) -> np.ndarray:
    """(R, 4) float64 rows (user, movie, rating, timestamp), validated."""
    text = _read_text(path)
    if is_csv:
        header, _, text = text.partition("\n")
        cols = [c.strip() for c in header.split(",")]
        if cols[:4] != ["userId", "movieId", "rating", "timestamp"]:
            raise DataError(f"{path}: header {header.strip()!r} is not userId,movieId,rating,...")
        skip = 1  # line numbers in messages count the header
    else:
        text, skip = text.replace("::", ","), 0
    if not text.strip():
        raise DataError(f"{path}: no ratings")
    try:
        rows = np.loadtxt(io.StringIO(text), delimiter=",", usecols=(0, 1, 2, 3), ndmin=2)
    except ValueError as exc:
        raise DataError(f"{path}: {_loadtxt_message(str(exc), skip)}") from None
    ids = rows[:, [0, 1, 3]]
    bad_ids = (ids != np.floor(ids)) | (ids < 0) | ~np.isfinite(ids)
    bad = np.flatnonzero(bad_ids.any(axis=1) | ~np.isfinite(rows[:, 2]))
    if len(bad):
        r = int(bad[0])
        raise DataError(
            f"{path}: line {r + 1 + skip}: user, movie and timestamp must be non-negative "
            f"integers and the rating finite, got {rows[r].tolist()}"
        )
    return rows


def _read_movies(path: Path, is_csv: bool) -> dict[int, tuple[str, tuple[str, ...]]]:
    """movie id -> (title, genres)."""
    text = _read_text(path)
    if is_csv:
        records = list(csv.reader(io.StringIO(text)))
        if not records or [c.strip() for c in records[0][:3]] != ["movieId", "title", "genres"]:
            raise DataError(f"{path}: header is not movieId,title,genres")
        lines = list(enumerate(records[1:], start=2))
    else:
        lines = [(i, ln.split("::", 2)) for i, ln in enumerate(text.splitlines(), start=1)]
    movies: dict[int, tuple[str, tuple[str, ...]]] = {}
    for lineno, fields in lines:
        if not fields or fields == [""]:
            continue
        if len(fields) != 3 or not fields[0].strip().isdigit():
            raise DataError(f"{path}: line {lineno}: expected movie id, title, genres")
        movie = int(fields[0])
        if movie in movies:
            raise DataError(f"{path}: line {lineno}: duplicate movie id {movie}")
        genres = tuple(g.strip() for g in fields[2].split("|") if g.strip() not in ("", _NO_GENRES))
        movies[movie] = (clean_text(fields[1]), genres)
    return movies


def load_movielens(directory: Path | str, *, min_rating: float | None = None) -> Dataset:
    """Load a MovieLens directory (ML-1M `.dat` or ML-latest `.csv` layout).

    Args:
        directory: the directory holding the ratings and movies files.
        min_rating: keep only ratings >= this (None keeps every rating).
    Returns:
        A `Dataset` named after the directory; raises DataError for missing or malformed input.
    """
    directory = Path(directory)
    ratings_path, movies_path, is_csv = _find_files(directory)
    rows = _read_ratings(ratings_path, is_csv)
    movies = _read_movies(movies_path, is_csv)
    if min_rating is not None:
        rows = rows[rows[:, 2] >= min_rating]
    user, movie, stamp = (rows[:, j].astype(np.int64) for j in (0, 1, 3))

    ids = np.union1d(np.fromiter(movies, dtype=np.int64, count=len(movies)), movie)
    if len(ids) == 0:
        raise DataError(f"{movies_path}: no movies (empty catalogue)")
    titles: list[str] = []
    texts: list[str] = []
    paths: list[tuple[str, ...]] = []
    attributes: list[Mapping[str, str]] = []
    for m in ids.tolist():
        title, genres = movies.get(m, ("", ()))
        text = ". ".join(p for p in (title, f"Genres: {', '.join(genres)}" if genres else "") if p)
        titles.append(title or f"movie {m}")
        texts.append(text)
        paths.append(genres)
        attributes.append({} if text else {MISSING_TEXT: "true"})
    catalog = Catalog(
        item_ids=[str(m) for m in ids.tolist()],
        titles=titles,
        texts=texts,
        categories=paths,
        domains=[DOMAIN] * len(ids),
        attributes=attributes,
    )

    # Two stable sorts = order by (user, timestamp) with file order kept among equal times.
    order = np.argsort(stamp, kind="stable")
    order = order[np.argsort(user[order], kind="stable")]
    users, counts = np.unique(user, return_counts=True)
    indptr = np.zeros(len(users) + 1, dtype=np.int64)
    np.cumsum(counts, out=indptr[1:])
    interactions = Interactions(
        user_ids=[str(u) for u in users.tolist()],
        indptr=indptr,
        items=np.searchsorted(ids, movie[order]).astype(np.int64),
        timestamps=stamp[order],
    )
    return Dataset(directory.name or "movielens", catalog, interactions)
