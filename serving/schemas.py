"""Request and response records of the API (HTTP bodies; gRPC messages are validated through
the same models), with the limits every request must respect.

Requests are strict (`"k": "10"` is a type error, not 10) and closed (`extra="forbid"`: a
misspelt field is an error, never silently ignored). Ids are bounded and printable; a user id
may not contain `{` or `}`, which would break the Redis Cluster hash tag of its keys.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from fast_path.recommender import Recommendation, RecommendRequest
from serving.experiments import Variant

MAX_ID_LEN = 256
"""Longest user, item or domain id."""
MAX_HISTORY = 1000
"""Most history items in one request (the model reads only its newest window)."""
MAX_K = 1000
"""Schema bound on k; the release's `k_max` setting may be lower (then 422 from the fast path)."""
MAX_BEAMS = 1024
"""Schema bound on num_beams; the release's `beams_max` may be lower."""
MAX_BLOCKLIST = 1000
MAX_DOMAINS = 32
MAX_EVENTS = 1000
"""Most events in one `POST /v1/events`."""
DEFAULT_BEAMS = 20
"""Beam width when neither the variant nor the request sets one."""

UserId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_LEN, pattern=r"^[^{}\x00-\x1f\x7f]+$"),
]
ItemId = Annotated[
    str, StringConstraints(min_length=1, max_length=MAX_ID_LEN, pattern=r"^[^\x00-\x1f\x7f]+$")
]

RefreshOutcome = Literal["enqueued", "not_due", "failed", "disabled"]

_REQUEST = ConfigDict(extra="forbid", strict=True, frozen=True)


class RecommendBody(BaseModel):
    """`POST /v1/recommend`."""

    model_config = _REQUEST

    user_id: UserId
    history: list[ItemId] | None = Field(
        default=None,
        min_length=1,
        max_length=MAX_HISTORY,
        description="Item ids, oldest first. Omit to use the user's stored history (events); "
        "a user without one gets a cold start.",
    )
    k: int = Field(default=10, ge=1, le=MAX_K, description="Items to return.")
    num_beams: int | None = Field(
        default=None,
        ge=1,
        le=MAX_BEAMS,
        description="Beam width (>= k); the experiment variant's setting wins when it has one.",
    )
    use_trace: bool | None = Field(
        default=None,
        description="false opts out of the slow path's trace; null lets the variant decide.",
    )
    exclude_seen: bool = Field(default=True, description="Never return history items.")
    blocklist: list[ItemId] = Field(default_factory=list, max_length=MAX_BLOCKLIST)
    domains: list[ItemId] | None = Field(
        default=None, min_length=1, max_length=MAX_DOMAINS, description="Only these domains."
    )
    explain: bool = Field(default=False, description="Attach the trace's explanation.")

    @model_validator(mode="after")
    def _beams_hold_k(self) -> RecommendBody:
        if self.num_beams is not None and self.num_beams < self.k:
            raise ValueError(f"num_beams={self.num_beams} must be >= k={self.k}")
        return self

    def to_request(self, variant: Variant) -> RecommendRequest:
        """The fast path's request under the user's variant."""
        return RecommendRequest(
            user_id=self.user_id,
            history=None if self.history is None else tuple(self.history),
            k=self.k,
            num_beams=variant.beams(self.k, self.num_beams, DEFAULT_BEAMS),
            use_trace=variant.thinking(self.use_trace),
            exclude_seen=self.exclude_seen,
            blocklist=tuple(self.blocklist),
            domains=None if self.domains is None else tuple(self.domains),
            explain=self.explain,
        )


class ItemOut(BaseModel):
    """One recommended item."""

    item_id: str
    score: float
    title: str
    sid: str = Field(description='The item\'s Semantic ID, e.g. "<a_1><b_2><c_3>".')
    source: Literal["fast", "reasoner"]
    interest: str | None = Field(description="The trace interest whose SID prefix holds it.")


class ExplanationOut(BaseModel):
    """Why, in the reasoner's words."""

    persona: str
    interests: list[str]
    transition: str


