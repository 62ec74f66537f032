"""SFT and alignment corpora: cut points, exact per-domain thinking ratios, parseable samples,
teacher failures, co-occurrence, JSONL."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sid_index.codes import format_sid
from sid_index.datasets.splits import leave_one_out
from sid_index.errors import ConfigError, DataError
from sid_index.records import Catalog, Interactions, UserSequence
from slow_path.cot_format import parse_completion, render_cot
from trainer.cot.base import TeacherCoT, TeacherError
from trainer.cot.corpus import (
    AlignConfig,
    CorpusConfig,
    CorpusStats,
    build_align_corpus,
    build_sft_corpus,
    cooccurrence,
    read_align_jsonl,
    read_sft_jsonl,
    write_jsonl,
)
from trainer.cot.rule_teacher import RuleTeacher


def test_ratios_per_domain_are_exact(world: Any, rule_teacher: RuleTeacher) -> None:
    cfg = CorpusConfig(
        cuts_per_user=2, thinking_ratio={"video": 1.0, "ads": 0.0, "live": 0.25}, seed=1
    )
    stats = CorpusStats()
    samples = build_sft_corpus(
        world.split, world.dataset.catalog, world.codes, rule_teacher, cfg, stats=stats
    )
    by_domain: dict[str, list[bool]] = {}
    for s in samples:
        by_domain.setdefault(s.domain, []).append(s.thinking)
    assert set(by_domain) == {"video", "ecommerce", "ads", "live"}
    for domain, flags in by_domain.items():
        assert sum(flags) == round(cfg.ratio(domain) * len(flags)), domain
        assert stats.per_domain[domain] == [len(flags), sum(flags)]
    assert stats.samples == len(samples) and stats.teacher_failures == 0
    assert 0 < stats.hindsight_differs < stats.thinking
    assert 0 < stats.hindsight_added <= stats.hindsight_differs
    # Seeded: the same config gives the same corpus, another seed another thinking subset.
    again = build_sft_corpus(world.split, world.dataset.catalog, world.codes, rule_teacher, cfg)
    assert again == samples
    other = build_sft_corpus(
        world.split,
        world.dataset.catalog,
        world.codes,
        rule_teacher,
        CorpusConfig(cuts_per_user=2, seed=2),
    )
    assert [s.thinking for s in other] != [s.thinking for s in samples]


def test_samples_are_cut_at_the_last_positions_and_parse(
    world: Any, rule_teacher: RuleTeacher
) -> None:
    split, codes, cat = world.split, world.codes, world.dataset.catalog
    cfg = CorpusConfig(cuts_per_user=3, max_history=5)
    samples = build_sft_corpus(split, cat, codes, rule_teacher, cfg)
    lengths = split.train_lengths()
    assert len(samples) == int(np.minimum(3, lengths - 1).sum())
    u0 = [s for s in samples if s.user == int(split.user_index[0])]
    train0 = split.train_items[split.train_indptr[0] : split.train_indptr[1]]
    assert [s.target for s in u0] == train0[::-1][: len(u0)].tolist()
    for s in samples:
        assert s.domain == cat.domains[s.target]
        assert s.prompt.count("; ") <= 4  # at most max_history items
        parsed = parse_completion(
            s.completion,
            level_sizes=world.level_sizes,
            num_personas=rule_teacher.personas.num_personas,
        )
        assert parsed.answer == tuple(codes[s.target].tolist()) and parsed.problems == ()
        if s.thinking:
            assert s.prompt.endswith("</user><think>") and parsed.cot is not None
            assert s.completion.endswith(format_sid(codes[s.target]) + "</answer>")
        else:
            assert s.prompt.endswith("<think></think><answer>") and parsed.cot is None
    # The prompt shows the items right before the cut, most recent last.
    first = u0[0]
    last_item = int(train0[-2])
    assert first.prompt.split("</user>")[0].split("; ")[-1].startswith(format_sid(codes[last_item]))


def test_random_cuts_and_no_teacher(world: Any) -> None:
    split = world.split
    cfg = CorpusConfig(cuts_per_user=2, cut_mode="random", seed=4)
    samples = build_sft_corpus(split, world.dataset.catalog, world.codes, None, cfg)
    assert not any(s.thinking for s in samples)
    per_user: dict[int, list[int]] = {}
    for s in samples:
        per_user.setdefault(s.user, []).append(s.target)
    lengths = dict(zip(split.user_index.tolist(), split.train_lengths().tolist(), strict=True))
    for user, targets in per_user.items():
        assert len(targets) == min(2, lengths[user] - 1)


class _FailingTeacher:
    name = "failing"

    def __init__(self) -> None:
        self.calls = 0

    def explain(self, user: int, history: np.ndarray, target: int | None) -> TeacherCoT | None:
        self.calls += 1
        if self.calls % 2:
            raise TeacherError("endpoint down")
        return None


def test_teacher_failures_become_plain_samples(world: Any) -> None:
    stats = CorpusStats()
    teacher = _FailingTeacher()
    samples = build_sft_corpus(
        world.split,
        world.dataset.catalog,
        world.codes,
        teacher,
        CorpusConfig(default_thinking_ratio=1.0),
        stats=stats,
    )
    assert not any(s.thinking for s in samples)
    assert stats.teacher_failures == teacher.calls == len(samples)


def test_jsonl_round_trip_and_errors(world: Any, rule_teacher: RuleTeacher, tmp_path: Path) -> None:
    samples = build_sft_corpus(
        world.split, world.dataset.catalog, world.codes, rule_teacher, CorpusConfig()
    )
    path = tmp_path / "sft.jsonl"
    assert write_jsonl(path, samples) == len(samples)
    assert read_sft_jsonl(path) == samples
    align = build_align_corpus(world.split, world.dataset.catalog, world.codes)
    write_jsonl(tmp_path / "align.jsonl", align)
    assert read_align_jsonl(tmp_path / "align.jsonl") == align
    path.write_text('{"prompt": "p", "completion": "c", "thinking": "yes"}\n')
    with pytest.raises(DataError, match=r"sft\.jsonl:1"):
        read_sft_jsonl(path)
    with pytest.raises(DataError, match="no such file"):
        read_sft_jsonl(tmp_path / "missing.jsonl")


def test_cooccurrence_counts_within_the_window() -> None:
    # user 0: 1 2 1 3 ; user 1: 3 4  (no pair crosses users)
    indptr = np.array([0, 4, 6])
    items = np.array([1, 2, 1, 3, 3, 4])
    src, top = cooccurrence(indptr, items, window=1, k=2)
    table = dict(zip(src.tolist(), top.tolist(), strict=True))
    assert table == {1: [2, 3], 2: [1, -1], 3: [1, 4], 4: [3, -1]}
    _, wide = cooccurrence(indptr, items, window=3, k=3)
    assert wide[0].tolist() == [2, 3, -1]  # item 1: (1,2) twice, (1,3) twice -> ties by index


def test_align_corpus_formats() -> None:
    cat = Catalog(
        item_ids=["a", "b", "c"],
        titles=["Red pen", "Blue pen", "Desk lamp"],
        texts=[""] * 3,
        categories=[("Office", "Pens"), ("Office", "Pens"), ()],
        domains=["ecommerce"] * 3,
    )
    codes = np.array([[0, 0, 0], [0, 1, 0], [1, 0, 0]])
    inter = Interactions.from_sequences(
        [UserSequence("u", np.array([0, 1, 2, 0, 1])), UserSequence("v", np.array([2, 1, 0]))]
    )
    split = leave_one_out(inter)
    samples = build_align_corpus(split, cat, codes, AlignConfig(related_k=1, cooc_window=1))
    by_task: dict[str, list[Any]] = {}
    for s in samples:
        by_task.setdefault(s.task, []).append(s)
    assert len(by_task["sid2text"]) == len(by_task["text2sid"]) == 3
    assert by_task["sid2text"][0].prompt == "item <a_0><b_0><c_0> is:"
    assert by_task["sid2text"][0].completion == "Red pen (Office > Pens)"
    assert by_task["text2sid"][2].prompt == "the item Desk lamp has ID:"
    assert by_task["text2sid"][2].completion == "<a_1><b_0><c_0>"
    # Train parts: u -> [0, 1, 2], v -> [2]; adjacent pairs (0,1), (1,2).
    related = {s.prompt: s.completion for s in by_task["item2item"]}
    assert related["items related to <a_0><b_1><c_0> Blue pen:"] == "<a_0><b_0><c_0>"
    assert by_task["sequence"][0].completion == (
        "<a_0><b_0><c_0> Red pen; <a_0><b_1><c_0> Blue pen; <a_1><b_0><c_0> Desk lamp"
    )
    only = build_align_corpus(split, cat, codes, AlignConfig(tasks=("sequence",)))
    assert {s.task for s in only} == {"sequence"} and len(only) == 2


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="cut_mode"):
        CorpusConfig(cut_mode="first")
    with pytest.raises(ConfigError, match="'video'"):
        CorpusConfig(thinking_ratio={"video": 1.5})
    with pytest.raises(ConfigError, match="tasks"):
        AlignConfig(tasks=("poetry",))


def test_without_hindsight_the_thought_is_the_history_only_guess(
    world: Any, rule_teacher: RuleTeacher
) -> None:
    split, codes, cat = world.split, world.codes, world.dataset.catalog
    cfg = CorpusConfig(cuts_per_user=2, max_history=5, default_thinking_ratio=1.0)
    seen = build_sft_corpus(split, cat, codes, rule_teacher, cfg)
    blind_stats = CorpusStats()
    blind = build_sft_corpus(
        split, cat, codes, rule_teacher, replace(cfg, hindsight=False), stats=blind_stats
    )
    assert [s.target for s in blind] == [s.target for s in seen]
    n = world.level_sizes

    def next_holds_target(s: Any) -> bool:
        cot = parse_completion(s.completion, level_sizes=n, num_personas=20).cot
        prefix = cot.interests[cot.next_interest].sid_prefix
        return tuple(codes[s.target][: len(prefix)].tolist()) == prefix

    # Hindsight: the named next interest always holds the answer; blind: only sometimes.
    assert all(next_holds_target(s) for s in seen)
    share = np.mean([next_holds_target(s) for s in blind])
    assert 0.05 < share < 0.95
    assert blind_stats.hindsight_differs == 0 and blind_stats.hindsight_added == 0
    # The blind thought is the teacher's own history-only CoT; the answer is still the target.
    train0 = split.train_items[split.train_indptr[0] : split.train_indptr[1]]
    first = next(s for s in blind if s.user == int(split.user_index[0]))
    assert first.target == int(train0[-1])
    made = rule_teacher.explain(first.user, train0[:-1][-5:], None)
    assert made is not None and render_cot(made.cot) in first.completion
