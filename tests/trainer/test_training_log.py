"""The metrics log writes parseable JSONL and a PNG of the curves."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from sid_index.errors import DataError
from trainer.training_log import MetricsLog, plot_curves, progress, read_log


def test_jsonl_round_trip_and_png(tmp_path: Path) -> None:
    path = tmp_path / "run" / "metrics.jsonl"
    with MetricsLog(path) as log:
        for step in progress(range(5), desc="test", disable=True):
            log.log(step * 10, {"train/loss": 1.0 / (step + 1)}, epoch=step)
        log.log(40, {"valid/recall@10": 0.25, "train/loss": float("nan")}, epoch=4)
        png = log.plot(tmp_path / "curves.png")

    lines = path.read_text().splitlines()
    assert len(lines) == 6
    first = json.loads(lines[0])
    assert first["step"] == 0 and first["epoch"] == 0 and first["train/loss"] == 1.0
    assert json.loads(lines[-1])["train/loss"] is None  # NaN written as strict-JSON null

    records = read_log(path)
    assert [r.step for r in records] == [0, 10, 20, 30, 40, 40]
    assert records[2].metrics == {"train/loss": pytest.approx(1 / 3)}
    assert math.isnan(records[-1].metrics["train/loss"])
    assert records[-1].metrics["valid/recall@10"] == 0.25

    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 1000


def test_append_keeps_earlier_records(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    with MetricsLog(path) as log:
        log.log(1, {"a": 1.0})
    with MetricsLog(path, append=True) as log:
        log.log(2, {"a": 2.0})
        assert [r.step for r in log.records] == [1, 2]
    assert [r.metrics["a"] for r in read_log(path)] == [1.0, 2.0]


def test_errors_name_the_problem(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "m.jsonl")
    with pytest.raises(DataError, match="clash"):
        log.log(0, {"step": 1.0})
    log.close()
    with pytest.raises(DataError, match="closed"):
        log.log(0, {"a": 1.0})
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 0, "a": 1}\nnot json\n')
    with pytest.raises(DataError, match=r"bad\.jsonl:2"):
        read_log(bad)
    with pytest.raises(DataError, match="no metrics"):
        plot_curves([], tmp_path / "empty.png")
