from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class History(_message.Message):
    __slots__ = ("item_ids",)
    ITEM_IDS_FIELD_NUMBER: _ClassVar[int]
    item_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, item_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class Domains(_message.Message):
    __slots__ = ("names",)
    NAMES_FIELD_NUMBER: _ClassVar[int]
    names: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, names: _Optional[_Iterable[str]] = ...) -> None: ...

class RecommendRequest(_message.Message):
    __slots__ = ("user_id", "history", "k", "num_beams", "use_trace", "exclude_seen", "blocklist", "domains", "explain")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    NUM_BEAMS_FIELD_NUMBER: _ClassVar[int]
    USE_TRACE_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_SEEN_FIELD_NUMBER: _ClassVar[int]
    BLOCKLIST_FIELD_NUMBER: _ClassVar[int]
    DOMAINS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    history: History
    k: int
    num_beams: int
    use_trace: bool
    exclude_seen: bool
    blocklist: _containers.RepeatedScalarFieldContainer[str]
    domains: Domains
    explain: bool
    def __init__(self, user_id: _Optional[str] = ..., history: _Optional[_Union[History, _Mapping]] = ..., k: _Optional[int] = ..., num_beams: _Optional[int] = ..., use_trace: _Optional[bool] = ..., exclude_seen: _Optional[bool] = ..., blocklist: _Optional[_Iterable[str]] = ..., domains: _Optional[_Union[Domains, _Mapping]] = ..., explain: _Optional[bool] = ...) -> None: ...

class RecommendedItem(_message.Message):
    __slots__ = ("item_id", "score", "title", "sid", "source", "interest")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    SID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    INTEREST_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    title: str
    sid: str
    source: str
    interest: str
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ..., title: _Optional[str] = ..., sid: _Optional[str] = ..., source: _Optional[str] = ..., interest: _Optional[str] = ...) -> None: ...

class Explanation(_message.Message):
    __slots__ = ("persona", "interests", "transition")
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    INTERESTS_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_FIELD_NUMBER: _ClassVar[int]
    persona: str
    interests: _containers.RepeatedScalarFieldContainer[str]
    transition: str
    def __init__(self, persona: _Optional[str] = ..., interests: _Optional[_Iterable[str]] = ..., transition: _Optional[str] = ...) -> None: ...

class RecommendResponse(_message.Message):
    __slots__ = ("user_id", "variant", "experiment", "release_version", "items", "trace_status", "trace_used", "history_source", "explanation", "timings")
    class TimingsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    EXPERIMENT_FIELD_NUMBER: _ClassVar[int]
    RELEASE_VERSION_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    TRACE_STATUS_FIELD_NUMBER: _ClassVar[int]
    TRACE_USED_FIELD_NUMBER: _ClassVar[int]
    HISTORY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    EXPLANATION_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    variant: str
    experiment: str
    release_version: str
    items: _containers.RepeatedCompositeFieldContainer[RecommendedItem]
    trace_status: str
    trace_used: bool
    history_source: str
    explanation: Explanation
    timings: _containers.ScalarMap[str, float]
    def __init__(self, user_id: _Optional[str] = ..., variant: _Optional[str] = ..., experiment: _Optional[str] = ..., release_version: _Optional[str] = ..., items: _Optional[_Iterable[_Union[RecommendedItem, _Mapping]]] = ..., trace_status: _Optional[str] = ..., trace_used: _Optional[bool] = ..., history_source: _Optional[str] = ..., explanation: _Optional[_Union[Explanation, _Mapping]] = ..., timings: _Optional[_Mapping[str, float]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("item_id", "ts")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    ts: float
    def __init__(self, item_id: _Optional[str] = ..., ts: _Optional[float] = ...) -> None: ...

class PostEventsRequest(_message.Message):
    __slots__ = ("user_id", "events")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, user_id: _Optional[str] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class PostEventsResponse(_message.Message):
    __slots__ = ("user_id", "stored", "refresh")
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    REFRESH_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    stored: int
    refresh: str
    def __init__(self, user_id: _Optional[str] = ..., stored: _Optional[int] = ..., refresh: _Optional[str] = ...) -> None: ...

class GetTraceRequest(_message.Message):
    __slots__ = ("user_id",)
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    user_id: str
    def __init__(self, user_id: _Optional[str] = ...) -> None: ...

class Persona(_message.Message):
    __slots__ = ("id", "name")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    id: int
    name: str
    def __init__(self, id: _Optional[int] = ..., name: _Optional[str] = ...) -> None: ...

class Interest(_message.Message):
    __slots__ = ("sid_prefix", "weight", "label")
    SID_PREFIX_FIELD_NUMBER: _ClassVar[int]
    WEIGHT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    sid_prefix: _containers.RepeatedScalarFieldContainer[int]
    weight: float
    label: str
    def __init__(self, sid_prefix: _Optional[_Iterable[int]] = ..., weight: _Optional[float] = ..., label: _Optional[str] = ...) -> None: ...

class Transition(_message.Message):
    __slots__ = ("text", "next_interest")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    NEXT_INTEREST_FIELD_NUMBER: _ClassVar[int]
    text: str
    next_interest: int
    def __init__(self, text: _Optional[str] = ..., next_interest: _Optional[int] = ...) -> None: ...

class Candidate(_message.Message):
    __slots__ = ("item_id", "score")
    ITEM_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    item_id: str
    score: float
    def __init__(self, item_id: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class GetTraceResponse(_message.Message):
    __slots__ = ("schema_version", "user_id", "persona", "interests", "transition", "candidates", "text", "model_version", "history_fingerprint", "created_at")
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    USER_ID_FIELD_NUMBER: _ClassVar[int]
    PERSONA_FIELD_NUMBER: _ClassVar[int]
    INTERESTS_FIELD_NUMBER: _ClassVar[int]
    TRANSITION_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    schema_version: int
    user_id: str
    persona: Persona
    interests: _containers.RepeatedCompositeFieldContainer[Interest]
    transition: Transition
    candidates: _containers.RepeatedCompositeFieldContainer[Candidate]
    text: str
    model_version: str
    history_fingerprint: str
    created_at: float
    def __init__(self, schema_version: _Optional[int] = ..., user_id: _Optional[str] = ..., persona: _Optional[_Union[Persona, _Mapping]] = ..., interests: _Optional[_Iterable[_Union[Interest, _Mapping]]] = ..., transition: _Optional[_Union[Transition, _Mapping]] = ..., candidates: _Optional[_Iterable[_Union[Candidate, _Mapping]]] = ..., text: _Optional[str] = ..., model_version: _Optional[str] = ..., history_fingerprint: _Optional[str] = ..., created_at: _Optional[float] = ...) -> None: ...
