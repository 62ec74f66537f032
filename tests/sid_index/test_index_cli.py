"""`reasonrec index build|stats` end to end through the real CLI entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.cli import main
from sid_index.release import load_release
from sid_index.sid_index import SIDIndex

SPEC = "synthetic:users=30,items=80,seed=1"


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    rc = main(list(argv))
    out, err = capsys.readouterr()
    return rc, out, err


def write_amazon_without_text(directory: Path) -> Path:
    """A Beauty-like Amazon dataset: interactions only, so no item has text."""
    directory.mkdir()
    inter = {str(u): [(u + j) % 12 for j in range(5)] for u in range(8)}
    (directory / "Tiny.inter.json").write_text(json.dumps(inter), encoding="utf-8")
    return directory


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "rel"
    rc = main(["index", "build", "--dataset", SPEC, "--out", str(out), "--levels", "8,4,4"])
    assert rc == 0
    return out


def test_build_writes_a_verified_release(release: Path) -> None:
    rel = load_release(release, require=("sid_index",))
    index = SIDIndex.load(rel.part("sid_index"))
    assert len(index) == 80 and index.sids.is_unique()
    assert index.sids.level_sizes[:3] == (8, 4, 4) and index.embedder_name == "minilm"
    assert index.item_index is not None and index.item_index.kind == "flat"
    metrics = rel.manifest.metrics["sid_index"]
    assert metrics["unique"] is True and metrics["num_items"] == 80
    assert metrics["collision_rate"] == pytest.approx(index.stats.collision_rate)
    config = rel.manifest.configs["sid_index"]
    assert config["sids"]["rq"]["levels"] == [8, 4, 4]  # type: ignore[index]
    assert config["dataset"] == SPEC and config["embedder"] == "minilm"


def test_stats_and_compare(
    release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = run(capsys, "index", "stats", str(release))
    assert rc == 0
    assert "rq-kmeans" in out and "unique SIDs" in out and "collision rate" in out

    index = SIDIndex.load(release / "sid_index")
    # A coarse assignment with planted duplicates: items i and i+40 share a code.
    assignment = {iid: [f"<a_{i % 40}>"] for i, iid in enumerate(index.catalog.item_ids)}
    cmp = tmp_path / "cmp.json"
    cmp.write_text(json.dumps(assignment), encoding="utf-8")
    rc, out, _ = run(capsys, "index", "stats", str(release), "--compare", str(cmp), "--json")
    assert rc == 0
    ours, theirs = json.loads(out)
    assert ours == index.stats.to_dict()
    assert theirs["source"] == "imported:cmp.json"
    assert theirs["collision_rate"] == 1.0 and theirs["colliding_groups"] == 40
    assert theirs["unique"] is True and theirs["disambiguation_size"] == 2
    rc, out, _ = run(capsys, "index", "stats", str(release), "--compare", str(cmp))
    assert rc == 0 and "imported:cmp.json" in out and "rq-kmeans" in out


def test_build_errors(release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["index", "build", "--dataset", SPEC, "--embedder", "hashing"]
    rc, _, err = run(capsys, *args, "--out", str(release))
    assert rc == 2 and "already exists" in err
    rc, _, err = run(capsys, *args, "--out", str(tmp_path / "a"), "--levels", "8,x")
    assert rc == 2 and "--levels '8,x'" in err
    rc, _, err = run(capsys, *args, "--out", str(tmp_path / "b"), "--levels", "8,0")
    assert rc == 2 and "levels=(8, 0)" in err
    rc, _, err = run(capsys, *args, "--out", str(tmp_path / "c"), "--index-kind", "annoy")
    assert rc == 2 and "unknown item index kind 'annoy'" in err
    rc, _, err = run(capsys, *args, "--out", str(tmp_path / "d"), "--sids", "nope.json")
    assert rc == 2 and "'nope.json' does not exist" in err
    rc, _, err = run(capsys, "index", "build", "--dataset", SPEC, "--embedder", "bert",
                     "--out", str(tmp_path / "e"))  # fmt: skip
    assert rc == 2 and "unknown embedder 'bert'" in err
    # Failed builds leave nothing behind (the release writer discards its staging dir).
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    rc, _, err = run(capsys, "index", "stats", str(tmp_path / "missing"))
    assert rc == 2 and "does not exist" in err
    rc, _, err = run(capsys, "index", "stats", str(release), "--compare", str(tmp_path / "x.json"))
    assert rc == 2 and "x.json' does not exist" in err
    rc, out, _ = run(capsys, "index")
    assert rc == 2 and "build" in out and "stats" in out


def test_overwrite(release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "rel"
    base = ["index", "build", "--dataset", SPEC, "--embedder", "hashing", "--out", str(out)]
    assert run(capsys, *base, "--levels", "4")[0] == 0
    rc, stdout, _ = run(capsys, *base, "--levels", "16", "--overwrite", "--json")
    assert rc == 0 and json.loads(stdout)["level_sizes"][0] == 16
    assert SIDIndex.load(out / "sid_index").sids.level_sizes[0] == 16


def test_text_less_dataset_needs_imported_sids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_amazon_without_text(tmp_path / "tiny")
    out = tmp_path / "rel"
    rc, _, err = run(capsys, "index", "build", "--dataset", str(data), "--out", str(out))
    assert rc == 2
    assert "12 of 12 items have no text to embed ('0', '1'" in err and "--sids" in err
    assert not out.exists()
    sids = tmp_path / "sids.json"
    sids.write_text(json.dumps({str(i): [f"<a_{i % 4}>", f"<b_{i // 4}>"] for i in range(12)}))
    rc, stdout, _ = run(capsys, "index", "build", "--dataset", str(data), "--out", str(out),
                        "--sids", str(sids))  # fmt: skip
    assert rc == 0 and "imported:sids.json" in stdout and "item index: none" in stdout
    index = SIDIndex.load(load_release(out).part("sid_index"))
    np.testing.assert_array_equal(index.sids.codes[5], [1, 1])
    assert index.item_index is None


def test_text_less_dataset_builds_collaborative_sids(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_amazon_without_text(tmp_path / "tiny")
    out = tmp_path / "rel"
    rc, _, err = run(capsys, "index", "build", "--dataset", str(data), "--out", str(out),
                     "--levels", "2,2", "--collab-weight", "1")  # fmt: skip
    assert rc == 0, err
    index = SIDIndex.load(load_release(out).part("sid_index"))
    assert index.embedder_name == "collaborative" and index.item_index is not None
    assert len({tuple(r) for r in index.sids.codes.tolist()}) == 12  # unique after disambiguation
    assert load_release(out).manifest.configs["sid_index"]["collaborative"]["weight"] == 1.0
