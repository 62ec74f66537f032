"""The reasoner's text format: prompt, three-part chain of thought, answer, and a tolerant parser.

This is the contract between the CoT teachers, SFT, generation and the slow path
(`/work/notes/cot_format.md`). The reasoner reads a prompt and writes a completion::

    prompt, thinking:      <user>history: <a_12><b_3><c_9><d_0> Pens 12-pack; ...</user><think>
    prompt, non-thinking:  <user>history: ...</user><think></think><answer>

    completion, thinking:  <persona><p_7> home-office organizer: buys desk supplies</persona>
                           <interest><a_12><b_3> w=0.45 paper and notebooks</interest>
                           <interest><a_40> w=0.30 desk lighting</interest>
                           <transition><next_2> after a desk lamp, bulbs follow</transition>
                           </think><answer><a_12><b_3><c_9><d_0></answer>
    completion, non-thinking:                    <a_12><b_3><c_9><d_0></answer>

(the completion is one line; it is broken here for reading). So that both modes end the same
way, `render_cot` ends with `</think><answer>` and `render_answer` is the SID plus `</answer>`:
a thinking completion is `render_cot(cot) + render_answer(sid)`, a non-thinking completion is
`render_answer(sid)` (`render_completion` does either). A decoder can therefore stop free text
generation at `<answer>` and switch to SID-constrained decoding in both modes.

Canonical text: free text (titles, persona names, labels, transition reasons) never contains
`<` or `>` and has single spaces only; weights carry two decimals. The records canonicalize on
construction, so `parse_completion(render_completion(cot, sid))` gives back exactly `cot` and
`sid` for every valid record.

`CoT.next_interest` is 0-based (an index into `interests`, like `Trace.transition`); it is
spelled 1-based as `<next_k>` in the text.

This module imports neither celery, vllm nor torch.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass

from sid_index.codes import LEVEL_LETTERS, format_sid, sid_token
from sid_index.errors import DataError
from slow_path.errors import TraceError
from slow_path.trace import Candidate, Interest, Persona, Trace, Transition

MAX_INTERESTS = 5
"""Interest Expansion yields 1..MAX_INTERESTS hypotheses."""
MAX_TITLE_WORDS = 10
"""Titles in the prompt are cut to this many words."""
WEIGHT_DECIMALS = 2
"""Interest weights are written (and canonicalized) with this many decimals."""
MAX_WEIGHT = 1e6
"""Largest interest weight (weights are relative; this bounds the digits a parser reads)."""

USER, USER_END = "<user>", "</user>"
THINK, THINK_END = "<think>", "</think>"
PERSONA, PERSONA_END = "<persona>", "</persona>"
INTEREST, INTEREST_END = "<interest>", "</interest>"
TRANSITION, TRANSITION_END = "<transition>", "</transition>"
ANSWER, ANSWER_END = "<answer>", "</answer>"
SECTION_TOKENS = (
    USER, USER_END, THINK, THINK_END, PERSONA, PERSONA_END,
    INTEREST, INTEREST_END, TRANSITION, TRANSITION_END, ANSWER, ANSWER_END,
)  # fmt: skip


def next_token(k: int) -> str:
    """`<next_k>` for a 1-based interest number k (1..MAX_INTERESTS)."""
    return f"<next_{k}>"


def persona_token(p: int) -> str:
    """`<p_k>` for persona prototype k."""
    return f"<p_{p}>"


def special_tokens(level_sizes: Sequence[int], num_personas: int) -> list[str]:
    """Every token the format adds to a tokenizer: sections, `<next_k>`, personas, SID codes."""
    out = list(SECTION_TOKENS)
    out += [next_token(k) for k in range(1, MAX_INTERESTS + 1)]
    out += [persona_token(p) for p in range(num_personas)]
    for lvl, size in enumerate(level_sizes):
        out += [sid_token(lvl, c) for c in range(size)]
    return out


def clean_text(text: str) -> str:
    """Canonical free text: no angle brackets (they would read as tokens), single spaces."""
    return " ".join(text.replace("<", " ").replace(">", " ").split())


def short_title(title: str, max_words: int = MAX_TITLE_WORDS) -> str:
    """A title cleaned and cut to `max_words` words."""
    return " ".join(clean_text(title).split()[:max_words])


# -- records ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PromptItem:
    """One history item as the reasoner reads it."""

    sid: tuple[int, ...]
    """Full Semantic ID codes."""
    title: str
    """Item title (shortened and cleaned when rendered)."""


@dataclass(frozen=True, slots=True)
class CoTInterest:
    """One interest hypothesis (canonicalized on construction: weight rounded, label cleaned)."""

    sid_prefix: tuple[int, ...]
    """Codes of the first levels of a SID (1..L-1 levels)."""
    weight: float
    """Relative strength in [0, MAX_WEIGHT]; rounded to WEIGHT_DECIMALS."""
    label: str
    """Short readable name of the interest."""

    def __post_init__(self) -> None:
        prefix = tuple(int(c) for c in self.sid_prefix)
        if not prefix or min(prefix) < 0 or len(prefix) >= len(LEVEL_LETTERS):
            raise DataError(f"interest sid_prefix {self.sid_prefix!r} must be non-empty codes >= 0")
        w = float(self.weight)
        if not math.isfinite(w) or not 0 <= w <= MAX_WEIGHT:
            raise DataError(f"interest weight {self.weight!r} must lie in [0, {MAX_WEIGHT:g}]")
        object.__setattr__(self, "sid_prefix", prefix)
        object.__setattr__(self, "weight", round(w, WEIGHT_DECIMALS))
        object.__setattr__(self, "label", clean_text(self.label))


@dataclass(frozen=True, slots=True)
class CoT:
    """A three-part chain of thought (canonicalized on construction)."""

    persona_id: int | None
    """Persona prototype id; None when the text named no usable persona."""
    persona_name: str
    """Readable persona name (and a short description); "" when `persona_id` is None."""
    interests: tuple[CoTInterest, ...]
    """0..MAX_INTERESTS interest hypotheses, best first (a teacher always gives >= 1)."""
    next_interest: int | None
    """0-based index into `interests` of the interest the next item most likely comes from."""
    transition: str
    """One-sentence reason for the transition."""

    def __post_init__(self) -> None:
        if self.persona_id is not None and self.persona_id < 0:
            raise DataError(f"persona_id {self.persona_id!r} must be >= 0 or None")
        interests = tuple(self.interests)
        if len(interests) > MAX_INTERESTS:
            raise DataError(f"{len(interests)} interests, at most {MAX_INTERESTS} allowed")
        nxt = self.next_interest
        if nxt is not None and not 0 <= nxt < len(interests):
            raise DataError(f"next_interest {nxt!r} out of range for {len(interests)} interests")
        object.__setattr__(self, "interests", interests)
        # No persona means no persona text either: the name is written inside the persona block.
        name = "" if self.persona_id is None else clean_text(self.persona_name)
        object.__setattr__(self, "persona_name", name)
        object.__setattr__(self, "transition", clean_text(self.transition))


@dataclass(frozen=True, slots=True)
class ParsedCompletion:
    """What `parse_completion` recovered from model text."""

    cot: CoT | None
    """The usable chain of thought, or None when nothing usable remains (non-thinking text)."""
    answer: tuple[int, ...] | None
    """The answer's full SID codes, or None when missing or invalid."""
    problems: tuple[str, ...]
    """One line per dropped or repaired part (empty for a well-formed completion)."""


