"""Evaluation tiers R0–R3 on corpus-format samples."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sid_index.datasets.splits import leave_one_out
from slow_path.cot_format import CoT, CoTInterest, PromptItem, render_answer, render_cot
from trainer.cot.corpus import AlignConfig as CorpusAlignConfig
from trainer.cot.corpus import build_align_corpus
from trainer.reasoner.evaluation import (
    category_of,
    interest_metrics,
    item_perception,
    item_to_item,
    persona_match,
    random_hit_rate,
    recommendation,
)
from trainer.reasoner.generate import ReasonConfig, ReasonOutput
from trainer.reasoner.sft_data import tokenize_samples
from trainer.reasoner.train_loop import LoopConfig, train_causal_lm


@pytest.fixture(scope="module")
def corpus(world):
    split = leave_one_out(world.dataset.interactions)
    samples = build_align_corpus(
        split, world.dataset.catalog, world.codes,
        CorpusAlignConfig(tasks=("sid2text", "item2item")),
    )  # fmt: skip
    return split, samples


def test_category_parsing() -> None:
    assert category_of("Spicy skillet (cooking > videos)") == "cooking > videos"
    assert category_of("no category") is None
    assert category_of("a (b) c") is None  # the category closes the description


def test_r0_perception_beats_chance_after_alignment(world, make_reasoner, corpus, tmp_path: Path):
    _, samples = corpus
    sid2text = [s for s in samples if s.task == "sid2text"]
    r = make_reasoner()
    before = item_perception(r, sid2text)
    assert before.num_items == len(world.dataset.catalog)
    cats = {category_of(s.completion) for s in sid2text}
    assert before.chance == pytest.approx(1 / len(cats))
    data = tokenize_samples(r.tokenizer, sid2text, 128)
    cfg = LoopConfig(
        epochs=40, batch_size=16, lr=1e-2, lr_warmup_steps=5, log_every=20, save_every=1000
    )
    train_causal_lm(r, data, cfg, tmp_path, stage="r0")
    after = item_perception(r, sid2text)
    assert after.accuracy > max(before.accuracy, after.majority) + 0.2


def test_r1_item_to_item_and_its_random_baseline(world, make_reasoner, corpus) -> None:
    _, samples = corpus
    i2i = [s for s in samples if s.task == "item2item"]
    metrics = item_to_item(make_reasoner(), i2i, world.trie, k=5)
    assert 0.0 <= metrics["r1/hit@5"] <= 1.0
    # The closed-form baseline against simulation.
    rng = np.random.default_rng(0)
    n, sizes = 48, np.array([1, 3, 5])
    sim = np.mean(
        [[len(set(rng.choice(n, 5, replace=False)) & set(range(m))) > 0 for m in sizes]
         for _ in range(4000)]
    )  # fmt: skip
    assert random_hit_rate(n, sizes, 5) == pytest.approx(sim, abs=0.02)
    assert metrics["r1/random_hit@5"] == pytest.approx(
        random_hit_rate(
            world.trie.num_items,
            np.array([len([p for p in s.completion.split(";") if p.strip()]) for s in i2i]),
            5,
        )
    )


def _output(text: str) -> ReasonOutput:
    empty = np.zeros(0, dtype=np.int64)
    return ReasonOutput(text, "", 10, False, empty, empty.reshape(0, 3), empty.astype(np.float32))


def test_r2_interest_metrics_on_known_thoughts(make_reasoner) -> None:
    r = make_reasoner()
    target = np.array([[2, 1, 5], [2, 1, 5], [2, 1, 5]])
    hits_next = CoT(1, "p", (CoTInterest((3,), 0.5, "x"), CoTInterest((2, 1), 0.4, "y")), 1, "r")
    hits_other = CoT(1, "p", (CoTInterest((2,), 0.5, "x"), CoTInterest((3,), 0.4, "y")), 1, "r")
    texts = [
        render_cot(hits_next) + render_answer((2, 1, 5)),
        render_cot(hits_other) + render_answer((2, 1, 5)),
        "garbage without any thought",
    ]
    m = interest_metrics([_output(t) for t in texts], target, r)
    assert m["r2/parsed"] == pytest.approx(2 / 3)
    assert m["r2/interest_hit"] == pytest.approx(2 / 3)
    assert m["r2/next_interest_hit"] == pytest.approx(1 / 3)
    assert m["r2/interests"] == pytest.approx(4 / 3)


def test_r2_persona_match_counts_the_users_own_persona(make_reasoner) -> None:
    r = make_reasoner()
    interest = (CoTInterest((2,), 1.0, "x"),)
    texts = [render_cot(CoT(p, "p", interest, 0, "r")) + render_answer((2, 1, 5)) for p in (1, 3)]
    outputs = [_output(t) for t in [*texts, "no thought at all"]]
    assert persona_match(outputs, np.array([1, 1, 1]), r) == pytest.approx(1 / 3)
    assert persona_match(outputs, np.array([1, 3, 0]), r) == pytest.approx(2 / 3)
    assert persona_match([], np.zeros(0, dtype=np.int64), r) == 0.0


@pytest.mark.parametrize("thinking", [True, False])
def test_r3_recommendation_metrics(world, make_reasoner, corpus, thinking: bool) -> None:
    split, _ = corpus
    r = make_reasoner()
    cat = world.dataset.catalog
    inputs = split.valid_inputs(max_len=5)
    histories = [
        [PromptItem(tuple(world.codes[i].tolist()), cat.titles[i]) for i in inputs.history(j)]
        for j in range(8)
    ]
    targets = inputs.targets[:8]
    cfg = ReasonConfig(thinking=thinking, max_think_tokens=8, num_answers=10)
    metrics, outs = recommendation(r, world.trie, histories, targets, config=cfg, ks=(5, 10))
    mode = "thinking" if thinking else "nothinking"
    hits = np.mean([t in o.items[:10] for o, t in zip(outs, targets, strict=True)])
    assert metrics[f"{mode}/r3/recall@10"] == pytest.approx(hits)
    assert (f"{mode}/r2/interest_hit" in metrics) == thinking
