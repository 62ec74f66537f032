"""The reasoner's text format: exact round trips, tolerant parsing, fuzzing, Trace conversion."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sid_index.codes import format_sid
from sid_index.errors import DataError
from slow_path.cot_format import (
    MAX_INTERESTS,
    CoT,
    CoTInterest,
    ParsedCompletion,
    PromptItem,
    clean_text,
    parse_completion,
    render_answer,
    render_completion,
    render_cot,
    render_prompt,
    special_tokens,
    to_trace,
)
from slow_path.errors import TraceError
from slow_path.trace import Candidate, Trace

LEVELS = (16, 8, 8, 4)
P = 20
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _parse(text: str, levels: tuple[int, ...] = LEVELS, personas: int = P) -> ParsedCompletion:
    return parse_completion(text, level_sizes=levels, num_personas=personas)


def _cot(**kw: object) -> CoT:
    base: dict[str, object] = dict(
        persona_id=7,
        persona_name="home-office organizer: buys desk supplies",
        interests=(
            CoTInterest((12, 3), 0.45, "paper and notebooks"),
            CoTInterest((4,), 0.3, "lamps"),
        ),
        next_interest=1,
        transition="after a desk lamp, bulbs usually follow",
    )
    base.update(kw)
    return CoT(**base)  # type: ignore[arg-type]


# -- rendering ----------------------------------------------------------------------------------


def test_render_matches_the_contract_example() -> None:
    text = render_completion(_cot(), (12, 3, 5, 0))
    assert text == (
        "<persona><p_7> home-office organizer: buys desk supplies</persona>"
        "<interest><a_12><b_3> w=0.45 paper and notebooks</interest>"
        "<interest><a_4> w=0.30 lamps</interest>"
        "<transition><next_2> after a desk lamp, bulbs usually follow</transition>"
        "</think><answer><a_12><b_3><c_5><d_0></answer>"
    )
    assert render_cot(_cot()).endswith("</think><answer>")
    assert render_answer((1, 2, 3, 0)) == "<a_1><b_2><c_3><d_0></answer>"


def test_render_prompt_modes_and_titles() -> None:
    items = [
        PromptItem((12, 3, 9, 0), "Ballpoint pens 12-pack"),
        PromptItem((4, 1, 2, 0), "one two three four five six seven eight nine ten eleven <b>"),
    ]
    thinking = render_prompt(items, thinking=True)
    assert thinking == (
        "<user>history: <a_12><b_3><c_9><d_0> Ballpoint pens 12-pack; "
        "<a_4><b_1><c_2><d_0> one two three four five six seven eight nine ten</user><think>"
    )
    plain = render_prompt(items, thinking=False)
    assert plain.endswith("</user><think></think><answer>")
    assert plain.removesuffix("</think><answer>") == thinking


def test_records_canonicalize_and_validate() -> None:
    it = CoTInterest([3, 1], 0.123456, "  a <b> \n label ")  # type: ignore[arg-type]
    assert it == CoTInterest((3, 1), 0.12, "a b label")
    for bad in (dict(sid_prefix=()), dict(weight=-1.0), dict(weight=float("nan"))):
        with pytest.raises(DataError):
            CoTInterest(**{"sid_prefix": (1,), "weight": 0.5, "label": "x", **bad})  # type: ignore[arg-type]
    with pytest.raises(DataError, match="next_interest"):
        _cot(next_interest=2)
    with pytest.raises(DataError, match="interests"):
        _cot(interests=(CoTInterest((1,), 0.1, "x"),) * 6)


def test_special_tokens_cover_every_part() -> None:
    toks = special_tokens(LEVELS, P)
    assert len(toks) == len(set(toks)) == 12 + MAX_INTERESTS + P + sum(LEVELS)
    assert {"<think>", "</answer>", "<next_5>", "<p_19>", "<a_15>", "<d_3>"} <= set(toks)


# -- strategies ---------------------------------------------------------------------------------

levels_st = st.lists(st.integers(1, 300), min_size=2, max_size=4).map(tuple)
text_st = st.text(max_size=40)


@st.composite
def cot_and_sid(draw: st.DrawFn) -> tuple[tuple[int, ...], int, CoT, tuple[int, ...]]:
    levels = draw(levels_st)
    personas = draw(st.integers(1, 40))
    prefix_st = st.integers(1, len(levels) - 1).flatmap(
        lambda n: st.tuples(*[st.integers(0, levels[i] - 1) for i in range(n)])
    )
    interests = draw(
        st.lists(
            st.builds(CoTInterest, prefix_st, st.floats(0, 1e6), text_st), max_size=MAX_INTERESTS
        )
    )
    pid = draw(st.one_of(st.none(), st.integers(0, personas - 1)))
    nxt = draw(st.one_of(st.none(), st.integers(0, len(interests) - 1))) if interests else None
    cot = CoT(pid, draw(text_st), tuple(interests), nxt, draw(text_st))
    sid = tuple(draw(st.integers(0, s - 1)) for s in levels)
    return levels, personas, cot, sid


# -- round trip ---------------------------------------------------------------------------------


@FUZZ
@given(cot_and_sid())
def test_round_trip_is_exact(case: tuple[tuple[int, ...], int, CoT, tuple[int, ...]]) -> None:
    levels, personas, cot, sid = case
    parsed = _parse(render_completion(cot, sid), levels, personas)
    assert parsed.answer == sid
    if cot.persona_id is None and not cot.interests:
        assert parsed.cot is None  # nothing usable: the documented case
        return
    assert parsed.cot == cot
    complete = cot.persona_id is not None and cot.interests and cot.next_interest is not None
    if complete:
        assert parsed.problems == ()
    # The non-thinking completion parses to the answer alone, without problems.
    plain = _parse(render_answer(sid), levels, personas)
    assert plain == ParsedCompletion(None, sid, ())


# -- tolerance ----------------------------------------------------------------------------------


def test_invalid_parts_are_dropped_and_listed() -> None:
    text = (
        "<persona><p_99> nobody</persona>"
        "<interest><a_99> w=0.5 out of range</interest>"
        "<interest><a_1><b_2><c_3><d_0> w=0.5 too long</interest>"
        "<interest><a_2> w=0.4 kept</interest>"
        "<transition><next_3> the third, now the first kept</transition>"
        "</think><answer><a_1><b_2><c_3><d_0></answer> trailing"
    )
    parsed = _parse(text)
    assert parsed.cot is not None
    assert parsed.cot.persona_id is None
    assert parsed.cot.interests == (CoTInterest((2,), 0.4, "kept"),)
    assert parsed.cot.next_interest == 0  # renumbered after dropping interests 1 and 2
    assert parsed.answer == (1, 2, 3, 0)
    problems = " | ".join(parsed.problems)
    for needle in ("<p_99> unknown", "out of range", "prefix of 4 levels", "text after </answer>"):
        assert needle in problems


def test_more_than_five_interests_and_a_bad_next() -> None:
    blocks = "".join(f"<interest><a_{i}> w=0.1 i{i}</interest>" for i in range(7))
    parsed = _parse(f"<persona><p_1> x</persona>{blocks}<transition><next_7> y</transition>")
    assert parsed.cot is not None and len(parsed.cot.interests) == MAX_INTERESTS
    assert parsed.cot.next_interest is None
    assert parsed.answer is None
    assert sum("more than 5" in p for p in parsed.problems) == 2
    assert any("<next_7> names no kept interest" in p for p in parsed.problems)
    assert "missing </think>" in parsed.problems


@pytest.mark.parametrize(
    ("text", "answer", "needle"),
    [
        ("<a_1><b_2><c_3><d_0></answer>", (1, 2, 3, 0), None),
        ("<a_1><b_2><c_3><d_0>", (1, 2, 3, 0), "unterminated answer"),
        ("<a_1><b_2><c_3></answer>", None, "answer has 3 levels"),
        ("<a_1><c_2><b_3><d_0></answer>", None, "level order"),
        ("<a_1><b_2><c_3><d_9></answer>", None, "out of range"),
        ("hello</answer>", None, "not a SID"),
        ("", None, "not a SID"),
        ("</think><answer><a_1><b_2><c_3><d_0></answer>", (1, 2, 3, 0), "empty thought"),
    ],
)
def test_answers(text: str, answer: tuple[int, ...] | None, needle: str | None) -> None:
    parsed = _parse(text)
    assert parsed.cot is None
    assert parsed.answer == answer
    if needle is None:
        assert parsed.problems == ()
    else:
        assert any(needle in p for p in parsed.problems), parsed.problems


def test_garbled_sections() -> None:
    text = (
        "<think>junk<persona><p_2> a <interest> b</persona><interest><a_1> no weight</interest>"
        "<interest><a_2> w=0.2 <b_1> marked</interest><transition>why</transition>"
        "<interest><a_3> w=0.1 open</think><answer><a_1><b_0><c_0><d_0></answer>"
    )
    parsed = _parse(text)
    assert parsed.cot is not None
    assert parsed.cot.persona_id is None  # the persona block contained an unterminated section
    assert [i.sid_prefix for i in parsed.cot.interests] == [(1,), (2,)]
    assert parsed.cot.interests[0].weight == 0.0
    assert parsed.cot.interests[1].label == "marked"
    assert parsed.cot.next_interest is None and parsed.cot.transition == "why"
    assert parsed.answer == (1, 0, 0, 0)
    problems = " | ".join(parsed.problems)
    for needle in ("stray text 'junk'", "missing weight", "stray markup", "without <next_k>"):
        assert needle in problems
    assert "unterminated <interest>" in problems


_PIECES = [
    *(f"<{t}>" for t in ("user", "think", "persona", "interest", "transition", "answer")),
    *(f"</{t}>" for t in ("user", "think", "persona", "interest", "transition", "answer")),
    "<a_1>", "<b_2>", "<c_3>", "<d_0>", "<a_99>", "<e_1>", "<a_999999999999999999999999>",
    "<next_1>", "<next_0>", "<next_9>", "<p_3>", "<p_99>", "<p_-1>", " w=0.5", "w=", "w=1e9",
    " ", "\n", ";", "9" * 5000,
]  # fmt: skip


@FUZZ
@given(st.lists(st.one_of(st.sampled_from(_PIECES), st.text(max_size=8)), max_size=40).map("".join))
def test_parse_never_raises_and_keeps_only_valid_parts(text: str) -> None:
    parsed = _parse(text)
    if parsed.answer is not None:
        assert len(parsed.answer) == len(LEVELS)
        assert all(0 <= c < s for c, s in zip(parsed.answer, LEVELS, strict=True))
    cot = parsed.cot
    if cot is not None:
        assert cot.persona_id is not None or cot.interests
        assert cot.persona_id is None or 0 <= cot.persona_id < P
        assert len(cot.interests) <= MAX_INTERESTS
        for it in cot.interests:
            assert 1 <= len(it.sid_prefix) < len(LEVELS)
            assert all(0 <= c < s for c, s in zip(it.sid_prefix, LEVELS, strict=False))
        assert cot.next_interest is None or 0 <= cot.next_interest < len(cot.interests)
        # What survived parsing renders and parses back to itself.
        again = _parse(render_cot(cot) + "<a_0><b_0><c_0><d_0></answer>")
        assert again.cot == cot


@FUZZ
@given(st.text(max_size=200))
def test_parse_survives_arbitrary_text(text: str) -> None:
    assert isinstance(_parse(text), ParsedCompletion)


def test_parse_rejects_non_text_without_raising() -> None:
    parsed = parse_completion(b"<a_1>", level_sizes=LEVELS, num_personas=P)  # type: ignore[arg-type]
    assert parsed.cot is None and parsed.answer is None and parsed.problems


# -- Trace ------------------------------------------------------------------------------------


def test_to_trace() -> None:
    text = render_completion(_cot(), (12, 3, 5, 0))
    parsed = _parse(text, (16, 8, 8, 4))
    trace = to_trace(
        parsed,
        user_id="u1",
        model_version="r1",
        history_fingerprint="abc",
        candidates=[("i9", 0.5), Candidate("i3", 0.25)],
        text=text,
        created_at=10.0,
    )
    assert isinstance(trace, Trace)
    assert trace.persona.id == 7 and trace.persona.name.startswith("home-office")
    assert [i.sid_prefix for i in trace.interests] == [(12, 3), (4,)]
    assert trace.transition.next_interest == 1
    assert [c.item_id for c in trace.candidates] == ["i9", "i3"]
    trace.check_prefixes((16, 8, 8, 4))
    assert Trace.from_bytes(trace.to_bytes()) == trace


def test_to_trace_fills_persona_name_and_refuses_unusable_thoughts() -> None:
    named = to_trace(
        _parse(render_cot(_cot(persona_name="")) + "<a_1><b_1><c_1><d_1></answer>"),
        user_id="u",
        model_version="r",
        history_fingerprint="f",
        text="t",
        persona_names=[f"persona {i}" for i in range(P)],
    )
    assert named.persona.name == "persona 7"
    kw = dict(user_id="u", model_version="r", history_fingerprint="f", text="t")
    with pytest.raises(TraceError, match="no usable chain"):
        to_trace(_parse("<a_1><b_1><c_1><d_1></answer>"), **kw)  # type: ignore[arg-type]
    with pytest.raises(TraceError, match="persona"):
        to_trace(_parse(render_cot(_cot(persona_id=None))), **kw)  # type: ignore[arg-type]
    with pytest.raises(TraceError, match="interest"):
        to_trace(_parse(render_cot(_cot(interests=(), next_interest=None))), **kw)  # type: ignore[arg-type]


def test_clean_text_and_format_sid_agree() -> None:
    assert clean_text(" a\t<b>\n c ") == "a b c"
    assert format_sid((1, 2)) == "<a_1><b_2>"