# -- rendering --------------------------------------------------------------------------------


def render_prompt(items: Sequence[PromptItem], *, thinking: bool) -> str:
    """The reasoner's prompt for a history (oldest first; the caller keeps the last N items)."""
    parts = []
    for it in items:
        title = short_title(it.title)
        parts.append(f"{format_sid(it.sid)} {title}" if title else format_sid(it.sid))
    head = f"{USER}history: {'; '.join(parts)}{USER_END}"
    return head + THINK if thinking else head + THINK + THINK_END + ANSWER


def render_cot(cot: CoT) -> str:
    """The thought part of a thinking completion, ending with `</think><answer>`."""
    out = []
    if cot.persona_id is not None:
        name = f" {cot.persona_name}" if cot.persona_name else ""
        out.append(f"{PERSONA}{persona_token(cot.persona_id)}{name}{PERSONA_END}")
    for it in cot.interests:
        label = f" {it.label}" if it.label else ""
        out.append(
            f"{INTEREST}{format_sid(it.sid_prefix)} w={it.weight:.{WEIGHT_DECIMALS}f}{label}"
            f"{INTEREST_END}"
        )
    nxt = "" if cot.next_interest is None else next_token(cot.next_interest + 1)
    sep = " " if nxt and cot.transition else ""
    out.append(f"{TRANSITION}{nxt}{sep}{cot.transition}{TRANSITION_END}")
    return "".join(out) + THINK_END + ANSWER


