"""Rule teacher: every CoT satisfies the schema, hindsight picks the target's interest, the
expansion is grounded, and the teacher is a TraceTeacher for the fast model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sid_index.errors import ConfigError, DataError
from slow_path.cot_format import MAX_INTERESTS, parse_completion, render_completion
from slow_path.reasoner.interests import InterestRules
from trainer.cot.prefix_stats import PersonaPrefixes, PrefixLabels, PrefixTransitions
from trainer.cot.rule_teacher import RuleTeacher, RuleTeacherConfig

EXAMPLES = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def _check_schema(teacher: RuleTeacher, world: Any, out: Any, target: int | None) -> None:
    cot = out.cot
    assert 1 <= len(cot.interests) <= MAX_INTERESTS
    assert cot.next_interest is not None and 0 <= cot.next_interest < len(cot.interests)
    assert out.predicted_next is None or 0 <= out.predicted_next < len(cot.interests)
    assert 0 <= cot.persona_id < teacher.personas.num_personas
    assert cot.persona_name.startswith(teacher.personas.names[cot.persona_id])
    prefixes = [i.sid_prefix for i in cot.interests]
    assert len(set(prefixes)) == len(prefixes)
    catalog_prefixes = {tuple(row) for row in world.codes[:, :2].tolist()}
    for p in prefixes:
        assert 1 <= len(p) <= 2 < world.codes.shape[1]
        assert any(c[: len(p)] == p for c in catalog_prefixes)  # names a real region
    assert sum(i.weight for i in cot.interests) == pytest.approx(1.0, abs=0.03)
    assert all(i.label for i in cot.interests) and cot.transition
    if target is not None:
        assert out.hindsight
        chosen = cot.interests[cot.next_interest].sid_prefix
        assert tuple(world.codes[target, : len(chosen)].tolist()) == chosen
    # What the teacher writes is exactly what the parser reads back.
    sid = tuple(world.codes[0].tolist())
    text = render_completion(cot, sid)
    parsed = parse_completion(
        text, level_sizes=world.level_sizes, num_personas=teacher.personas.num_personas
    )
    assert parsed.cot == cot and parsed.answer == sid and parsed.problems == ()


@EXAMPLES
@given(data=st.data())
def test_cot_always_satisfies_the_schema(rule_teacher: RuleTeacher, world: Any, data: Any) -> None:
    n = len(world.codes)
    history = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=1, max_size=40)))
    target = data.draw(st.one_of(st.none(), st.integers(0, n - 1)))
    out = rule_teacher.explain(0, history, target)
    assert out is not None
    _check_schema(rule_teacher, world, out, target)


def test_real_examples_and_the_trace_teacher(rule_teacher: RuleTeacher, world: Any) -> None:
    s = world.split
    agree = 0
    for u in range(len(s)):
        hist = s.train_items[s.train_indptr[u] : s.train_indptr[u + 1]]
        target = int(s.valid_targets[u])
        out = rule_teacher.explain(int(s.user_index[u]), hist, target)
        assert out is not None and out.source == "rule"
        _check_schema(rule_teacher, world, out, target)
        agree += out.predicted_next == out.cot.next_interest
        trace = rule_teacher.trace(int(s.user_index[u]), hist)
        assert trace is not None
        no_hindsight = rule_teacher.explain(0, hist, None)
        assert no_hindsight is not None and not no_hindsight.hindsight
        assert trace.persona_id == no_hindsight.cot.persona_id
        assert trace.interests == tuple(i.sid_prefix for i in no_hindsight.cot.interests)
        assert no_hindsight.cot.next_interest == no_hindsight.predicted_next
    # The history-only guess is often, not always, the hindsight interest.
    assert 0.15 < agree / len(s) < 0.95
    assert rule_teacher.explain(0, np.array([], dtype=np.int64), 1) is None
    assert rule_teacher.trace(0, np.array([], dtype=np.int64)) is None


def test_trace_feeds_the_fast_model_prompt(rule_teacher: RuleTeacher, world: Any) -> None:
    from fast_path.prompt import trace_token_ids
    from fast_path.vocab import FastVocab
    from trainer.teachers import TraceTeacher

    teacher: TraceTeacher = rule_teacher  # type-checks as the fast trainer's protocol
    trace = teacher.trace(0, world.split.train_items[:5])
    assert trace is not None
    vocab = FastVocab(world.level_sizes, num_personas=rule_teacher.personas.num_personas)
    ids = trace_token_ids(vocab, trace)
    assert len(ids) == 3 + sum(1 + len(p) for p in trace.interests)


def test_interests_cover_the_history_and_refine(world: Any) -> None:
    codes = world.codes
    teacher = _bare_teacher(world, RuleTeacherConfig(expand=False, coverage=0.99))
    # Items of one level-0 region, four of them in one level-1 child: a refined prefix.
    pairs, counts = np.unique(codes[:, :2], axis=0, return_counts=True)
    r0, r1 = (int(v) for v in pairs[counts.argmax()])
    child = np.flatnonzero((codes[:, 0] == r0) & (codes[:, 1] == r1))
    other = np.flatnonzero((codes[:, 0] == r0) & (codes[:, 1] != r1))
    far = np.flatnonzero(codes[:, 0] != r0)
    assert len(child) >= 4 and len(other)
    history = np.concatenate([far[:1], other[:1], child[:4]])
    out = teacher.explain(0, history, None)
    assert out is not None
    first = out.cot.interests[0]
    assert first.sid_prefix == (r0, r1)
    assert out.cot.interests[1].sid_prefix == (int(codes[far[0], 0]),)
    assert first.weight > out.cot.interests[1].weight
    # A target in the region but another child widens the refined interest to level 0.
    widened = teacher.explain(0, history, int(other[0]))
    assert widened is not None and widened.added_by_hindsight
    assert widened.cot.next_interest is not None
    assert widened.cot.interests[widened.cot.next_interest].sid_prefix == (r0,)
    assert len(widened.cot.interests) == len(out.cot.interests)


def test_hindsight_adds_or_widens_the_target_interest(world: Any) -> None:
    codes = world.codes
    teacher = _bare_teacher(world, RuleTeacherConfig(expand=False))
    a = np.flatnonzero(codes[:, 0] == 0)
    b = np.flatnonzero(codes[:, 0] == 1)
    out = teacher.explain(0, a[:3], int(b[0]))
    assert out is not None and out.hindsight and out.cot.next_interest is not None
    assert out.cot.interests[out.cot.next_interest].sid_prefix == (1,)
    assert out.predicted_next == 0 and out.cot.next_interest == 1 and out.added_by_hindsight
    assert "a new direction" in out.cot.transition
    guess = teacher.explain(0, a[:3], None)
    assert guess is not None
    p = guess.cot.interests[0].sid_prefix
    inside = next(i for i in range(len(codes)) if tuple(codes[i, : len(p)].tolist()) == p)
    same = teacher.explain(0, a[:3], inside)
    assert same is not None and same.cot.next_interest == 0 and not same.added_by_hindsight
    assert same.cot.interests == guess.cot.interests
    full = _bare_teacher(world, RuleTeacherConfig(expand=False, max_interests=1))
    out = full.explain(0, a[:3], int(b[0]))
    assert out is not None  # the weakest (only) interest made room for the target's region
    assert [i.sid_prefix for i in out.cot.interests] == [(1,)] and out.predicted_next is None


def test_expansion_follows_transitions_and_neighbours(world: Any) -> None:
    codes, n0 = world.codes, int(world.codes[:, 0].max()) + 1
    # Transitions that always go 0 -> 3: the expansion after a region-0 item is region 3.
    a = np.flatnonzero(codes[:, 0] == 0)
    c = np.flatnonzero(codes[:, 0] == 3)
    seq = np.array([a[0], c[0]] * 20)
    trans = PrefixTransitions.build(np.array([0, len(seq)]), seq, codes)
    assert trans.probs.shape == (n0, n0) and trans.prob(0, 3) > 0.85
    teacher = RuleTeacher(
        world.dataset.catalog,
        codes,
        _personas(world),
        transitions=trans,
        config=RuleTeacherConfig(neighbours=0),
    )
    out = teacher.explain(0, a[:3], None)
    assert out is not None
    assert [i.sid_prefix[0] for i in out.cot.interests] == [0, 3]
    assert "often comes next" in out.cot.transition and out.cot.next_interest == 1
    # Neighbours alone: the nearest items of a region-0 item share its category, so nothing new
    # comes from them; the expansion, if any, is then a region other than the history's.
    near = RuleTeacher(
        world.dataset.catalog, codes, _personas(world), item_index=world.index
    ).explain(0, a[:3], None)
    assert near is not None and len({i.sid_prefix for i in near.cot.interests}) >= 1


def test_prefix_labels_come_from_categories(world: Any) -> None:
    labels = PrefixLabels.build(world.dataset.catalog, world.codes)
    cats = world.dataset.catalog.categories
    first = [cats[i][-1] for i in np.flatnonzero(world.codes[:, 0] == 0)]
    assert labels.label((0,)).split(" / ")[0] in set(first)
    assert labels.label((0, 999)) == labels.label((0,))  # unknown child: its region's label
    assert labels.label((999,)) == "a_999"


def test_history_interests_are_the_slow_paths_rules(world: Any) -> None:
    """Without an expansion the teacher's interests are those the rule backend reads too."""
    cfg = RuleTeacherConfig(expand=False, coverage=0.7, min_share=0.1, refine_share=0.5)
    teacher = _bare_teacher(world, cfg)
    rules = InterestRules(coverage=0.7, min_share=0.1, narrow_share=0.5, narrow_to_full_sid=True)
    rng = np.random.default_rng(0)
    for _ in range(50):
        history = rng.integers(0, len(world.codes), rng.integers(1, 30))
        out = teacher.explain(0, history, None)
        assert out is not None
        prefixes, shares = rules.interests(world.codes[history])
        assert [i.sid_prefix for i in out.cot.interests] == prefixes
        np.testing.assert_allclose(
            [i.weight for i in out.cot.interests], shares / shares.sum(), atol=0.006
        )


