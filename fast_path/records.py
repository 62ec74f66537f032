"""Typed records of the fast path's API: the request, the answer and its parts.

`serving` maps these to and from its pydantic (HTTP) and protobuf (gRPC) shapes; inside the
fast path they are plain frozen dataclasses. `fast_path.recommender` re-exports every name.
"""

from __future__ import annotations

from dataclasses import dataclass

TRACE_STATUSES = ("hit", "miss", "stale", "error", "disabled")
"""Values of `Recommendation.trace_status`; only "hit" means the trace was used."""
HISTORY_SOURCES = ("request", "store", "error", "none")
"""Values of `Recommendation.history_source`: the request's history, the store's, a store
error (served as a cold start), or no history store configured (cold start)."""


@dataclass(frozen=True, slots=True)
class RecommendRequest:
    """One recommendation request."""

    user_id: str
    history: tuple[str, ...] | None = None
    """External item ids, oldest first; None: read the user's history from the store."""
    k: int = 10
    """Items to return (1..k_max)."""
    num_beams: int = 20
    """Beam width (k <= num_beams <= beams_max)."""
    use_trace: bool = True
    """Read the cached trace ("thinking on"); False: no-trace mode."""
    exclude_seen: bool = True
    """Never return items of the history."""
    blocklist: tuple[str, ...] = ()
    """Item ids never to return (unknown ids are ignored)."""
    domains: tuple[str, ...] | None = None
    """Only items of these domains; None: every domain."""
    explain: bool = False
    """Attach the persona / interest explanation of the trace (when one is used)."""


@dataclass(frozen=True, slots=True)
class RecommendedItem:
    """One recommended item."""

    item_id: str
    score: float
    """Ranking score: summed SID log-probability of the fast model (plus the weighted item-head
    logit when the release's model has an item head), or the blend policy's."""
    title: str
    sid: str
    """The item's SID spelled as tokens, e.g. "<a_1><b_2><c_3>"."""
    source: str
    """"fast" (decoded) or "reasoner" (blended in from the trace's candidates)."""
    interest: str | None = None
    """Label of the trace interest with the longest SID prefix that contains the item."""


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why, in the reasoner's words (from the trace)."""

    persona: str
    interests: tuple[str, ...]
    transition: str


@dataclass(frozen=True, slots=True)
class Recommendation:
    """The answer to one request."""

    user_id: str
    items: tuple[RecommendedItem, ...]
    release_version: str
    trace_status: str
    """One of TRACE_STATUSES."""
    trace_used: bool
    explanation: Explanation | None
    timings: dict[str, float]
    """Seconds: "history", "trace" (the batch's store reads), "decode" (the beam search this
    request was part of), "total" (the whole recommend call)."""
    history_source: str = "request"
    """One of HISTORY_SOURCES."""
