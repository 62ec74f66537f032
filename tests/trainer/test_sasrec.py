"""SASRec: batching, masking, learning a planted pattern, save/load round trip."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sid_index.datasets.splits import LeaveOneOutSplit
from sid_index.errors import ConfigError, DataError
from sid_index.records import Interactions
from trainer.baselines.popularity import evaluate_popularity
from trainer.baselines.sasrec import SASRec, SASRecConfig, encode_items, load_sasrec, save_sasrec
from trainer.baselines.train_sasrec import (
    SASRecTrainConfig,
    evaluate,
    train_sasrec,
    training_windows,
)
from trainer.training_log import read_log


def _successor_split(num_users: int, num_items: int, seed: int) -> LeaveOneOutSplit:
    """Sequences where item i is always followed by item (i + 1) mod N, random starts."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 13, num_users)
    start = rng.integers(0, num_items, num_users)
    offsets = np.arange(lengths.max())
    full = (start[:, None] + offsets[None, :]) % num_items  # (U, Lmax)
    mask = offsets[None, :] < lengths[:, None]
    interactions = Interactions(
        user_ids=[f"u{u}" for u in range(num_users)],
        indptr=np.concatenate([[0], np.cumsum(lengths)]),
        items=full[mask],
    )
    return LeaveOneOutSplit.from_interactions(interactions)


def test_encode_items_left_pads_and_truncates() -> None:
    items = np.array([10, 11, 12, 20, 30, 31, 32, 33, 34])
    tokens = encode_items(items, np.array([0, 3, 3, 4]), np.array([3, 4, 3, 9]), 4)
    assert tokens.tolist() == [
        [0, 11, 12, 13],
        [0, 0, 0, 21],
        [0, 0, 0, 0],
        [32, 33, 34, 35],  # 5 items, the most recent 4 kept
    ]


def test_training_windows_cover_every_prefix_once() -> None:
    # One user of 12 items, max_len 4: targets are items 1..11, each exactly once.
    items = np.arange(100, 112)
    inputs, targets = training_windows(np.array([0, 1, 13 - 1]), np.r_[7, items][:12], 4)
    # user 0 has a single item → no window; user 1 has 11 items → ceil(10 / 4) = 3 windows.
    assert len(inputs) == 3
    real = targets > 0
    assert np.array_equal(inputs > 0, real)  # aligned masks
    seq = np.r_[7, items][1:12]
    got = np.sort(targets[real] - 1)
    assert got.tolist() == seq[1:].tolist()
    # Every target is the item right after its input in the sequence.
    nxt = {int(a): int(b) for a, b in itertools.pairwise(seq)}
    assert all(
        nxt[int(a) - 1] == int(b) - 1 for a, b in zip(inputs[real], targets[real], strict=True)
    )


def test_padding_does_not_change_scores() -> None:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(hidden_size=16, max_len=8, dropout=0.1), num_items=20).eval()
    short = torch.tensor([[3, 4, 5]])
    padded = torch.tensor([[0, 0, 0, 0, 0, 3, 4, 5]])
    with torch.no_grad():
        a = model.item_logits(model(short)[:, -1])
        b = model.item_logits(model(padded)[:, -1])
    assert torch.allclose(a, b, atol=1e-5)
    assert not torch.isnan(model(padded)).any()


def test_exclude_seen_drops_history() -> None:
    torch.manual_seed(0)
    model = SASRec(SASRecConfig(hidden_size=16, max_len=6), num_items=8).eval()
    tokens = torch.tensor([[0, 0, 1, 2, 3, 4]])  # items 0..3
    top = model.recommend(tokens, 4, exclude_seen=True)
    assert sorted(top[0].tolist()) == [4, 5, 6, 7]
    with pytest.raises(ConfigError, match="k="):
        model.recommend(tokens, 9)


def test_learns_planted_successor_pattern(tmp_path: Path) -> None:
    split = _successor_split(num_users=400, num_items=60, seed=0)
    config = SASRecTrainConfig(
        model=SASRecConfig(hidden_size=32, num_layers=1, max_len=10, dropout=0.1),
        lr=5e-3,
        batch_size=64,
        max_epochs=8,
        patience=8,
        show_progress=False,
        num_threads=1,
    )
    result = train_sasrec(split, config, tmp_path / "run", num_items=60)

    _, pop = evaluate_popularity(split, num_items=60)
    assert pop.recall[10] < 0.35  # near-uniform items: popularity is close to 10/60
    assert result.test.recall[10] > 0.9
    assert result.test.ndcg[10] > pop.ndcg[10] + 0.5
    assert 1 <= result.best_epoch <= result.epochs_run <= 8

    records = read_log(result.log_path)
    assert len(records) == result.epochs_run
    assert {"train/loss", "valid/recall@10", "valid/ndcg@5"} <= set(records[0].metrics)
    assert records[-1].metrics["train/loss"] < records[0].metrics["train/loss"]
    assert result.curve_path.read_bytes()[:4] == b"\x89PNG"


def test_save_load_round_trip_gives_identical_scores(tmp_path: Path) -> None:
    torch.manual_seed(1)
    config = SASRecConfig(hidden_size=16, num_layers=2, num_heads=2, max_len=7, norm_first=False)
    model = SASRec(config, num_items=30).eval()
    save_sasrec(model, tmp_path / "m")
    assert json.loads((tmp_path / "m" / "config.json").read_text())["num_items"] == 30
    loaded = load_sasrec(tmp_path / "m")
    assert loaded.config == config
    tokens = torch.tensor([[0, 0, 3, 9, 1, 2, 5], [4, 8, 15, 16, 23, 29, 30]])
    with torch.no_grad():
        assert torch.equal(model.item_logits(model(tokens)), loaded.item_logits(loaded(tokens)))

    split = _successor_split(num_users=50, num_items=30, seed=2)
    a = evaluate(model, split.test_inputs(), ks=(5, 10), batch_size=16)
    b = evaluate(loaded, split.test_inputs(), ks=(5, 10), batch_size=16)
    assert a == b


def test_bad_checkpoint_and_config_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="missing"):
        load_sasrec(tmp_path)
    model = SASRec(SASRecConfig(hidden_size=8, max_len=4), num_items=5)
    save_sasrec(model, tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["num_items"] = 6
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(DataError, match="do not match"):
        load_sasrec(tmp_path)
    with pytest.raises(ConfigError, match="divisible"):
        SASRecConfig(hidden_size=10, num_heads=3)
    with pytest.raises(ConfigError, match="dropout"):
        SASRecConfig(dropout=1.0)
    with pytest.raises(ConfigError, match="select_metric"):
        SASRecTrainConfig(select_metric="recall@20")
    with pytest.raises(DataError, match="max_len"):
        model(torch.ones(1, 5, dtype=torch.long))
    with pytest.raises(DataError, match="outside the catalogue"):
        train_sasrec(_successor_split(20, 30, 0), SASRecTrainConfig(), tmp_path, num_items=10)