def test_config_validation() -> None:
    with pytest.raises(ConfigError, match="max_interests"):
        RuleTeacherConfig(max_interests=6)
    with pytest.raises(ConfigError, match="coverage"):
        RuleTeacherConfig(coverage=0.0)
    with pytest.raises(ConfigError, match="half_life"):
        RuleTeacherConfig(half_life=0)


def _personas(world: Any) -> Any:
    from trainer.cot.personas import PersonaConfig, PersonaModel, features_for, histories_from

    cfg = PersonaConfig(num_personas=4, n_init=1)
    feats = features_for(world.dataset.catalog, None, cfg)
    return PersonaModel.fit(feats, histories_from(world.dataset.interactions), cfg)


def _bare_teacher(world: Any, config: RuleTeacherConfig) -> RuleTeacher:
    return RuleTeacher(world.dataset.catalog, world.codes, _personas(world), config=config)


def test_known_personas_name_the_users_own_persona(rule_teacher: RuleTeacher, world: Any) -> None:
    personas = rule_teacher.personas
    s = world.split
    users = [int(u) for u in s.user_index[:6]]
    known = np.full(int(s.user_index.max()) + 1, -1, dtype=np.int64)
    # Give each user a persona its history would not be assigned, except the last: unknown.
    histories = [s.train_items[s.train_indptr[i] : s.train_indptr[i + 1]] for i in range(6)]
    nearest = [personas.assign(h) for h in histories]
    for u, near in zip(users[:5], nearest[:5], strict=True):
        known[u] = (near + 1) % personas.num_personas
    teacher = RuleTeacher(
        world.dataset.catalog, world.codes, personas, item_index=world.index,
        known_personas=known,
    )  # fmt: skip
    for i, (u, h) in enumerate(zip(users, histories, strict=True)):
        want = int(known[u]) if i < 5 else nearest[i]
        out = teacher.explain(u, h, None)
        assert out is not None and out.cot.persona_id == want
        assert out.cot.persona_name == personas.title(want)
        trace = teacher.trace(u, h)
        assert trace is not None and trace.persona_id == want
    # A user outside the labelled range falls back to the nearest prototype too.
    assert teacher.trace(len(known) + 5, histories[0]).persona_id == nearest[0]
    with pytest.raises(ConfigError, match="known persona ids"):
        RuleTeacher(
            world.dataset.catalog, world.codes, personas,
            known_personas=np.array([personas.num_personas]),
        )  # fmt: skip