def render_answer(sid: Sequence[int]) -> str:
    """The answer part of a completion: the full SID and `</answer>`."""
    return format_sid(tuple(int(c) for c in sid)) + ANSWER_END


def render_completion(cot: CoT | None, sid: Sequence[int]) -> str:
    """A whole completion: thinking when `cot` is given, else answer only."""
    return (render_cot(cot) if cot is not None else "") + render_answer(sid)


# -- parsing ----------------------------------------------------------------------------------

# Bounded digit runs: Python refuses int() of > 4300 digits, and no code is that large.
_SID_TOKEN = r"<[a-z]_\d{1,9}>"
_BLOCK_RE = re.compile(r"<(persona|interest|transition)>(.*?)</\1>", re.DOTALL)
_OPEN_RE = re.compile(r"<(persona|interest|transition)>")
_PERSONA_RE = re.compile(r"\s*<p_(\d{1,9})>(.*)", re.DOTALL)
_INTEREST_RE = re.compile(
    rf"\s*((?:{_SID_TOKEN})+)\s*(?:w=(\d{{1,12}}(?:\.\d{{0,12}})?|\.\d{{1,12}})(?![\d.]))?(.*)",
    re.DOTALL,
)
_NEXT_RE = re.compile(r"\s*<next_(\d{1,9})>(.*)", re.DOTALL)
_TOKEN_RE = re.compile(r"<([a-z])_(\d{1,9})>")
_ANY_TAG_RE = re.compile(r"</?[a-z_]+[0-9]*>|<[a-z]_\d+>")


def _parse_codes(text: str, what: str) -> tuple[tuple[int, ...] | None, str | None]:
    """SID tokens in level order with nothing else around them -> (codes, None) or (None, why)."""
    codes: list[int] = []
    pos = 0
    stripped = text.strip()
    for m in _TOKEN_RE.finditer(stripped):
        if m.start() != pos or LEVEL_LETTERS.index(m.group(1)) != len(codes):
            return None, f"{what} {stripped[:80]!r} is not a SID in level order"
        codes.append(int(m.group(2)))
        pos = m.end()
    if pos != len(stripped) or not codes:
        return None, f"{what} {stripped[:80]!r} is not a SID"
    return tuple(codes), None


def _check_codes(codes: tuple[int, ...], level_sizes: Sequence[int]) -> str | None:
    for lvl, code in enumerate(codes):
        if lvl >= len(level_sizes) or code >= level_sizes[lvl]:
            size = level_sizes[lvl] if lvl < len(level_sizes) else "no such level"
            return f"code {code} at level {lvl} out of range ({size})"
    return None


def _free_text(raw: str, what: str, problems: list[str]) -> str:
    """Free text of a block; markup inside it is removed and reported."""
    if _ANY_TAG_RE.search(raw):
        problems.append(f"{what}: stray markup removed")
        raw = _ANY_TAG_RE.sub(" ", raw)
    return clean_text(raw)


def _parse_persona(body: str, num_personas: int, problems: list[str]) -> tuple[int, str] | None:
    m = _PERSONA_RE.fullmatch(body)
    if m is None:
        problems.append(f"persona {body.strip()[:80]!r}: no <p_k> token")
        return None
    pid = int(m.group(1))
    if pid >= num_personas:
        problems.append(f"persona <p_{pid}> unknown (only {num_personas} personas)")
        return None
    return pid, _free_text(m.group(2), "persona name", problems)


