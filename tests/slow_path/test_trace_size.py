"""The per-user trace size behind the Redis sizing in docs/architecture.md (~1 KB per user)."""

from __future__ import annotations

from slow_path.trace import Candidate, Interest, Persona, Trace, Transition, history_fingerprint


def test_a_typical_trace_is_about_one_kilobyte() -> None:
    trace = Trace(
        user_id="user-123456",
        persona=Persona(7, "home-office organizer"),
        interests=[
            Interest((12, 3), 0.45, "paper and notebooks"),
            Interest((40,), 0.3, "desk lighting"),
            Interest((8, 1), 0.25, "coffee gear"),
        ],
        transition=Transition("after a desk lamp, bulbs and organizers usually follow", 1),
        candidates=[Candidate(str(100000 + i), -1.5 - i / 10) for i in range(10)],
        text="x" * 600,
        model_version="20261124T000000Z",
        history_fingerprint=history_fingerprint([str(i) for i in range(50)]),
        created_at=1_795_000_000.0,
    )
    size = len(trace.to_bytes())
    assert 800 < size < 1100, size
    assert Trace.from_bytes(trace.to_bytes()) == trace