def test_persona_prefixes_count_each_personas_prefixes() -> None:
    codes = np.array([[0, 0], [1, 0], [2, 0], [3, 0]])
    indptr = np.array([0, 3, 5, 6])
    items = np.array([0, 0, 1, 2, 2, 3])  # users: [0 0 1] [2 2] [3]
    table = PersonaPrefixes.build(indptr, items, codes, np.array([0, 1, -1]), 2, smoothing=0.0)
    np.testing.assert_allclose(table.probs, [[2 / 3, 1 / 3, 0, 0], [0, 0, 1, 0]])
    assert table.expansion(0, {0}) == (1, pytest.approx(1 / 3))
    assert table.expansion(1, set())[0] == 2
    assert table.expansion(5, set()) is None and table.expansion(0, {0, 1, 2, 3}) is None
    with pytest.raises(DataError, match="does not match"):
        PersonaPrefixes.build(indptr, items, codes, np.array([0, 1]), 2)
    with pytest.raises(DataError, match="persona labels reach"):
        PersonaPrefixes.build(indptr, items, codes, np.array([0, 1, 2]), 2)


def test_persona_expansion_names_what_the_persona_predicts(
    rule_teacher: RuleTeacher, world: Any
) -> None:
    s = world.split
    personas = rule_teacher.personas
    known = np.full(int(s.user_index.max()) + 1, -1, dtype=np.int64)
    known[s.user_index] = personas.assign_many(
        [s.train_items[s.train_indptr[i] : s.train_indptr[i + 1]] for i in range(len(s.user_ids))]
    )
    table = PersonaPrefixes.build(
        s.train_indptr, s.train_items, world.codes, known[s.user_index], personas.num_personas
    )
    teacher = RuleTeacher(
        world.dataset.catalog, world.codes, personas, known_personas=known,
        persona_prefixes=table, config=RuleTeacherConfig(max_interests=5),
    )  # fmt: skip
    expanded = 0
    for i in range(40):
        history = s.train_items[s.train_indptr[i] : s.train_indptr[i + 1]]
        user = int(s.user_index[i])
        out = teacher.explain(user, history, None)
        assert out is not None
        held = {c.sid_prefix[0] for c in out.cot.interests[:-1]}
        last = out.cot.interests[-1].sid_prefix
        want = table.expansion(int(known[user]), held)
        if want is not None and last[0] == want[0] and last[0] not in set(world.codes[history, 0]):
            expanded += 1
    assert expanded >= 10  # the expansion is the persona's likeliest unseen prefix