class RecommendResponse(BaseModel):
    """The answer to `POST /v1/recommend` (and gRPC Recommend)."""

    user_id: str
    variant: str = Field(description="Experiment variant (`default` outside experiments).")
    experiment: str | None
    release_version: str
    items: list[ItemOut]
    trace_status: Literal["hit", "miss", "stale", "error", "disabled"]
    trace_used: bool
    history_source: Literal["request", "store", "error", "none"]
    explanation: ExplanationOut | None
    timings: dict[str, float] = Field(description="Seconds: history, trace, decode, total.")

    @classmethod
    def build(cls, variant: Variant, rec: Recommendation) -> RecommendResponse:
        """From the fast path's answer."""
        exp = rec.explanation
        return cls(
            user_id=rec.user_id,
            variant=variant.name,
            experiment=variant.experiment,
            release_version=rec.release_version,
            items=[
                ItemOut(
                    item_id=i.item_id,
                    # JSON has no infinities; a filtered-out beam never reaches here, but an
                    # exotic blend score must not turn a good answer into a 500.
                    score=i.score if math.isfinite(i.score) else -1e300,
                    title=i.title,
                    sid=i.sid,
                    source=i.source,  # type: ignore[arg-type]
                    interest=i.interest,
                )
                for i in rec.items
            ],
            trace_status=rec.trace_status,  # type: ignore[arg-type]
            trace_used=rec.trace_used,
            history_source=rec.history_source,  # type: ignore[arg-type]
            explanation=None
            if exp is None
            else ExplanationOut(
                persona=exp.persona, interests=list(exp.interests), transition=exp.transition
            ),
            timings=dict(rec.timings),
        )


class EventIn(BaseModel):
    """One interaction."""

    model_config = _REQUEST

    item_id: ItemId
    ts: float | None = Field(
        default=None, ge=0, allow_inf_nan=False, description="Unix seconds; default now."
    )


class EventsBody(BaseModel):
    """`POST /v1/events`: interactions of one user, oldest first."""

    model_config = _REQUEST

    user_id: UserId
    events: list[EventIn] = Field(min_length=1, max_length=MAX_EVENTS)


class EventsResponse(BaseModel):
    """What happened to the events."""

    user_id: str
    stored: int = Field(description="Events now stored for the user (capped).")
    refresh: RefreshOutcome = Field(
        description="Trace refresh: enqueued, not due yet (debounce), failed (broker "
        "unavailable; the events are stored), or disabled."
    )


class PersonaOut(BaseModel):
    id: int
    name: str


class InterestOut(BaseModel):
    sid_prefix: list[int]
    weight: float
    label: str


class TransitionOut(BaseModel):
    text: str
    next_interest: int | None


class CandidateOut(BaseModel):
    item_id: str
    score: float


class TraceResponse(BaseModel):
    """`GET /v1/users/{user_id}/trace`: the slow path's trace (`Trace.to_json_dict`)."""

    schema_version: int
    user_id: str
    persona: PersonaOut
    interests: list[InterestOut]
    transition: TransitionOut
    candidates: list[CandidateOut]
    text: str = Field(description="The full chain of thought.")
    model_version: str
    history_fingerprint: str
    created_at: float


class ErrorDetail(BaseModel):
    loc: list[str]
    msg: str
    type: str | None = None


class ErrorInfo(BaseModel):
    code: str = Field(description="invalid_argument, unauthenticated, not_found, ...")
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorBody(BaseModel):
    """Every 4xx/5xx body."""

    error: ErrorInfo


class HealthResponse(BaseModel):
    status: Literal["ok"]


class ReadyResponse(BaseModel):
    ready: bool
    models_loaded: bool
    redis: bool
    releases: dict[str, str] = Field(description="Release name -> version being served.")
    error: str | None = Field(default=None, description="Why the last (re)load failed.")


def error_body(code: str, message: str, details: Any = ()) -> dict[str, Any]:
    """The JSON of an ErrorBody."""
    return {"error": {"code": code, "message": message, "details": list(details)}}
