"""`reasonrec train reasoner-align / reasoner-sft`, the reasoner trace teacher and the reasoner
tiers of `reasonrec eval`, end to end on a tiny synthetic release with a very small model."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from serving.cli import main
from sid_index.datasets.registry import save_dataset
from sid_index.datasets.synthetic import SyntheticConfig, generate
from sid_index.release import load_release
from slow_path.cot_format import CoT, CoTInterest, render_answer, render_cot
from trainer.pipeline import (
    PERSONAS_FILE,
    open_workspace,
    reasoner_teacher,
    release_personas,
    rule_teacher,
)
from trainer.reasoner.model import ScratchArch, prepare_reasoner
from trainer.reasoner_teacher import ReasonerTeacher, ReasonerTeacherConfig

ARCH = "num_layers=1,hidden_size=32,num_heads=2,num_kv_heads=2,intermediate_size=64,bpe_vocab_size=400,max_positions=512"  # noqa: E501
ALIGN = [
    "--arch", ARCH, "--personas", "4", "--warmup-steps", "2", "--batch-size", "8",
    "--lr", "3e-3", "--eval-items", "10", "--eval-users", "12", "--max-think-tokens", "12",
    "--threads", "1",
]  # fmt: skip
SFT = [
    "--batch-size", "8", "--lr", "3e-3", "--eval-users", "12", "--max-think-tokens", "12",
    "--think-ratio-per-domain", "video=0.8,ads=0.2", "--threads", "1", "--max-steps", "4",
]  # fmt: skip


@pytest.fixture(scope="module")
def release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny synthetic release with only a sid_index part."""
    rel = tmp_path_factory.mktemp("reasoner_cli") / "rel"
    args = ["index", "build", "--dataset", "synthetic:users=120,items=80,seed=1", "--out"]
    assert main([*args, str(rel), "--levels", "8,8", "--embedder", "hashing"]) == 0
    return rel


def _copy(release: Path, tmp_path: Path) -> Path:
    rel = tmp_path / "rel"
    shutil.copytree(release, rel)
    return rel


