"""benchmarks/fast_model_amazon.py: SASRec's row read from a Baselines section, the SID
description from a release manifest, and the rendered section (inputs made up here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from benchmarks.fast_model_amazon import (
    add_sid_beam_rows,
    markdown,
    sasrec_row,
    sids_description,
)

BASELINES = """# Benchmark results

## Baselines (SASRec, most-popular)

### Office (4,905 users, 2,420 items, 53,258 interactions) — test

| model | R@5 | N@5 | R@10 | N@10 | hyper-parameters | train time | epochs |
|---|---|---|---|---|---|---|---|
| most-popular | 0.0004 | 0.0002 | 0.0006 | 0.0002 | train counts | 0.00s | – |
| **SASRec (full softmax)** | 0.0636 | 0.0367 | 0.1011 | 0.0486 | d=64 | 141s | 15 |

### Beauty (22,363 users, 12,101 items, 198,502 interactions) — test

| model | R@5 | N@5 | R@10 | N@10 | hyper-parameters | train time | epochs |
|---|---|---|---|---|---|---|---|
| **SASRec (full softmax)** | 0.0553 | 0.0313 | 0.0834 | 0.0404 | d=64 | 1280s | 9 |
"""


def test_sasrec_row_is_read_under_the_right_dataset(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    results.write_text(BASELINES)
    assert sasrec_row("office", results) == {
        "recall@5": 0.0636, "ndcg@5": 0.0367, "recall@10": 0.1011, "ndcg@10": 0.0486,
    }  # fmt: skip
    assert sasrec_row("beauty", results)["recall@10"] == 0.0834  # type: ignore[index]
    results.write_text("# Benchmark results\n")
    assert sasrec_row("office", results) is None
    assert sasrec_row("office", tmp_path / "missing.md") is None


def _manifest(weight: float) -> dict[str, Any]:
    return {
        "configs": {
            "sid_index": {
                "embedder": "minilm",
                "sids": {"rq": {"levels": [256, 256, 256]}},
                "collaborative": {"weight": weight},
            }
        }
    }


def test_sid_description_follows_the_collaborative_weight() -> None:
    assert "text embeddings mixed with item co-occurrence" in sids_description(_manifest(0.5))
    assert "(weight 0.5)" in sids_description(_manifest(0.5))
    assert "alone (no item text)" in sids_description(_manifest(1.0))
    assert sids_description(_manifest(0.0)).startswith("minilm text embeddings, residual k-means")


def test_section_compares_with_sasrec_and_says_below_or_above() -> None:
    row = {"recall@5": 0.05, "ndcg@5": 0.03, "recall@10": 0.09, "ndcg@10": 0.045}
    summary: dict[str, Any] = {
        "date": "2026-11-25 01:24 UTC", "machine": "a CPU", "load": "1.0 / 1.0 / 1.0",
        "sids": "ours", "eval": {
            "users": 10, "catalogue": 20, "beams": 20,
            "rows": [{"model": "fast model, trace: none", **row}],
        },
        "fast_model": {"best_epoch": 3, "epochs_run": 5, "train_seconds": 120.0},
        "sasrec": {"recall@5": 0.06, "ndcg@5": 0.04, "recall@10": 0.10, "ndcg@10": 0.05},
        "notes": ["a note"], "figure": "figures/fast_model_office.png",
        "commands": ["reasonrec index build --dataset amazon:X --out R"],
    }  # fmt: skip
    text = markdown(summary)
    assert "| fast model, trace: none | 0.0500 | 0.0300 | 0.0900 | 0.0450 |" in text
    assert 'SASRec, full softmax (section "Baselines") | 0.0600' in text
    assert "Recall@10 0.0900: below SASRec's 0.1000" in text
    assert "- a note" in text and "![curves](figures/fast_model_office.png)" in text
    assert "reasonrec index build --dataset amazon:X --out R" in text
    summary["eval"]["rows"][0]["recall@10"] = 0.11
    assert "above SASRec's 0.1000" in markdown(summary)


def test_sid_beam_rows_go_between_the_fast_model_and_the_baselines() -> None:
    rows = [{"model": "fast model, trace: none, item head"}, {"model": "most popular"}]
    add_sid_beam_rows(rows, [{"model": "fast model, trace: none", "recall@10": 0.1}])
    assert [r["model"] for r in rows] == [
        "fast model, trace: none, item head",
        "fast model, trace: none (SID beam alone, no item-head re-ranking)",
        "most popular",
    ]
    assert rows[1]["recall@10"] == 0.1