def _parse_interest(
    body: str, k: int, level_sizes: Sequence[int], problems: list[str]
) -> CoTInterest | None:
    m = _INTEREST_RE.fullmatch(body)
    if m is None:
        problems.append(f"interest {k}: no SID prefix in {body.strip()[:80]!r}")
        return None
    codes, why = _parse_codes(m.group(1), f"interest {k} prefix")
    if codes is None:
        problems.append(why or f"interest {k}: bad prefix")
        return None
    if len(codes) >= len(level_sizes):
        problems.append(
            f"interest {k}: prefix of {len(codes)} levels, at most {len(level_sizes) - 1} allowed"
        )
        return None
    bad = _check_codes(codes, level_sizes)
    if bad is not None:
        problems.append(f"interest {k}: {bad}")
        return None
    weight = 0.0
    if m.group(2) is None:
        problems.append(f"interest {k}: missing weight (0 used)")
    else:
        weight = float(m.group(2))
    label = _free_text(m.group(3), f"interest {k} label", problems)
    return CoTInterest(codes, weight, label)


def _parse_thought(
    thought: str, level_sizes: Sequence[int], num_personas: int, problems: list[str]
) -> CoT | None:
    """The three parts of a thought (the text between `<think>` and `</think>`)."""
    persona: tuple[int, str] | None = None
    interests: list[CoTInterest] = []
    kept_as: dict[int, int] = {}  # 1-based number in the text -> index in `interests`
    transitions: list[str] = []
    counts = {"persona": 0, "interest": 0, "transition": 0}
    pos = 0
    for m in _BLOCK_RE.finditer(thought):
        if thought[pos : m.start()].strip():
            problems.append(f"stray text {thought[pos : m.start()].strip()[:60]!r} dropped")
        pos = m.end()
        kind, body = m.group(1), m.group(2)
        counts[kind] += 1
        if _OPEN_RE.search(body):
            problems.append(f"{kind} block {counts[kind]}: unterminated section inside, dropped")
            continue
        if kind == "persona":
            if counts[kind] > 1:
                problems.append("more than one persona: extra dropped")
            else:
                persona = _parse_persona(body, num_personas, problems)
        elif kind == "interest":
            k = counts[kind]
            if k > MAX_INTERESTS:
                problems.append(f"interest {k}: more than {MAX_INTERESTS} interests, dropped")
                continue
            interest = _parse_interest(body, k, level_sizes, problems)
            if interest is not None:
                kept_as[k] = len(interests)
                interests.append(interest)
        else:
            if counts[kind] > 1:
                problems.append("more than one transition: extra dropped")
            else:
                transitions.append(body)
    if thought[pos:].strip():
        problems.append(f"stray text {thought[pos:].strip()[:60]!r} dropped")
    for kind in counts:
        unclosed = len(re.findall(f"<{kind}>", thought)) - counts[kind]
        if unclosed > 0:
            problems.append(f"{unclosed} unterminated <{kind}> section(s) dropped")

    next_interest: int | None = None
    reason = ""
    if not transitions:
        problems.append("missing <transition>")
    else:
        nm = _NEXT_RE.fullmatch(transitions[0])
        if nm is None:
            problems.append("transition without <next_k>")
            reason = _free_text(transitions[0], "transition", problems)
        else:
            k = int(nm.group(1))
            reason = _free_text(nm.group(2), "transition", problems)
            if k in kept_as:
                next_interest = kept_as[k]
            else:
                problems.append(f"transition <next_{k}> names no kept interest")
    if persona is None and not counts["persona"]:
        problems.append("missing <persona>")
    if not interests:
        problems.append("no usable <interest>")
        if persona is None:
            return None
    return CoT(
        persona_id=None if persona is None else persona[0],
        persona_name="" if persona is None else persona[1],
        interests=tuple(interests),
        next_interest=next_interest,
        transition=reason,
    )


def _parse_answer(
    region: str, closed: bool, level_sizes: Sequence[int], problems: list[str]
) -> tuple[int, ...] | None:
    if not closed:
        problems.append("unterminated answer (no </answer>)")
    codes, why = _parse_codes(region, "answer")
    if codes is None:
        problems.append(why or "bad answer")
        return None
    if len(codes) != len(level_sizes):
        problems.append(f"answer has {len(codes)} levels, a SID has {len(level_sizes)}")
        return None
    bad = _check_codes(codes, level_sizes)
    if bad is not None:
        problems.append(f"answer: {bad}")
        return None
    return codes


