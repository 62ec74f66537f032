"""`reasonrec train reasoner-rl / reasoner-unify` end to end on a tiny synthetic release."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from serving.cli import main
from sid_index.release import ReleaseWriter, load_release
from trainer.pipeline import open_workspace
from trainer.reasoner.model import ScratchArch, prepare_reasoner
from trainer.rl.cli import parse_reward

ARCH = ScratchArch(
    num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=2, intermediate_size=64,
    max_positions=512, bpe_vocab_size=400,
)  # fmt: skip
SMALL = [
    "--max-think-tokens", "4", "--max-prompts", "12", "--eval-users", "6", "--threads", "1",
    "--save-every", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic release with a sid_index and a (random) very small reasoner."""
    rel = tmp_path_factory.mktemp("rl_cli") / "rel"
    spec = "synthetic:users=60,items=48,categories=8,domains=video+ecommerce,seed=1"
    assert main(["index", "build", "--dataset", spec, "--out", str(rel), "--levels", "4,4",
                 "--embedder", "hashing"]) == 0  # fmt: skip
    ws = open_workspace(rel)
    reasoner = prepare_reasoner(
        ARCH, ws.index.sids.level_sizes, 4, corpus_texts=ws.index.catalog.texts, seed=0
    )
    with ReleaseWriter(rel, base=ws.release) as writer:
        part = writer.part_dir("reasoner")
        reasoner.save(part)
        (part / "personas.json").write_text("{}")  # an auxiliary file the part must keep
        writer.set_config("reasoner", {"max_history": 5})
    return rel


def _copy(release: Path, tmp_path: Path) -> Path:
    rel = tmp_path / "rel"
    shutil.copytree(release, rel)
    return rel


@pytest.mark.slow
def test_rl_experts_then_unify(release: Path, tmp_path: Path) -> None:
    rel = _copy(release, tmp_path)
    for domain in ("video", "ecommerce"):
        argv = ["train", "reasoner-rl", "--release", str(rel), "--domain", domain, "--steps", "2",
                "--prompts-per-step", "2", "--group-size", "2", "--lists-per-trace", "2",
                "--list-size", "4", "--pool-size", "4", "--eval-every", "1", *SMALL]  # fmt: skip
        assert main(argv) == 0
    loaded = load_release(rel, require=["reasoner_rl"])
    for domain in ("video", "ecommerce"):
        expert = loaded.part("reasoner_rl") / domain
        assert (expert / "config.json").is_file() and (expert / "personas.json").is_file()
        metrics = loaded.manifest.metrics[f"reasoner_rl/{domain}"]
        assert metrics["steps"] == 2 and 0 <= metrics["valid/thinking/r3/recall@10"] <= 1
        assert loaded.manifest.configs[f"reasoner_rl/{domain}"]["max_history"] == 5
    runs = rel.parent / "rel.runs" / "reasoner_rl" / "video"
    assert (runs / "curves.png").is_file() and (runs / "metrics.jsonl").is_file()

    assert (
        main(
            [
                "train",
                "reasoner-unify",
                "--release",
                str(rel),
                "--method",
                "mopd",
                "--steps",
                "1",
                "--prompts-per-step",
                "4",
                "--to",
                "unified",
                *SMALL,
            ]
        )
        == 0
    )
    assert main(["train", "reasoner-unify", "--release", str(rel), "--method", "rft",
                 "--samples-per-prompt", "2", "--epochs", "1", *SMALL]) == 0  # fmt: skip
    loaded = load_release(rel, require=["reasoner_unified", "reasoner"])
    assert (loaded.part("reasoner_unified") / "mopd" / "config.json").is_file()
    assert loaded.manifest.configs["reasoner"]["method"] == "rft"
    assert (loaded.part("reasoner") / "personas.json").is_file()


def test_clear_errors(release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rel = _copy(release, tmp_path)
    assert main(["train", "reasoner-unify", "--release", str(rel), "--method", "rft"]) == 2
    assert "no reasoner_rl/ experts" in capsys.readouterr().err
    assert main(["train", "reasoner-rl", "--release", str(rel), "--domain", "ads"]) == 2
    assert "domain 'ads' is not in the catalogue" in capsys.readouterr().err
    assert main(["train", "reasoner-rl", "--release", str(rel), "--reward", "hits=1"]) == 2
    assert "--reward 'hits=1'" in capsys.readouterr().err
    assert main(["train", "reasoner-rl", "--release", str(rel), "--clip-item", "1.5"]) == 2
    assert "clip_item" in capsys.readouterr().err
    assert parse_reward("hit=2, format=0") == {"hit_weight": 2.0, "format_weight": 0.0}
