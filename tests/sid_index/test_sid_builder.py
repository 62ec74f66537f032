"""SID building: disambiguation, stats, bring-your-own import, and the clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from sid_index.embedder import HashingEmbedder
from sid_index.errors import DataError
from sid_index.records import Catalog, Item
from sid_index.rq_kmeans import RQKMeansConfig
from sid_index.sid_builder import (
    SIDBuildConfig,
    build_catalog_sids,
    build_sids,
    disambiguate,
    embed_catalog,
    import_sids,
    read_assignment,
)
from sid_index.sid_stats import SIDStats, compute_stats, format_stats


def catalog(n: int, *, empty: tuple[int, ...] = ()) -> Catalog:
    words = ["stapler", "pen", "paper", "chair", "desk", "lamp", "ink", "folder"]
    return Catalog.from_items(
        [
            Item(
                f"it{i}",
                f"item {i}",
                "" if i in empty else f"{words[i % 8]} {words[(i * 3) % 8]} number {i % 5}",
            )
            for i in range(n)
        ]
    )


def write(path: Path, obj: object) -> Path:
    path.write_text(json.dumps(obj), encoding="utf-8")
    return path


# --- disambiguation -------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    codes=arrays(
        np.int32,
        st.tuples(st.integers(1, 60), st.integers(1, 3)),
        elements=st.integers(0, 2),  # tiny alphabet: many collisions
    ),
    round_pow2=st.booleans(),
)
def test_disambiguation_always_unique(codes: np.ndarray, round_pow2: bool) -> None:
    out, size = disambiguate(codes, round_pow2=round_pow2)
    assert out.shape == (len(codes), codes.shape[1] + 1)
    np.testing.assert_array_equal(out[:, :-1], codes)
    assert len(np.unique(out, axis=0)) == len(codes)
    _, counts = np.unique(codes, axis=0, return_counts=True)
    assert out[:, -1].max() == counts.max() - 1
    if round_pow2:
        assert size >= counts.max() and size & (size - 1) == 0 and size < 2 * counts.max()
    else:
        assert size == counts.max()


def test_disambiguation_numbers_in_row_order() -> None:
    codes = np.array([[1, 0], [0, 0], [1, 0], [1, 0], [0, 0], [2, 2]])
    out, size = disambiguate(codes)
    np.testing.assert_array_equal(out[:, -1], [0, 0, 1, 2, 1, 0])
    assert size == 4  # max group 3, rounded up to a power of two
    assert disambiguate(codes, round_pow2=False)[1] == 3


# --- stats on hand-made cases ---------------------------------------------------------------


def test_stats_hand_made() -> None:
    codes = np.array([[0, 0], [0, 0], [0, 1], [1, 0], [1, 0], [1, 0]])
    s = compute_stats(codes, (2, 4), base_levels=2, source="hand")
    assert s.num_items == 6 and s.num_levels == 2
    assert s.collision_rate == pytest.approx(5 / 6)
    assert s.colliding_groups == 2 and s.max_group_size == 3
    assert s.codes_used == (2, 2) and s.utilization == (1.0, 0.5)
    assert s.prefix_collision_rate == (1.0, pytest.approx(5 / 6))
    assert not s.unique and s.disambiguation_size == 0

    full, size = disambiguate(codes)
    t = compute_stats(full, (2, 4, size), base_levels=2, source="hand+d")
    assert t.unique and t.disambiguation_size == 4
    assert t.collision_rate == pytest.approx(5 / 6)  # measured before disambiguation
    assert t.prefix_collision_rate[-1] == 0.0
    assert t.utilization[-1] == pytest.approx(3 / 4)


def test_stats_no_collisions_and_roundtrip() -> None:
    codes = np.array([[0, 1], [1, 1], [2, 0]])
    s = compute_stats(codes, (3, 2), base_levels=2, source="x", embed_seconds=1.5)
    assert s.collision_rate == 0.0 and s.colliding_groups == 0 and s.max_group_size == 1
    assert s.unique
    d = json.loads(json.dumps(s.to_dict()))
    assert SIDStats.from_dict(d) == s
    with pytest.raises(DataError, match="where-name: missing keys"):
        SIDStats.from_dict({"source": "x"}, where="where-name")


def test_stats_large_code_space_uses_byte_keys() -> None:
    # 20 levels of 2**20 codes overflow an int64 mixed radix; grouping must still be exact.
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**20, size=(50, 20))
    codes[7] = codes[3]
    s = compute_stats(codes, (2**20,) * 20, base_levels=20, source="big")
    assert s.colliding_groups == 1 and s.max_group_size == 2
    assert s.collision_rate == pytest.approx(2 / 50)


def test_format_stats_side_by_side() -> None:
    a = compute_stats(np.array([[0], [1]]), (2,), base_levels=1, source="ours", notes=("n1",))
    b = compute_stats(np.array([[0], [0]]), (1,), base_levels=1, source="theirs")
    text = format_stats([a, b])
    assert "ours" in text and "theirs" in text and "note (ours): n1" in text
    assert "unique SIDs" in text and "NO" in text


# --- building -------------------------------------------------------------------------------


def test_build_sids_unique_with_disambiguation() -> None:
    emb = HashingEmbedder().embed(catalog(200).texts)  # 200 items, many identical texts
    cfg = SIDBuildConfig(rq=RQKMeansConfig(levels=(8, 4, 2), niter=5))
    build = build_sids(emb, cfg, embed_seconds=0.25)
    sids = build.sids
    assert sids.is_unique() and sids.num_levels == 4
    assert sids.level_sizes[:3] == build.quantizer.level_sizes  # type: ignore[union-attr]
    s = build.stats
    assert s.source == "rq-kmeans" and s.base_levels == 3 and s.unique
    assert s.disambiguation_size == sids.level_sizes[-1] >= s.max_group_size > 1
    assert s.embed_seconds == 0.25 and s.quantize_seconds is not None
    # Identical texts get identical quantized codes, so they must collide before level d.
    assert s.collision_rate > 0


def test_build_reports_capped_codebooks() -> None:
    emb = HashingEmbedder().embed(catalog(12).texts)
    build = build_sids(emb, SIDBuildConfig(rq=RQKMeansConfig(levels=(256, 256))))
    assert build.sids.level_sizes[0] < 256
    assert any("level a: codebook capped" in n for n in build.stats.notes)
    assert build.sids.is_unique()


def test_build_catalog_sids_and_errors() -> None:
    build, emb = build_catalog_sids(
        catalog(30), HashingEmbedder(), SIDBuildConfig(rq=RQKMeansConfig(levels=(4, 4)))
    )
    assert emb.shape == (30, 384) and build.sids.num_items == 30
    with pytest.raises(DataError, match=r"2 of 10 items have no text .*'it3', 'it7'.*--sids"):
        embed_catalog(catalog(10, empty=(3, 7)), HashingEmbedder())
    with pytest.raises(DataError, match="empty catalogue"):
        embed_catalog(Catalog.from_items([]), HashingEmbedder())
    with pytest.raises(DataError, match="empty catalogue"):
        build_sids(np.zeros((0, 4), dtype=np.float32), SIDBuildConfig())


# --- bring your own SIDs --------------------------------------------------------------------


def test_import_assignment(tmp_path: Path) -> None:
    cat = catalog(4)
    path = write(
        tmp_path / "a.json",
        {
            "it0": ["<a_3>", "<b_1>"],
            "it1": ["<a_0>", "<b_5>"],
            "it2": ["<a_3>", "<b_0>"],
            "it3": ["<a_1>", "<b_1>"],
            "other": ["<a_9>", "<b_9>"],
        },
    )
    build = import_sids(path, cat)
    np.testing.assert_array_equal(build.sids.codes, [[3, 1], [0, 5], [3, 0], [1, 1]])
    assert build.sids.level_sizes == (4, 6)  # max code + 1, over catalogue items only
    assert build.quantizer is None
    s = build.stats
    assert s.source == "imported:a.json" and s.unique and s.disambiguation_size == 0
    assert s.embed_seconds is None and s.quantize_seconds is None
    assert any("1 items in a.json are not in the catalogue" in n for n in s.notes)
    assert build.sids.sid_text(0) == "<a_3><b_1>"


def test_import_with_duplicates_appends_disambiguation(tmp_path: Path) -> None:
    cat = catalog(5)
    path = write(
        tmp_path / "dup.json",
        {f"it{i}": ["<a_1>", f"<b_{0 if i < 3 else i}>"] for i in range(5)},
    )
    build = import_sids(path, cat)
    assert build.sids.is_unique() and build.sids.num_levels == 3
    np.testing.assert_array_equal(build.sids.codes[:, 2], [0, 1, 2, 0, 0])
    s = build.stats
    assert s.base_levels == 2 and s.disambiguation_size == 4
    assert s.colliding_groups == 1 and s.max_group_size == 3
    assert s.collision_rate == pytest.approx(3 / 5)
    assert any("appended disambiguation level 'c' of size 4" in n for n in s.notes)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ("[]", "expected a non-empty object"),
        ("{}", "expected a non-empty object"),
        ('{"it0": "<a_1><b_2>"}', "item 'it0': expected a list"),
        ('{"it0": []}', "item 'it0': expected a list"),
        ('{"it0": ["<a_1>", "<c_2>"]}', r"item 'it0': token '<c_2>' at level 1 is not '<b_N>'"),
        ('{"it0": ["<a_x>"]}', "token '<a_x>'"),
        ('{"it0": ["<a_-1>"]}', "token '<a_-1>'"),
        ('{"it0": [1, 2]}', "token 1 at level 0"),
        (
            '{"it0": ["<a_1>", "<b_2>"], "it1": ["<a_1>"]}',
            "item 'it1' has 1 levels, item 'it0' has 2",
        ),
    ],
)
def test_malformed_assignment(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as exc:
        read_assignment(path)
    assert "bad.json" in str(exc.value)


def test_import_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        import_sids(tmp_path / "missing.json", catalog(2))
    path = write(tmp_path / "part.json", {"it0": ["<a_0>"], "it2": ["<a_1>"]})
    with pytest.raises(
        DataError, match=r"part.json: 2 catalogue items have no SID \('it1', 'it3'\)"
    ):
        import_sids(path, catalog(4))
    with pytest.raises(DataError, match="empty catalogue"):
        import_sids(path, Catalog.from_items([]))
