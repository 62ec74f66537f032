"""`reasonrec train fast` and `reasonrec eval` end to end on a tiny synthetic release."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from serving.cli import main
from sid_index.release import load_release


@pytest.mark.slow
def test_train_fast_then_eval(tmp_path: Path) -> None:
    rel = tmp_path / "rel"
    spec = "synthetic:users=200,items=120,seed=2"
    assert (
        main(
            [
                "index",
                "build",
                "--dataset",
                spec,
                "--out",
                str(rel),
                "--levels",
                "8,8",
                "--embedder",
                "hashing",
            ]
        )
        == 0
    )
    assert (
        main(
            [
                "train",
                "fast",
                "--release",
                str(rel),
                "--teacher",
                "oracle",
                "--epochs",
                "2",
                "--hidden-size",
                "32",
                "--layers",
                "1",
                "--eval-users",
                "50",
                "--max-items",
                "3",
                "--item-tokens",
                "50",
                "--item-loss-weight",
                "1.0",
            ]
        )
        == 0
    )
    release = load_release(rel, require=["sid_index", "fast_model"])
    # 120 items hashed into 50 item tokens, read after each history item's SID
    assert release.manifest.configs["fast_model"]["item_buckets"] == 50
    assert release.manifest.configs["fast_model"]["item_head_weight"] == 1.0  # decode default
    vocab = json.loads((rel / "fast_model" / "fast_vocab.json").read_text())
    assert vocab["item_buckets"] == 50
    metrics = release.manifest.metrics["fast_model"]
    assert metrics["epochs_run"] == 2 and "valid/recall@10" in metrics
    assert "valid/recall@10_sid" in metrics  # the SID beam alone, logged next to the re-ranked
    runs = tmp_path / "rel.runs"
    assert (runs / "fast" / "curves.png").stat().st_size > 0
    assert len((runs / "fast" / "metrics.jsonl").read_text().splitlines()) == 2
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "eval",
                "--release",
                str(rel),
                "--teachers",
                "none,oracle",
                "--baselines",
                "popular",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["history_window"] == 3  # the window the model was trained (and is served) with
    models = [r["model"] for r in report["rows"]]
    assert models == [
        "fast model, trace: none, item head",
        "fast model, trace: oracle, item head",
        "most popular",
    ]
    assert report["rows"][0]["item_head_weight"] == 1.0
    for r in report["rows"]:
        assert 0.0 <= r["recall@5"] <= r["recall@10"] <= 1.0
    # The traced row carries its paired difference to no trace (same model, same users).
    none, oracle = report["rows"][0], report["rows"][1]
    vs = oracle["vs_no_trace"]
    assert vs["recall@10"] == pytest.approx(oracle["recall@10"] - none["recall@10"])
    assert vs["ndcg@10"] == pytest.approx(oracle["ndcg@10"] - none["ndcg@10"])
    assert vs["recall@10_se"] >= 0 and "vs_no_trace" not in none
    md = out.with_suffix(".md").read_text()
    assert "| most popular |" in md and "fast model, trace: oracle" in md
    # --item-head-weight 0: the SID beam alone
    plain = tmp_path / "plain.json"
    args = ["eval", "--release", str(rel), "--teachers", "none", "--baselines", "none"]
    assert main([*args, "--item-head-weight", "0", "--out", str(plain)]) == 0
    assert [r["model"] for r in json.loads(plain.read_text())["rows"]] == [
        "fast model, trace: none"
    ]


def test_bad_inputs_are_clear_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "fast", "--release", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    rel = tmp_path / "rel"
    assert (
        main(
            [
                "index",
                "build",
                "--dataset",
                "synthetic:users=50,items=60,seed=0",
                "--out",
                str(rel),
                "--levels",
                "4,4",
                "--embedder",
                "hashing",
            ]
        )
        == 0
    )
    assert main(["train", "fast", "--release", str(rel), "--teacher", "psychic"]) == 2
    assert "unknown teacher" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "fast", "--release", str(rel), "--item-tokens", "lots"])
    assert "not 'none', 'all' or a count" in capsys.readouterr().err
    assert main(["eval", "--release", str(rel), "--baselines", "magic"]) == 2
    assert "unknown baselines" in capsys.readouterr().err


@pytest.mark.slow
def test_train_fast_runs_unchanged_under_torchrun(tmp_path: Path) -> None:
    """Two gloo processes on this CPU: both finish, rank 0 writes the release."""
    rel = tmp_path / "rel"
    assert (
        main(
            [
                "index",
                "build",
                "--dataset",
                "synthetic:users=150,items=80,seed=3",
                "--out",
                str(rel),
                "--levels",
                "8,8",
                "--embedder",
                "hashing",
            ]
        )
        == 0
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        str(port),
        "-m",
        "serving.cli",
        "train",
        "fast",
        "--release",
        str(rel),
        "--teacher",
        "dominant",
        "--epochs",
        "2",
        "--hidden-size",
        "32",
        "--layers",
        "1",
        "--eval-users",
        "30",
        "--item-tokens",
        "all",  # DDP over the decodable-logits head (item tokens read, never predicted)
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    release = load_release(rel, require=["fast_model"])
    assert release.manifest.metrics["fast_model"]["epochs_run"] == 2
    log = (tmp_path / "rel.runs" / "fast" / "metrics.jsonl").read_text().splitlines()
    assert len(log) == 2  # rank 0 alone logs
