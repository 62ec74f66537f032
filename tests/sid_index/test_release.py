"""Release directories: atomic writes, checksum verification, tamper and partial detection."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from sid_index.errors import ReleaseError
from sid_index.release import MANIFEST_NAME, ReleaseWriter, load_release


def _write(out: Path, **kw: object) -> Path:
    with ReleaseWriter(out, **kw) as w:  # type: ignore[arg-type]
        d = w.part_dir("sid_index")
        np.save(d / "codes.npy", np.arange(12, dtype=np.int32).reshape(4, 3))
        (d / "config.json").write_text('{"levels": [4, 4, 4]}')
        w.set_config("sid_index", {"levels": [4, 4, 4]})
        w.set_metrics("sid_index", {"collision_rate": 0.25})
    return out


def test_round_trip_records_files_configs_metrics(tmp_path: Path) -> None:
    rel = load_release(_write(tmp_path / "r1", version="v1"), require=["sid_index"])
    assert rel.version == "v1"
    assert rel.manifest.parts == ["sid_index"]
    assert set(rel.manifest.files) == {"sid_index/codes.npy", "sid_index/config.json"}
    assert rel.manifest.metrics["sid_index"]["collision_rate"] == 0.25
    codes = np.load(rel.part("sid_index") / "codes.npy", allow_pickle=False)
    assert codes.shape == (4, 3)


@pytest.mark.parametrize("mode", ["modify", "truncate", "delete", "extra", "manifest"])
def test_tampered_or_partial_release_is_refused(tmp_path: Path, mode: str) -> None:
    out = _write(tmp_path / "r")
    target = out / "sid_index" / "config.json"
    if mode == "modify":
        target.write_text('{"levels": [4, 4, 5]}')  # same size, different bytes
    elif mode == "truncate":
        target.write_text("{}")
    elif mode == "delete":
        target.unlink()
    elif mode == "extra":
        (out / "sid_index" / "evil.py").write_text("print('hi')")
    else:
        (out / MANIFEST_NAME).unlink()
    with pytest.raises(ReleaseError):
        load_release(out)


def test_malformed_and_future_manifest(tmp_path: Path) -> None:
    out = _write(tmp_path / "r")
    (out / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ReleaseError, match="malformed"):
        load_release(out)
    raw = {"format_version": 99, "version": "x", "created_at": "", "parts": [], "files": {}}
    (out / MANIFEST_NAME).write_text(json.dumps(raw))
    with pytest.raises(ReleaseError, match="newer"):
        load_release(out)


def test_missing_part_and_directory(tmp_path: Path) -> None:
    out = _write(tmp_path / "r")
    with pytest.raises(ReleaseError, match="fast_model"):
        load_release(out, require=["fast_model"])
    with pytest.raises(ReleaseError, match="does not exist"):
        load_release(tmp_path / "nope")


def test_failure_inside_writer_leaves_previous_release(tmp_path: Path) -> None:
    out = _write(tmp_path / "r", version="old")
    with pytest.raises(RuntimeError), ReleaseWriter(out, overwrite=True, version="new") as w:
        (w.part_dir("sid_index") / "codes.npy").write_bytes(b"half")
        raise RuntimeError("trainer crashed")
    assert load_release(out).version == "old"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # staging cleaned


def test_refuses_to_clobber_without_overwrite(tmp_path: Path) -> None:
    out = _write(tmp_path / "r")
    with pytest.raises(ReleaseError, match="not empty"):
        ReleaseWriter(out)


def test_extend_base_release_adds_a_part(tmp_path: Path) -> None:
    base = load_release(_write(tmp_path / "r", version="v1"))
    with ReleaseWriter(base.path, base=base, version="v2") as w:
        (w.part_dir("fast_model") / "config.json").write_text("{}")
        w.set_metrics("fast_model", {"recall@10": 0.5})
    rel = load_release(base.path, require=["sid_index", "fast_model"])
    assert rel.version == "v2"
    assert rel.manifest.metrics["sid_index"]["collision_rate"] == 0.25
    assert rel.manifest.metrics["fast_model"]["recall@10"] == 0.5
