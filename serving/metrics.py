"""Prometheus metrics of the API, named, labelled and bucketed exactly as docs/metrics.md
("API (fast path)") says, on the default registry (one API process per pod).

Collectors are created once at import (a second registration would fail), so several apps in
one process (tests) share them; tests read deltas. Label values come from small fixed sets:
`endpoint` in ENDPOINTS, `protocol` in PROTOCOLS, `variant` from the experiments file (or
`default` / `none`), never a user or item id.
"""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

from serving.errors import ERROR_CODES

LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ENDPOINTS = ("recommend", "events", "trace")
PROTOCOLS = ("http", "grpc")
TRACE_RESULTS = ("hit", "miss", "stale", "error")
REFRESH_RESULTS = ("enqueued", "failed")
NO_VARIANT = "none"
"""`variant` of a request that failed before assignment (authentication, validation)."""

# prometheus_client appends `_total` to counter names itself.
REQUEST_LATENCY = Histogram(
    "reasonrec_request_latency_seconds",
    "Wall time of one request, from receipt to response written (includes micro-batcher queueing).",
    ["endpoint", "variant", "protocol"],
    buckets=LATENCY_BUCKETS,
)
REQUESTS = Counter(
    "reasonrec_requests",
    "Requests answered, by outcome.",
    ["endpoint", "variant", "protocol", "code"],
)
TRACE_LOOKUPS = Counter(
    "reasonrec_trace_lookups",
    "Slow-path trace look-ups made while serving a request.",
    ["result"],
)
BEAM_SEARCH_SECONDS = Histogram(
    "reasonrec_beam_search_seconds",
    "Wall time of one constrained beam search over one micro-batch.",
    ["variant"],
    buckets=LATENCY_BUCKETS,
)
BATCH_SIZE = Histogram(
    "reasonrec_batch_size",
    "Requests in each micro-batch forward pass.",
    buckets=BATCH_BUCKETS,
)
ERRORS = Counter(
    "reasonrec_errors",
    "Errors returned to clients, by application error code.",
    ["code"],
)
REFRESH_ENQUEUES = Counter(
    "reasonrec_refresh_enqueues",
    "Event-driven trace refreshes sent to the slow path's broker, by result (enqueued, failed). "
    "Not yet in docs/metrics.md.",
    ["result"],
)
RELEASE_INFO = Gauge(
    "reasonrec_release_info",
    "1 for every variant and the release it serves now.",
    ["variant", "release_version"],
)

# Small label sets exist at zero from the start, so rate() is defined before the first event.
for _result in TRACE_RESULTS:
    TRACE_LOOKUPS.labels(_result)
for _code in ERROR_CODES:
    ERRORS.labels(_code)
for _result in REFRESH_RESULTS:
    REFRESH_ENQUEUES.labels(_result)

_release_series: dict[str, str] = {}
"""variant -> release_version currently exported by RELEASE_INFO."""


def observe_request(endpoint: str, variant: str, protocol: str, code: str, seconds: float) -> None:
    """Count one answered request and its latency."""
    REQUEST_LATENCY.labels(endpoint, variant, protocol).observe(seconds)
    REQUESTS.labels(endpoint, variant, protocol, code).inc()


def observe_error(code: str) -> None:
    """Count one error returned to a client (`code` from serving.errors)."""
    ERRORS.labels(code).inc()


def observe_trace_lookup(status: str) -> None:
    """Count a trace look-up by `Recommendation.trace_status` (`disabled` made none)."""
    if status in TRACE_RESULTS:
        TRACE_LOOKUPS.labels(status).inc()


def observe_batch(size: int) -> None:
    """Record the size of one micro-batch."""
    BATCH_SIZE.observe(size)


def observe_beam_search(variant: str, seconds: float) -> None:
    """Record one beam search that served requests of `variant`."""
    BEAM_SEARCH_SECONDS.labels(variant).observe(seconds)


def observe_refresh(result: str) -> None:
    """Count one event-driven refresh enqueue (`enqueued` or `failed`: broker unavailable)."""
    REFRESH_ENQUEUES.labels(result).inc()


def set_release_info(versions: Mapping[str, str]) -> None:
    """Export `variant -> release_version`: series of variants that moved to another release
    or disappeared are removed first, so a dashboard never shows two releases for one."""
    for variant, version in list(_release_series.items()):
        if versions.get(variant) != version:
            RELEASE_INFO.remove(variant, version)
            del _release_series[variant]
    for variant, version in versions.items():
        RELEASE_INFO.labels(variant, version).set(1)
        _release_series[variant] = version


def exposition() -> tuple[bytes, str]:
    """The text exposition of the default registry and its content type."""
    return generate_latest(), CONTENT_TYPE_LATEST
