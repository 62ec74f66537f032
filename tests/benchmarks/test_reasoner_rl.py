"""benchmarks/reasoner_rl_report.py: section titles → figure names, and the section's description of
a release taken from its manifest (synthetic and Amazon-style manifests, made up here)."""

from __future__ import annotations

from typing import Any

import pytest

from benchmarks.reasoner_rl_report import (
    OFFICE_SECTION,
    SECTION,
    anchor,
    data_sentence,
    figure_name,
    office_line,
    slug,
    start_sentence,
)
from sid_index.errors import ConfigError

SYNTHETIC = "synthetic:users=1500,items=400,categories=24,domains=video+ecommerce,seed=7"


def _synthetic_manifest() -> dict[str, Any]:
    """The shape the `base` stage writes (its reasoner config has a "base" key)."""
    return {
        "configs": {
            "sid_index": {"dataset": SYNTHETIC, "embedder": "minilm",
                          "sids": {"rq": {"levels": [16, 16]}}},
            "reasoner": {"base": "scratch:tiny", "align": {"epochs": 1}, "sft": {"epochs": 2},
                         "num_personas": 20, "max_history": 10},
        },
        "metrics": {
            "sid_index": {"source": "rq-kmeans", "level_sizes": [16, 16, 16], "base_levels": 2},
            "reasoner": {"align_s": 81.2, "sft_s": 558.3},
        },
    }  # fmt: skip


def _office_manifest() -> dict[str, Any]:
    """The shape `reasonrec train reasoner-align/-sft` writes on an imported-SID release."""
    return {
        "configs": {
            "sid_index": {"dataset": "amazon:/data/office", "dataset_name": "Office",
                          "embedder": "hashing", "sids": {"rq": {"levels": [256, 256, 256]}}},
            "reasoner": {"base_model": "scratch:tiny", "align": {"epochs": 1},
                         "sft": {"epochs": 1}, "num_personas": 20, "sft_teacher": "rule",
                         "sft_align_replay": 0.2, "sft_corpus": {"default_thinking_ratio": 0.5}},
        },
        "metrics": {
            "sid_index": {"source": "imported:Office.index.rq-kmeans.json", "num_items": 2420,
                          "level_sizes": [256, 256, 256, 256, 2], "base_levels": 4},
            "reasoner": {"align_warmup/train_seconds": 93.4, "align/train_seconds": 1689.4,
                         "sft/train_seconds": 1178.0},
        },
    }  # fmt: skip


def test_slug_and_figure_names() -> None:
    assert slug(OFFICE_SECTION) == "reasoner_rl_on_amazon_office"
    assert slug("## Reasoner RL: Toys & Games (v2)") == "reasoner_rl_toys_games_v2"
    assert figure_name(OFFICE_SECTION) == "reasoner_rl_on_amazon_office.png"
    assert figure_name(SECTION) == "reasoner_rl_synthetic.png"  # the committed figure
    assert anchor(OFFICE_SECTION) == "reasoner-rl-on-amazon-office"
    with pytest.raises(ConfigError, match="no letters"):
        slug("## --- &&")


def test_synthetic_description_keeps_the_old_facts() -> None:
    m = _synthetic_manifest()
    assert data_sentence(m, ["video", "ecommerce", "video"], ["ecommerce", "video"], 10) == (
        f"Data: `{SYNTHETIC}` (two domains, 20 planted personas), MiniLM SIDs `16,16` + "
        "disambiguation, prompts = the last 10 items."
    )
    assert start_sentence(m, {"num_hidden_layers": 4, "hidden_size": 256}) == (
        "Start: a `scratch:tiny` reasoner (4 layers × 256) after itemic alignment (1 epoch, "
        "81 s) and CoT SFT with the rule teacher (2 epochs, half the samples thinking, 558 s), "
        "built by `python -m benchmarks.reasoner_rl base`."
    )
    m["configs"]["reasoner"]["persona_source"] = "labels"
    labelled = start_sentence(m, {"num_hidden_layers": 4, "hidden_size": 256})
    assert "558 s; its persona part names each user's own labelled persona" in labelled


def test_office_description_comes_from_the_manifest() -> None:
    m = _office_manifest()
    domains = ["Office & School Supplies", "Office Electronics", "Pop"]
    text = data_sentence(m, domains, ["Office Electronics", "Office & School Supplies"], 20)
    assert text.startswith("Data: `amazon:/data/office` (`Office`, 2420 items, three catalogue")
    assert "RL experts for Office & School Supplies and Office Electronics, 20 persona" in text
    assert "SIDs imported from `Office.index.rq-kmeans.json` `256,256,256,256` + disamb" in text
    assert "planted" not in text and text.endswith("prompts = the last 20 items.")
    start = start_sentence(m, {"num_hidden_layers": 4, "hidden_size": 256})
    assert "(1 epoch, 1783 s)" in start  # warm-up + full alignment
    assert "(1 epoch, half the samples thinking, 20% alignment replay, 1178 s)" in start
    assert "benchmarks.reasoner_rl base" not in start


def test_office_line_only_in_the_synthetic_section() -> None:
    without = "# Benchmark results\n\n## Other\n\ntext mentioning " + OFFICE_SECTION + " inline\n"
    with_office = without + "\n" + OFFICE_SECTION + "\n\nnumbers\n"
    assert office_line(OFFICE_SECTION, "amazon:/data/office", with_office) is None
    assert office_line(SECTION, "amazon:/data/office", with_office) is None
    not_run = office_line(SECTION, SYNTHETIC, without)
    assert not_run is not None and not_run.startswith("Office: not run")
    link = office_line(SECTION, SYNTHETIC, with_office)
    assert link is not None and "(#reasoner-rl-on-amazon-office)" in link
    assert "not run" not in link


def test_paired_standard_error_from_kept_ranks() -> None:
    from benchmarks.reasoner_rl_report import _paired

    a = {"ranks": {"thinking": [0, 3, -1, 12, 2], "nothinking": [0, -1, -1, 1, 2]}}
    b = {"ranks": {"thinking": [0, -1, -1, 4, 2]}}
    # Per-user Recall@10 differences a.thinking - b.thinking: 0, 1, 0, -1, 0.
    d = [0.0, 1.0, 0.0, -1.0, 0.0]
    mean = sum(d) / 5
    sd = (sum((x - mean) ** 2 for x in d) / 4) ** 0.5
    assert _paired(a, b, "thinking", "thinking") == pytest.approx(sd / 5**0.5)
    # Thinking vs non-thinking of the same model: differences 0, 1, 0, -1, 0 as well.
    assert _paired(a, a, "thinking", "nothinking") == pytest.approx(sd / 5**0.5)
    assert _paired(a, {}, "thinking", "thinking") is None  # an older report: no ranks
    assert _paired(a, {"ranks": {"thinking": [0]}}, "thinking", "thinking") is None
