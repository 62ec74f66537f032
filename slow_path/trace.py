"""`Trace`: the reasoner's output for one user — the contract between the slow and fast paths.

A trace is written by the slow path (Celery workers) into Redis and read by the fast path on
every request, so it is a compact, validated, versioned record:

- Wire form (`to_bytes`): one schema-version byte, then msgpack of the record with every
  struct encoded as an array (field order is the schema; no field names on the wire).
  A reader that meets another version byte, or bytes that do not decode into a valid trace,
  raises `TraceError`; callers treat that as a miss and count it. Adding or reordering fields
  means bumping `TRACE_SCHEMA_VERSION`.
- JSON form (`to_json_dict`): named fields, for the HTTP explanation endpoint.

`history_fingerprint` hashes the history a trace was computed from, so a reader can tell a
stale trace (its fingerprint differs from the fingerprint of the user's current history).

This module imports neither Celery, vLLM nor torch: the fast path imports it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec

from sid_index.errors import ConfigError
from slow_path.errors import TraceError

TRACE_SCHEMA_VERSION = 1
"""Version byte that leads every serialized trace; bump it on any change of the schema."""
MAX_INTERESTS = 5
"""Interest Expansion yields 1..MAX_INTERESTS interests."""
DEFAULT_FINGERPRINT_WINDOW = 50
"""Events (most recent) that `history_fingerprint` covers by default. Writers and readers
must agree on it, hence a constant rather than a setting."""


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


class Persona(msgspec.Struct, frozen=True, array_like=True):
    """Persona Abstraction: which persona the reasoner assigned to the user."""

    id: int
    """Persona id (>= 0) in the reasoner's persona vocabulary."""
    name: str
    """Readable persona name."""

    def __post_init__(self) -> None:
        if not _int(self.id) or self.id < 0:
            raise TraceError(f"persona id {self.id!r} must be an int >= 0")
        if not isinstance(self.name, str):
            raise TraceError(f"persona name {self.name!r} must be a string")


class Interest(msgspec.Struct, frozen=True, array_like=True):
    """One expanded interest: a SID prefix (a region of the catalogue) with a weight."""

    sid_prefix: tuple[int, ...]
    """Codes of the first levels of a SID (length 1..L-1, each >= 0)."""
    weight: float
    """Relative strength of the interest (finite, >= 0)."""
    label: str
    """Readable name of the interest."""

    def __post_init__(self) -> None:
        p = self.sid_prefix
        if not isinstance(p, tuple) or not p or not all(_int(c) and c >= 0 for c in p):
            raise TraceError(f"interest sid_prefix {p!r} must be a non-empty tuple of ints >= 0")
        if not _finite(self.weight) or self.weight < 0:
            raise TraceError(f"interest weight {self.weight!r} must be finite and >= 0")
        if not isinstance(self.label, str):
            raise TraceError(f"interest label {self.label!r} must be a string")


class Transition(msgspec.Struct, frozen=True, array_like=True):
    """Transition Inference: where the user's interest is heading next."""

    text: str
    """The reasoner's words for the transition."""
    next_interest: int | None
    """Index into `Trace.interests` of the predicted next interest, or None."""

    def __post_init__(self) -> None:
        if not isinstance(self.text, str):
            raise TraceError(f"transition text {self.text!r} must be a string")
        if self.next_interest is not None and (
            not _int(self.next_interest) or self.next_interest < 0
        ):
            raise TraceError(f"transition next_interest {self.next_interest!r} must be >= 0")


class Candidate(msgspec.Struct, frozen=True, array_like=True):
    """One of the reasoner's own top items, which the fast path may blend in."""

    item_id: str
    """Catalogue item id."""
    score: float
    """The reasoner's score (finite; higher is better)."""

    def __post_init__(self) -> None:
        if not isinstance(self.item_id, str) or not self.item_id:
            raise TraceError(f"candidate item_id {self.item_id!r} must be a non-empty string")
        if not _finite(self.score):
            raise TraceError(f"candidate {self.item_id!r} score {self.score!r} must be finite")


