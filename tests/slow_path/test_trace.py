"""Trace: validation, versioned wire form, JSON form, history fingerprints, import lightness."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sid_index.errors import ConfigError
from slow_path.errors import TraceError
from slow_path.trace import (
    MAX_INTERESTS,
    TRACE_SCHEMA_VERSION,
    Candidate,
    Interest,
    Persona,
    Trace,
    Transition,
    history_fingerprint,
)

REPO = Path(__file__).resolve().parents[2]


def make_trace(user_id: str = "u1", created_at: float = 1_700_000_000.5, **kw: object) -> Trace:
    fields: dict[str, object] = {
        "user_id": user_id,
        "persona": Persona(3, "night-owl cinephile"),
        "interests": [Interest((12, 7), 0.7, "noir"), Interest((4,), 0.3, "jazz docs")],
        "transition": Transition("drifting from noir toward documentaries", 1),
        "candidates": [Candidate("item-9", 2.5), Candidate("item-3", -0.25)],
        "text": "<persona>...</persona><interests>...</interests>",
        "model_version": "release-7",
        "history_fingerprint": history_fingerprint(["a", "b", "c"]),
        "created_at": created_at,
    }
    fields.update(kw)
    return Trace(**fields)  # type: ignore[arg-type]


# -- strategies ---------------------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
interests = st.builds(
    Interest,
    sid_prefix=st.lists(st.integers(0, 2**31), min_size=1, max_size=4).map(tuple),
    weight=st.floats(min_value=0, allow_infinity=False, allow_nan=False),
    label=st.text(max_size=20),
)


@st.composite
def traces(draw: st.DrawFn) -> Trace:
    ints = draw(st.lists(interests, min_size=1, max_size=MAX_INTERESTS))
    nxt = draw(st.none() | st.integers(0, len(ints) - 1))
    return Trace(
        user_id=draw(st.text(min_size=1, max_size=30)),
        persona=Persona(draw(st.integers(0, 2**40)), draw(st.text(max_size=20))),
        interests=ints,
        transition=Transition(draw(st.text(max_size=50)), nxt),
        candidates=draw(
            st.lists(st.builds(Candidate, st.text(min_size=1, max_size=12), finite), max_size=8)
        ),
        text=draw(st.text(max_size=200)),
        model_version=draw(st.text(max_size=12)),
        history_fingerprint=draw(st.text(max_size=16)),
        created_at=draw(st.floats(min_value=0, max_value=4e9, allow_nan=False)),
    )


# -- round trips --------------------------------------------------------------------------------


def test_bytes_round_trip_and_version_byte() -> None:
    t = make_trace()
    data = t.to_bytes()
    assert data[0] == TRACE_SCHEMA_VERSION
    assert Trace.from_bytes(data) == t
    assert Trace.from_bytes(bytearray(data)) == t
    assert Trace.from_bytes(memoryview(data)) == t
    # Compact: array-encoded structs carry no field names.
    assert b"sid_prefix" not in data and b"history_fingerprint" not in data


@settings(max_examples=150, deadline=None)
@given(traces())
def test_round_trip_property(t: Trace) -> None:
    assert Trace.from_bytes(t.to_bytes()) == t
    d = t.to_json_dict()
    assert Trace.from_json_dict(json.loads(json.dumps(d))) == t


def test_json_form_is_named_and_serializable() -> None:
    d = make_trace().to_json_dict()
    assert d["schema_version"] == TRACE_SCHEMA_VERSION
    assert d["persona"] == {"id": 3, "name": "night-owl cinephile"}
    assert d["interests"][0] == {"sid_prefix": [12, 7], "weight": 0.7, "label": "noir"}
    assert d["transition"]["next_interest"] == 1
    assert d["candidates"][1] == {"item_id": "item-3", "score": -0.25}
    json.dumps(d, allow_nan=False)


def test_json_form_rejects_other_version_and_missing_fields() -> None:
    d = make_trace().to_json_dict()
    with pytest.raises(TraceError, match="schema_version"):
        Trace.from_json_dict({**d, "schema_version": 2})
    bad = dict(d)
    del bad["persona"]
    with pytest.raises(TraceError, match="malformed"):
        Trace.from_json_dict(bad)
    with pytest.raises(TraceError, match="weight"):
        Trace.from_json_dict(
            {**d, "interests": [{"sid_prefix": [1], "weight": "nan", "label": ""}]}
        )


# -- corrupt / unknown bytes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "empty"),
        (bytes([TRACE_SCHEMA_VERSION + 1]) + make_trace().to_bytes()[1:], "version 2"),
        (b"\xff" + make_trace().to_bytes()[1:], "version 255"),
        (bytes([TRACE_SCHEMA_VERSION]), "corrupt"),
        (bytes([TRACE_SCHEMA_VERSION]) + b"\xc1garbage", "corrupt"),
        (b"\x00\x01", "version 0"),
    ],
)
def test_corrupt_or_unknown_bytes_raise_trace_error(data: bytes, match: str) -> None:
    with pytest.raises(TraceError, match=match):
        Trace.from_bytes(data)


def test_every_truncation_raises_trace_error() -> None:
    data = make_trace().to_bytes()
    for cut in range(len(data)):
        with pytest.raises(TraceError):
            Trace.from_bytes(data[:cut])


def test_well_formed_msgpack_with_invalid_content_raises_trace_error() -> None:
    # Encode a structurally valid record that violates the contract (no interests): decode
    # must run validation, not only type checks.
    raw = msgspec.to_builtins(make_trace())
    raw[2] = []
    with pytest.raises(TraceError, match="interests"):
        Trace.from_bytes(bytes([TRACE_SCHEMA_VERSION]) + msgspec.msgpack.encode(raw))
    raw = msgspec.to_builtins(make_trace())
    raw[2][0][1] = -1.0  # negative weight
    with pytest.raises(TraceError, match="weight"):
        Trace.from_bytes(bytes([TRACE_SCHEMA_VERSION]) + msgspec.msgpack.encode(raw))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(traces(), st.data())
def test_byte_corruption_never_escapes_as_another_error(t: Trace, data: st.DataObject) -> None:
    blob = bytearray(t.to_bytes())
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] = data.draw(st.integers(0, 255))
    try:
        out = Trace.from_bytes(bytes(blob))
    except TraceError:
        return
    assert isinstance(out, Trace)  # a flip that still decodes yields a valid trace
    assert 1 <= len(out.interests) <= MAX_INTERESTS


@given(st.binary(max_size=64))
def test_random_bytes_raise_trace_error_or_decode(blob: bytes) -> None:
    try:
        out = Trace.from_bytes(bytes([TRACE_SCHEMA_VERSION]) + blob)
    except TraceError:
        return
    assert Trace.from_bytes(out.to_bytes()) == out


# -- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"user_id": ""}, "user_id"),
        ({"interests": []}, "0 interests"),
        ({"interests": [Interest((1,), 1.0, "x")] * (MAX_INTERESTS + 1)}, "6 interests"),
        ({"transition": Transition("t", 2)}, "next_interest 2 out of range"),
        ({"created_at": -1.0}, "created_at"),
        ({"created_at": math.inf}, "created_at"),
        ({"created_at": math.nan}, "created_at"),
        ({"text": None}, "text"),
        ({"candidates": [("i", 1.0)]}, "Candidate"),
        ({"interests": [(1, 2)]}, "Interest"),
    ],
)
def test_trace_validation(kw: dict[str, object], match: str) -> None:
    with pytest.raises(TraceError, match=match):
        make_trace(**kw)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: Interest((), 1.0, "x"), "sid_prefix"),
        (lambda: Interest((1, -2), 1.0, "x"), "sid_prefix"),
        (lambda: Interest([1, 2], 1.0, "x"), "sid_prefix"),  # type: ignore[arg-type]
        (lambda: Interest((1, True), 1.0, "x"), "sid_prefix"),
        (lambda: Interest((1,), -0.1, "x"), "weight"),
        (lambda: Interest((1,), math.nan, "x"), "weight"),
        (lambda: Interest((1,), math.inf, "x"), "weight"),
        (lambda: Persona(-1, "p"), "persona id"),
        (lambda: Transition("t", -1), "next_interest"),
        (lambda: Candidate("", 1.0), "item_id"),
        (lambda: Candidate("i", math.nan), "score"),
    ],
)
def test_part_validation(build: object, match: str) -> None:
    with pytest.raises(TraceError, match=match):
        build()  # type: ignore[operator]


def test_trace_is_frozen() -> None:
    t = make_trace()
    with pytest.raises(AttributeError):
        t.created_at = 0.0  # type: ignore[misc]


def test_check_prefixes_against_level_sizes() -> None:
    t = make_trace()  # prefixes (12, 7) and (4,)
    t.check_prefixes([256, 256, 256, 16])
    with pytest.raises(TraceError, match="at most 1"):
        t.check_prefixes([256, 256])
    with pytest.raises(TraceError, match="code 12 at level 0"):
        t.check_prefixes([8, 256, 256])


# -- history fingerprint ------------------------------------------------------------------------


def test_fingerprint_is_stable_across_processes() -> None:
    # A golden value: writer and reader run in different processes (and releases), so the
    # hash must not depend on Python's per-process hash seed.
    assert history_fingerprint(["i1", "i2", "i3"]) == history_fingerprint(("i1", "i2", "i3"))
    code = (
        "from slow_path.trace import history_fingerprint\n"
        "print(history_fingerprint(['i1', 'i2', 'i3']))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == history_fingerprint(["i1", "i2", "i3"])
    assert len(history_fingerprint(["i1"])) == 16


def test_fingerprint_tracks_the_last_n_events() -> None:
    h = [f"i{k}" for k in range(10)]
    assert history_fingerprint(h, n=3) == history_fingerprint(h[-3:], n=3)
    assert history_fingerprint(h, n=3) != history_fingerprint([*h, "i10"], n=3)
    assert history_fingerprint(h) != history_fingerprint(h[:-1])
    assert history_fingerprint(["ab", "c"]) != history_fingerprint(["a", "bc"])
    assert history_fingerprint(["a", "b"]) != history_fingerprint(["b", "a"])
    with pytest.raises(ConfigError, match="n=0"):
        history_fingerprint(h, n=0)


def test_matches_history() -> None:
    t = make_trace(history_fingerprint=history_fingerprint(["a", "b"]))
    assert t.matches_history(["a", "b"])
    assert not t.matches_history(["a", "b", "c"])


# -- import lightness -----------------------------------------------------------------------------


def test_contract_modules_import_no_heavy_frameworks() -> None:
    code = (
        "import sys\n"
        "import slow_path.trace, slow_path.trace_store, slow_path.history_store\n"
        "import slow_path.redis_conn, slow_path.settings\n"
        "heavy = [m for m in ('celery', 'vllm', 'torch', 'transformers') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == ""