def test_sft_needs_the_aligned_reasoner(
    release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = _copy(release, tmp_path)
    assert main(["train", "reasoner-sft", "--release", str(rel)]) == 2
    err = capsys.readouterr().err
    assert "has no reasoner part" in err and "reasoner-align" in err
    assert main(["eval", "--release", str(rel), "--tiers", "r0", "--baselines", "none"]) == 2
    assert "has no reasoner part" in capsys.readouterr().err


def test_bad_options_are_clear_errors(
    release: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rel = _copy(release, tmp_path)
    assert main(["train", "reasoner-align", "--release", str(rel), "--arch", "depth=3"]) == 2
    assert "--arch: bad item 'depth=3'" in capsys.readouterr().err
    argv = ["train", "reasoner-align", "--release", str(rel), "--base-model", "scratch:huge"]
    assert main(argv) == 2
    assert "unknown scratch size" in capsys.readouterr().err
    argv = ["train", "reasoner-sft", "--release", str(rel), "--align-replay", "-1"]
    assert main(argv) == 2
    assert "--align-replay -1.0 must be in [0, 10]" in capsys.readouterr().err
    assert main(["eval", "--release", str(rel), "--tiers", "r0,r9"]) == 2
    assert "unknown reasoner tiers ['r9']" in capsys.readouterr().err
    assert main(["eval", "--release", str(rel), "--tiers", "r3", "--modes", "dreaming"]) == 2
    assert "unknown reasoner modes" in capsys.readouterr().err


class _Interrupted(RuntimeError):
    pass


@pytest.mark.slow
def test_align_resume_sft_and_eval(
    release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rel = _copy(release, tmp_path)
    align = ["train", "reasoner-align", "--release", str(rel), *ALIGN, "--save-every", "3"]
    # A run that dies at its first epoch-end evaluation, after the step-3 checkpoint ...
    import trainer.reasoner_eval as evaluation

    real_eval = evaluation.evaluate_reasoner

    def crash(*args: object, **kwargs: object) -> dict[str, float]:
        raise _Interrupted

    monkeypatch.setattr(evaluation, "evaluate_reasoner", crash)
    with pytest.raises(_Interrupted):
        main([*align, "--epochs", "2"])
    last = rel.parent / "rel.runs/reasoner-align/full/last"
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] >= 3 and not state["done"]
    assert not load_release(rel).has_part("reasoner")
    # ... resumes there and finishes with as many steps as an uninterrupted run.
    monkeypatch.setattr(evaluation, "evaluate_reasoner", real_eval)
    assert main([*align, "--epochs", "2"]) == 0
    fresh = tmp_path / "fresh"
    assert main([*align, "--epochs", "2", "--no-resume", "--work-dir", str(fresh)]) == 0
    rel_ = load_release(rel, require=["sid_index", "reasoner"])
    metrics = rel_.manifest.metrics["reasoner"]
    fresh_state = json.loads((fresh / "full/last/trainer_state.json").read_text())
    assert metrics["align/steps"] == fresh_state["step"] > state["step"]
    assert metrics["align_warmup/steps"] == 2
    for key in ("r0/category_acc", "r0/chance", "r1/hit@10", "r1/random_hit@10"):
        assert 0.0 <= metrics[key] <= 1.0
    part = rel_.part("reasoner")
    assert (part / PERSONAS_FILE).is_file() and (part / "reasoner_vocab.json").is_file()
    config = rel_.manifest.configs["reasoner"]
    assert config["stage"] == "align" and config["num_personas"] == 4
    assert (rel.parent / "rel.runs/reasoner-align/full/curves.png").stat().st_size > 0

    no_labels = ["train", "reasoner-sft", "--release", str(rel), "--persona-expansion"]
    assert main(no_labels) == 2  # k-means personas: no labels to expand from
    assert main(["train", "reasoner-sft", "--release", str(rel), *SFT]) == 0
    rel_ = load_release(rel, require=["reasoner"])
    metrics = rel_.manifest.metrics["reasoner"]
    assert metrics["sft/steps"] == 4 and metrics["align/steps"] == fresh_state["step"]
    assert metrics["sft/align_replay_samples"] == round(0.2 * 120)  # one CoT sample per user
    for mode in ("thinking", "nothinking"):
        assert 0.0 <= metrics[f"valid/{mode}/r3/recall@5"] <= metrics[f"valid/{mode}/r3/recall@10"]
    assert "valid/thinking/r2/parsed" in metrics and "valid/r0/category_acc" in metrics
    per_domain = rel_.manifest.configs["reasoner"]["sft_corpus"]["per_domain"]
    video, ads = per_domain["video"], per_domain["ads"]
    assert video[1] == round(0.8 * video[0]) and ads[1] == round(0.2 * ads[0])
    # The rule teacher now uses the reasoner's persona prototypes (shared persona ids).
    fast = [
        "train", "fast", "--release", str(rel), "--teacher", "rule", "--epochs", "1",
        "--hidden-size", "32", "--layers", "1", "--eval-users", "12",
    ]  # fmt: skip
    assert main(fast) == 0
    # Trained on the reasoner's own traces: fixed cuts, thoughts decoded in batches first.
    fast[fast.index("rule")] = "reasoner"
    assert main([*fast, "--trace-cuts", "1"]) == 0
    fast_cfg = load_release(rel, require=["fast_model"]).manifest.configs["fast_model"]
    assert fast_cfg["teacher"] == "reasoner" and fast_cfg["train"]["trace_cuts"] == 1
    out = tmp_path / "eval.json"
    argv = [
        "eval", "--release", str(rel), "--teachers", "none,reasoner", "--baselines", "none",
        "--tiers", "r0,r1,r2,r3", "--limit", "16", "--out", str(out),
    ]  # fmt: skip
    assert main(argv) == 0
    report = json.loads(out.read_text())
    models = [r["model"] for r in report["rows"]]
    assert models == [
        "fast model, trace: none",
        "fast model, trace: reasoner",
        "reasoner, thinking",
        "reasoner, nonthinking",
    ]
    traced = report["rows"][1]
    assert traced["trace_stats"]["decoded"] == 16
    assert traced["parseable_traces"] == traced["trace_stats"]["parsed"] / 16
    rep = report["reasoner"]
    for key in ("r0/category_acc", "r1/hit@10", "thinking/r2/parsed", "nothinking/r3/recall@10"):
        assert key in rep
    assert "thinking/r3/recall@10" in rep and "nothinking/r2/parsed" not in rep
    md = out.with_suffix(".md").read_text()
    assert "parseable traces:" in md and "R0 item perception" in md
    assert "| reasoner, thinking |" in md


def test_reasoner_teacher_counts_parse_failures(release: Path) -> None:
    ws = open_workspace(release)
    cat = ws.index.catalog
    arch = ScratchArch(
        num_layers=1, hidden_size=32, num_heads=2, num_kv_heads=2, intermediate_size=64,
        max_positions=512, bpe_vocab_size=300,
    )  # fmt: skip
    untrained = prepare_reasoner(arch, ws.index.sids.level_sizes, 4, corpus_texts=cat.texts, seed=0)
    teacher = ReasonerTeacher(
        untrained, ws.index.trie, cat, ws.codes,
        ReasonerTeacherConfig(max_history=5, max_think_tokens=8, batch_size=4),
    )  # fmt: skip
    samples = ws.split.valid_inputs()
    histories = [samples.history(j) for j in range(10)]
    traces = teacher.precompute_traces([*histories, histories[0], np.zeros(0, np.int64)])
    # Garbage text: every decoded history is a counted failure; duplicates decode once and
    # an empty history is no decode at all.
    assert traces == [None] * 12
    distinct = len({h[-5:].tobytes() for h in histories})
    assert teacher.stats.decoded == distinct and teacher.stats.parsed == 0
    assert teacher.stats.failures == distinct and teacher.stats.parse_rate == 0.0
    assert teacher.stats.hit_budget + sum(teacher.stats.problems.values()) > 0
    assert teacher.stats.to_dict()["parseable_traces"] == 0.0
    assert teacher.trace(0, histories[3]) is None and teacher.stats.decoded == distinct
    # A well-formed completion is a trace: persona id and the interests' SID prefixes.
    cot = CoT(
        2, "a persona", (CoTInterest((1,), 0.7, "x"), CoTInterest((3, 2), 0.3, "y")), 1, "why"
    )
    text = render_cot(cot) + render_answer((1, 0, 0))
    trace = teacher.trace_from_completion(text, think_tokens=20, hit_budget=False)
    assert trace is not None and trace.persona_id == 2 and trace.interests == ((1,), (3, 2))
    assert teacher.stats.parsed == 1 and teacher.stats.decoded == distinct + 1
    # No persona -> no trace (the rule `to_trace` applies).
    nameless = render_cot(CoT(None, "", cot.interests, 0, "why")) + render_answer((1, 0, 0))
    assert teacher.trace_from_completion(nameless, think_tokens=5, hit_budget=False) is None


def test_reasoner_teacher_from_a_release_without_reasoner(release: Path) -> None:
    from sid_index.errors import ReleaseError

    with pytest.raises(ReleaseError, match="reasoner-align"):
        reasoner_teacher(open_workspace(release))


@pytest.mark.slow
def test_align_under_torchrun(release: Path, tmp_path: Path) -> None:
    """The same command under torchrun (2 processes, gloo): rank 0 builds the starting point
    and writes the release, both ranks train."""
    import os
    import subprocess
    import sys

    rel = _copy(release, tmp_path)
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }
    proc = subprocess.run(
        [
            sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
            "-m", "serving.cli", "train", "reasoner-align", "--release", str(rel), *ALIGN,
            "--max-steps", "3",
        ],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    metrics = load_release(rel, require=["reasoner"]).manifest.metrics["reasoner"]
    assert metrics["align/steps"] == 3 and metrics["align_warmup/steps"] == 2
    log = rel.parent / "rel.runs/reasoner-align/full/metrics.jsonl"
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [3]


def test_labelled_personas_teach_the_users_own_persona(release: Path, tmp_path: Path) -> None:
    rel = _copy(release, tmp_path)
    align = ["train", "reasoner-align", "--release", str(rel), *ALIGN, "--max-steps", "2"]
    assert main([*align, "--persona-source", "labels"]) == 0
    ws = open_workspace(rel)
    assert ws.dataset.personas is not None
    doc = json.loads((rel / "reasoner" / PERSONAS_FILE).read_text())
    assert doc["config"]["source"] == "labels"
    assert doc["names"] == ws.dataset.persona_names  # one prototype per planted persona
    sft = ["train", "reasoner-sft", "--release", str(rel), *SFT, "--max-steps", "2"]
    assert main([*sft, "--no-hindsight", "--persona-expansion"]) == 0
    config = load_release(rel).manifest.configs["reasoner"]
    assert config["sft_corpus"]["hindsight"] is False and config["persona_expansion"] is True
    # The fast model's rule traces follow the release: persona statistics on.
    ws = open_workspace(rel)  # re-read: the manifest changed
    assert rule_teacher(ws, release_personas(ws)).persona_prefixes is not None
    assert rule_teacher(ws, release_personas(ws), False).persona_prefixes is None
    # Every thinking SFT sample names its user's planted persona, not the nearest prototype.
    rows = [json.loads(line) for line in (rel.parent / "rel.runs/reasoner-sft/sft.jsonl").open()]
    thinking = [r for r in rows if r["thinking"]]
    assert len(thinking) > 10
    for r in thinking:
        assert f"<p_{int(ws.dataset.personas[r['user']])}>" in r["completion"]
    nearest = rule_teacher(ws, None)
    assert nearest.known_personas is None  # personas fitted by k-means: no labels
    assert rule_teacher(ws, release_personas(ws)).known_personas is not None
    metrics = load_release(rel, require=["reasoner"]).manifest.metrics["reasoner"]
    assert 0.0 <= metrics["valid/thinking/r2/persona_match"] <= 1.0
    # Fast-model traces from the rule teacher carry the labels: eval says it is an oracle.
    fast = ["train", "fast", "--release", str(rel), "--teacher", "rule", "--epochs", "1"]
    assert main([*fast, "--hidden-size", "32", "--layers", "1", "--eval-users", "12"]) == 0
    out = tmp_path / "eval.json"
    argv = ["eval", "--release", str(rel), "--teachers", "none,rule", "--baselines", "none"]
    assert main([*argv, "--limit", "12", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[1]["labelled_personas"] is True and "labelled_personas" not in rows[0]
    assert "labelled persona (an oracle" in out.with_suffix(".md").read_text()


def test_labelled_personas_need_labels(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = generate(SyntheticConfig(num_users=60, num_items=80, seed=2))
    data = save_dataset(dataclasses.replace(ds, personas=None, persona_names=None), tmp_path / "d")
    rel = tmp_path / "rel"
    build = ["index", "build", "--dataset", str(data), "--out", str(rel), "--levels", "4,4"]
    assert main([*build, "--embedder", "hashing"]) == 0
    align = ["train", "reasoner-align", "--release", str(rel), *ALIGN, "--max-steps", "1"]
    assert main([*align, "--persona-source", "labels"]) == 2
    assert "carries no persona labels" in capsys.readouterr().err