class Trace(msgspec.Struct, frozen=True, array_like=True):
    """The reasoner's trace for one user (see the module docstring for the wire format)."""

    user_id: str
    """The user the trace is about (non-empty)."""
    persona: Persona
    """Persona Abstraction."""
    interests: list[Interest]
    """Interest Expansion: 1..MAX_INTERESTS interests."""
    transition: Transition
    """Transition Inference; `next_interest` indexes `interests`."""
    candidates: list[Candidate]
    """The reasoner's own top items, best first (may be empty)."""
    text: str
    """The full chain of thought, for explanations."""
    model_version: str
    """Version of the reasoner (release) that produced the trace."""
    history_fingerprint: str
    """`history_fingerprint()` of the history the trace was computed from."""
    created_at: float
    """Unix seconds when the trace was computed; a store never replaces a newer trace."""

    def __post_init__(self) -> None:
        if not isinstance(self.user_id, str) or not self.user_id:
            raise TraceError(f"trace user_id {self.user_id!r} must be a non-empty string")
        who = f"trace of user {self.user_id!r}"
        if not isinstance(self.persona, Persona) or not isinstance(self.transition, Transition):
            raise TraceError(f"{who}: persona/transition must be Persona/Transition records")
        if not isinstance(self.interests, list) or not 1 <= len(self.interests) <= MAX_INTERESTS:
            n = len(self.interests) if isinstance(self.interests, list) else self.interests
            raise TraceError(f"{who}: {n!r} interests, expected a list of 1..{MAX_INTERESTS}")
        if not all(isinstance(i, Interest) for i in self.interests):
            raise TraceError(f"{who}: interests must be Interest records")
        nxt = self.transition.next_interest
        if nxt is not None and nxt >= len(self.interests):
            raise TraceError(
                f"{who}: transition next_interest {nxt} out of range for "
                f"{len(self.interests)} interests"
            )
        if not isinstance(self.candidates, list) or not all(
            isinstance(c, Candidate) for c in self.candidates
        ):
            raise TraceError(f"{who}: candidates must be a list of Candidate records")
        for name in ("text", "model_version", "history_fingerprint"):
            if not isinstance(getattr(self, name), str):
                raise TraceError(f"{who}: {name} {getattr(self, name)!r} must be a string")
        if not _finite(self.created_at) or self.created_at < 0:
            raise TraceError(f"{who}: created_at {self.created_at!r} must be finite and >= 0")

    # -- wire form ---------------------------------------------------------------------------

    def to_bytes(self) -> bytes:
        """Serialize: the schema-version byte, then msgpack (struct fields as arrays)."""
        return _VERSION_BYTE + _ENCODER.encode(self)

    @classmethod
    def from_bytes(cls, data: bytes | bytearray | memoryview) -> Trace:
        """Decode `to_bytes` output.

        Raises:
            TraceError: empty or corrupt bytes, an unknown schema version, or an invalid trace.
        """
        view = memoryview(data)
        if len(view) == 0:
            raise TraceError("empty trace bytes")
        if view[0] != TRACE_SCHEMA_VERSION:
            raise TraceError(
                f"trace schema version {view[0]} is not readable by this build "
                f"(reads version {TRACE_SCHEMA_VERSION})"
            )
        try:
            return _DECODER.decode(view[1:])
        except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError) as exc:
            # msgspec raises UnicodeDecodeError for invalid UTF-8 inside a string.
            raise TraceError(f"corrupt trace bytes ({len(view)} bytes): {exc}") from None

    # -- JSON form ---------------------------------------------------------------------------

    def to_json_dict(self) -> dict[str, Any]:
        """Named-field form for the HTTP API (JSON-serializable builtins only)."""
        return {
            "schema_version": TRACE_SCHEMA_VERSION,
            "user_id": self.user_id,
            "persona": {"id": self.persona.id, "name": self.persona.name},
            "interests": [
                {"sid_prefix": list(i.sid_prefix), "weight": i.weight, "label": i.label}
                for i in self.interests
            ],
            "transition": {
                "text": self.transition.text,
                "next_interest": self.transition.next_interest,
            },
            "candidates": [{"item_id": c.item_id, "score": c.score} for c in self.candidates],
            "text": self.text,
            "model_version": self.model_version,
            "history_fingerprint": self.history_fingerprint,
            "created_at": self.created_at,
        }

    @classmethod
    def from_json_dict(cls, d: Mapping[str, Any]) -> Trace:
        """Inverse of `to_json_dict`.

        Raises:
            TraceError: a missing or mistyped field, another schema version, or an invalid trace.
        """
        version = d.get("schema_version", TRACE_SCHEMA_VERSION)
        if version != TRACE_SCHEMA_VERSION:
            raise TraceError(f"trace JSON schema_version {version!r} != {TRACE_SCHEMA_VERSION}")
        try:
            return cls(
                user_id=d["user_id"],
                persona=Persona(id=d["persona"]["id"], name=d["persona"]["name"]),
                interests=[
                    Interest(tuple(i["sid_prefix"]), float(i["weight"]), i["label"])
                    for i in d["interests"]
                ],
                transition=Transition(
                    text=d["transition"]["text"],
                    next_interest=d["transition"]["next_interest"],
                ),
                candidates=[Candidate(c["item_id"], float(c["score"])) for c in d["candidates"]],
                text=d["text"],
                model_version=d["model_version"],
                history_fingerprint=d["history_fingerprint"],
                created_at=float(d["created_at"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise TraceError(f"malformed trace JSON: {type(exc).__name__}: {exc}") from None

    # -- checks for consumers ----------------------------------------------------------------

    def matches_history(self, item_ids: Sequence[str], n: int = DEFAULT_FINGERPRINT_WINDOW) -> bool:
        """True when the trace was computed from this history (False: the trace is stale)."""
        return self.history_fingerprint == history_fingerprint(item_ids, n)

    def check_prefixes(self, level_sizes: Sequence[int]) -> None:
        """Check every interest prefix against an SID index with these per-level code sizes.

        Raises:
            TraceError: a prefix is as long as a full SID (or longer) or a code is out of range.
        """
        for k, interest in enumerate(self.interests):
            p = interest.sid_prefix
            if len(p) >= len(level_sizes):
                raise TraceError(
                    f"trace of user {self.user_id!r}: interest {k} prefix {p} has {len(p)} "
                    f"levels; an SID of {len(level_sizes)} levels allows at most "
                    f"{len(level_sizes) - 1}"
                )
            for lvl, code in enumerate(p):
                if code >= level_sizes[lvl]:
                    raise TraceError(
                        f"trace of user {self.user_id!r}: interest {k} prefix {p} code {code} "
                        f"at level {lvl} >= codebook size {level_sizes[lvl]}"
                    )


_VERSION_BYTE = bytes([TRACE_SCHEMA_VERSION])
_ENCODER = msgspec.msgpack.Encoder()
_DECODER = msgspec.msgpack.Decoder(Trace)


def history_fingerprint(item_ids: Sequence[str], n: int = DEFAULT_FINGERPRINT_WINDOW) -> str:
    """Short stable hash (16 hex chars) of the last `n` item ids of a history, oldest first.

    Each id is length-prefixed before hashing, so ("ab", "c") and ("a", "bc") differ.
    """
    if n < 1:
        raise ConfigError(f"history_fingerprint window {n=} must be >= 1")
    h = hashlib.blake2b(digest_size=8, person=b"rr-hist-v1")
    for item_id in item_ids[-n:]:
        raw = item_id.encode("utf-8")
        h.update(len(raw).to_bytes(4, "big"))
        h.update(raw)
    return h.hexdigest()