def parse_completion(
    text: str, *, level_sizes: Sequence[int], num_personas: int
) -> ParsedCompletion:
    """Parse a completion (thinking or not) tolerantly; never raises on any string.

    Invalid parts (unknown persona, out-of-range or too-long prefixes, more than 5 interests,
    a bad `<next_k>`, missing or garbled sections, text after the answer) are dropped and
    described in `problems`.

    Args:
        text: model output after the prompt (a leading `<think>` is accepted).
        level_sizes: codebook size per SID level (a full SID has len(level_sizes) codes).
        num_personas: persona ids must lie in [0, num_personas).
    """
    problems: list[str] = []
    if not isinstance(text, str):
        return ParsedCompletion(None, None, (f"not text: {type(text).__name__}",))
    body = text.lstrip()
    if body.startswith(THINK):
        body = body[len(THINK) :]
    cot: CoT | None = None
    answer_region: str | None = None
    think_end = body.find(THINK_END)
    if think_end >= 0:
        thought, rest = body[:think_end], body[think_end + len(THINK_END) :]
        a = rest.find(ANSWER)
        if a < 0:
            problems.append("missing <answer> after </think>")
        else:
            if rest[:a].strip():
                problems.append(f"stray text {rest[:a].strip()[:60]!r} before <answer> dropped")
            answer_region = rest[a + len(ANSWER) :]
    elif _OPEN_RE.search(body):
        a = body.find(ANSWER)
        thought = body if a < 0 else body[:a]
        problems.append("missing </think>")
        answer_region = None if a < 0 else body[a + len(ANSWER) :]
        if a < 0:
            problems.append("missing <answer>")
    else:  # non-thinking: the prompt ended with <answer>; tolerate a repeated opener
        thought = ""
        answer_region = body[len(ANSWER) :] if body.startswith(ANSWER) else body
    if thought.strip():
        cot = _parse_thought(thought, level_sizes, num_personas, problems)
    elif think_end >= 0:
        problems.append("empty thought")
    answer: tuple[int, ...] | None = None
    if answer_region is not None:
        end = answer_region.find(ANSWER_END)
        closed = end >= 0
        region = answer_region[:end] if closed else answer_region
        if closed and answer_region[end + len(ANSWER_END) :].strip():
            problems.append("text after </answer> ignored")
        answer = _parse_answer(region, closed, level_sizes, problems)
    return ParsedCompletion(cot, answer, tuple(problems))


# -- to Trace ---------------------------------------------------------------------------------


def to_trace(
    parsed: ParsedCompletion,
    *,
    user_id: str,
    model_version: str,
    history_fingerprint: str,
    candidates: Sequence[Candidate | tuple[str, float]] = (),
    text: str,
    persona_names: Sequence[str] | None = None,
    created_at: float | None = None,
) -> Trace:
    """The `Trace` of a parsed completion.

    Args:
        candidates: the reasoner's own top items, best first.
        text: the full CoT text, for explanations.
        persona_names: readable prototype names, used when the model wrote no name.
        created_at: unix seconds (default: now).

    Raises:
        TraceError: no thought, no usable persona or no usable interest (the caller counts it).
    """
    cot = parsed.cot
    if cot is None:
        raise TraceError(f"user {user_id!r}: completion has no usable chain of thought")
    if cot.persona_id is None:
        raise TraceError(f"user {user_id!r}: completion names no usable persona")
    if not cot.interests:
        raise TraceError(f"user {user_id!r}: completion has no usable interest")
    name = cot.persona_name
    if not name and persona_names is not None and cot.persona_id < len(persona_names):
        name = persona_names[cot.persona_id]
    cands = [
        c if isinstance(c, Candidate) else Candidate(str(c[0]), float(c[1])) for c in candidates
    ]
    return Trace(
        user_id=user_id,
        persona=Persona(id=cot.persona_id, name=name),
        interests=[Interest(i.sid_prefix, i.weight, i.label) for i in cot.interests],
        transition=Transition(text=cot.transition, next_interest=cot.next_interest),
        candidates=cands,
        text=text,
        model_version=model_version,
        history_fingerprint=history_fingerprint,
        created_at=time.time() if created_at is None else float(created_at),
    )
