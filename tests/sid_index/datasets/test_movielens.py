"""MovieLens loader on small ML-1M (`::`) and ML-latest (CSV) files written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest

from sid_index.datasets.amazon import items_missing_text
from sid_index.datasets.movielens import load_movielens
from sid_index.errors import DataError

ML1M_RATINGS = "1::10::5::300\n1::20::3::100\n2::10::4::50\n1::30::4::300\n1::40::2::200\n"
ML1M_MOVIES = "10::Toy Story (1995)::Animation|Children's|Comedy\n20::Jumanji (1995)::Adventure\n"


def _ml1m(directory: Path, ratings: str = ML1M_RATINGS, movies: bytes | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ratings.dat").write_text(ratings)
    # ML-1M's movies.dat is Latin-1 ("Café" below is one byte \xe9).
    (directory / "movies.dat").write_bytes(
        movies if movies is not None else ML1M_MOVIES.encode() + b"50::Caf\xe9 (1990)::Drama\n"
    )
    return directory


def test_ml1m_layout(tmp_path: Path) -> None:
    ds = load_movielens(_ml1m(tmp_path / "ml-1m"))
    cat, inter = ds.catalog, ds.interactions
    assert ds.name == "ml-1m"
    assert cat.item_ids == ["10", "20", "30", "40", "50"]  # rated-only 30, 40; unrated 50 kept
    assert cat.titles[0] == "Toy Story (1995)"
    assert cat.texts[0] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert cat.categories[0] == ("Animation", "Children's", "Comedy")
    assert cat.titles[4] == "Café (1990)"
    assert cat.titles[2] == "movie 30" and cat.texts[2] == ""
    assert items_missing_text(cat).tolist() == [2, 3]
    assert cat.domain_names() == ["movies"]
    assert inter.user_ids == ["1", "2"]
    # User 1 by timestamp: 20@100, 40@200, then 10@300 and 30@300 in file order (stable).
    assert [cat.item_ids[i] for i in inter.sequence(0).items] == ["20", "40", "10", "30"]
    stamps = inter.sequence(0).timestamps
    assert stamps is not None and stamps.tolist() == [100, 200, 300, 300]
    assert [cat.item_ids[i] for i in inter.sequence(1).items] == ["10"]


def test_min_rating_filters(tmp_path: Path) -> None:
    ds = load_movielens(_ml1m(tmp_path), min_rating=4)
    assert ds.interactions.num_interactions == 3
    assert ds.interactions.lengths().tolist() == [2, 1]


def test_csv_layout(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n7,2,4.5,20\n7,1,3.0,10\n3,2,5.0,5\n"
    )
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n1,"Matrix, The (1999)",Action|Sci-Fi\n2,Blank,(no genres listed)\n'
    )
    ds = load_movielens(tmp_path)
    assert ds.catalog.titles == ["Matrix, The (1999)", "Blank"]
    assert ds.catalog.categories == [("Action", "Sci-Fi"), ()]
    assert ds.catalog.texts[1] == "Blank"
    assert ds.interactions.user_ids == ["3", "7"]
    assert ds.interactions.sequence(1).items.tolist() == [0, 1]


@pytest.mark.parametrize(
    ("ratings", "movies", "message"),
    [
        ("1::10::5::300\n1::x::3::100\n", None, r"ratings\.dat: line 2, column 2: not a num"),
        ("1::10::5::300\n1::10::5\n", None, r"ratings\.dat: line 2: expected 4 fields, found 3"),
        ("1::10::nan::300\n", None, r"line 1: user, movie and timestamp must be non-negative"),
        ("1::inf::4::300\n", None, r"line 1: user, movie and timestamp must be non-negative"),
        ("1::10.5::5::300\n", None, r"line 1: user, movie and timestamp must be non-negative"),
        ("-1::10::5::300\n", None, r"line 1: user, movie and timestamp must be non-negative"),
        ("\n", None, r"ratings\.dat: no ratings"),
        (ML1M_RATINGS, b"10::A::Drama\n10::B::Drama\n", r"movies\.dat: line 2: duplicate movie"),
        (ML1M_RATINGS, b"ten::A::Drama\n", r"movies\.dat: line 1: expected movie id, title"),
        (ML1M_RATINGS, b"10::A\n", r"movies\.dat: line 1: expected movie id, title"),
    ],
)
def test_bad_dat_input(tmp_path: Path, ratings: str, movies: bytes | None, message: str) -> None:
    with pytest.raises(DataError, match=message):
        load_movielens(_ml1m(tmp_path, ratings, movies))


def test_bad_csv_input(tmp_path: Path) -> None:
    (tmp_path / "movies.csv").write_text("movieId,title,genres\n1,A,Drama\n")
    (tmp_path / "ratings.csv").write_text("user,item,rating,ts\n1,1,4,1\n")
    with pytest.raises(DataError, match=r"ratings\.csv: header 'user,item,rating,ts'"):
        load_movielens(tmp_path)
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n1,1,x,2\n")
    with pytest.raises(DataError, match=r"ratings\.csv: line 3, column 3"):
        load_movielens(tmp_path)
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,4,1\n")
    (tmp_path / "movies.csv").write_text("id,name\n")
    with pytest.raises(DataError, match=r"movies\.csv: header is not movieId,title,genres"):
        load_movielens(tmp_path)


def test_missing_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such directory"):
        load_movielens(tmp_path / "absent")
    with pytest.raises(DataError, match=r"no ratings\.dat/movies\.dat or ratings\.csv"):
        load_movielens(tmp_path)
    (tmp_path / "ratings.dat").write_text(ML1M_RATINGS)
    with pytest.raises(DataError, match=r"movies\.dat: file not found"):
        load_movielens(tmp_path)
