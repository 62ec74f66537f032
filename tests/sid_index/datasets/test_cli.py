"""`reasonrec data synth|stats` through the real entry point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from serving.cli import main
from sid_index.datasets.registry import load_dataset
from sid_index.datasets.synthetic import SyntheticConfig, generate


def test_synth_then_stats_round_trip(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    argv = ["data", "synth", "--users", "300", "--items", "120", "--seed", "2", "--out", str(out)]
    assert main([*argv, "--personas", "6", "--max-len", "12"]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}: 300 users, 120 items" in printed and "6 personas" in printed

    loaded = load_dataset(str(out))
    expected = generate(
        SyntheticConfig(num_users=300, num_items=120, seed=2, num_personas=6, max_seq_len=12)
    )
    assert loaded.catalog.texts == expected.catalog.texts
    np.testing.assert_array_equal(loaded.interactions.items, expected.interactions.items)
    assert loaded.persona_names == expected.persona_names

    assert main(["data", "stats", str(out)]) == 0
    text = capsys.readouterr().out
    assert "users         300 (0 with < 3 interactions)" in text
    assert f"interactions  {expected.interactions.num_interactions:,}" in text
    assert "personas      6 (planted, synthetic)" in text

    assert main(["data", "stats", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["users"] == 300 and summary["items"] == 120
    assert summary["length_max"] <= 12
    assert sum(n for n, _ in summary["domains"].values()) == 120
    assert sum(k for _, k in summary["domains"].values()) == summary["interactions"]


def test_stats_of_a_spec(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "stats", "synthetic:users=50,items=60,domains=video+live", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert sorted(summary["domains"]) == ["live", "video"] and summary["users"] == 50


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["data", "stats", "nope"], "reasonrec data: error: dataset spec 'nope'"),
        (["data", "stats", "synthetic:users=-3"], "num_users=-3 must be >= 1"),
        (["data", "synth", "--users", "0", "--out", "{tmp}/x"], "num_users=0 must be >= 1"),
        (["data", "synth", "--domains", "a,a", "--out", "{tmp}/x"], "non-empty and distinct"),
    ],
)
def test_bad_input_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert main([a.replace("{tmp}", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err


def test_synth_refuses_a_foreign_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "keep.txt").write_text("x")
    assert main(["data", "synth", "--users", "10", "--items", "60", "--out", str(tmp_path)]) == 2
    assert "not empty and not a saved dataset" in capsys.readouterr().err
