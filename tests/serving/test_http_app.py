"""The HTTP API on a real uvicorn server (loopback) with real Redis: recommendations with and
without traces, events, explanations, bad input, auth, readiness and metrics."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from slow_path.trace import Candidate, Interest, Persona, Trace, Transition, history_fingerprint
from slow_path.trace_store import RedisTraceStore


def _trace(user: str, history: list[str], candidates: list[tuple[str, float]] = ()) -> Trace:  # type: ignore[assignment]
    return Trace(
        user_id=user,
        persona=Persona(id=1, name="weekend cook"),
        interests=[Interest((0,), 0.7, "pans"), Interest((1, 2), 0.3, "spices")],
        transition=Transition(text="from pans to spices", next_interest=1),
        candidates=[Candidate(i, s) for i, s in candidates],
        text="<think>likes cooking</think>",
        model_version="reasoner-test",
        history_fingerprint=history_fingerprint(history),
        created_at=time.time(),
    )


def _samples(text: str, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    out: dict[tuple[tuple[str, str], ...], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                out[tuple(sorted(s.labels.items()))] = s.value
    return out


def _metric(tools: Any, port: int, name: str, **labels: str) -> float:
    status, text = tools.http(port, "GET", "/metrics")
    assert status == 200
    return sum(
        v
        for k, v in _samples(text, name).items()
        if all(dict(k).get(a) == b for a, b in labels.items())
    )


def test_recommend_with_and_without_a_trace(
    start_server: Any, releases: Any, tools: Any, redis_client: redis.Redis
) -> None:
    server = start_server()
    port = server.http_port
    history = releases.history(3)[:8]
    status, body = tools.http(
        port, "POST", "/v1/recommend", {"user_id": "u1", "history": history, "k": 5}
    )
    assert status == 200, body
    assert body["trace_status"] == "miss" and body["trace_used"] is False
    assert body["variant"] == "default" and body["experiment"] is None
    assert body["release_version"] == "serving-test-a"
    assert len(body["items"]) == 5 and not set(history) & {i["item_id"] for i in body["items"]}
    assert set(body["timings"]) >= {"history", "trace", "decode", "total"}

    RedisTraceStore(redis_client, ttl_s=600.0).put(_trace("u1", history))
    status, with_trace = tools.http(
        port,
        "POST",
        "/v1/recommend",
        {"user_id": "u1", "history": history, "k": 5, "explain": True},
    )
    assert status == 200, with_trace
    assert with_trace["trace_status"] == "hit" and with_trace["trace_used"] is True
    assert with_trace["explanation"] == {
        "persona": "weekend cook", "interests": ["pans", "spices"],
        "transition": "from pans to spices",
    }  # fmt: skip
    # Thinking off by request: the trace is not read.
    status, off = tools.http(
        port,
        "POST",
        "/v1/recommend",
        {"user_id": "u1", "history": history, "k": 5, "use_trace": False},
    )
    assert status == 200 and off["trace_status"] == "disabled"
    assert [i["item_id"] for i in off["items"]] == [i["item_id"] for i in body["items"]]

    status, trace = tools.http(port, "GET", "/v1/users/u1/trace")
    assert status == 200 and trace["persona"] == {"id": 1, "name": "weekend cook"}
    assert trace["interests"][1] == {"sid_prefix": [1, 2], "weight": 0.3, "label": "spices"}
    status, missing = tools.http(port, "GET", "/v1/users/nobody/trace")
    assert status == 404 and missing["error"]["code"] == "not_found"


BAD_RECOMMEND = [
    ({"user_id": "u", "history": ["no-such-item"]},
     "unknown item id(s) in the history: 'no-such-item'"),
    ({"user_id": "u", "history": []}, "body.history: List should have at least 1 item"),
    ({"user_id": "u", "history": ["x"] * 1001},
     "body.history: List should have at most 1000 items"),
    ({"user_id": "u", "k": 0}, "body.k: Input should be greater than or equal to 1"),
    ({"user_id": "u", "k": 101}, "k=101 must be in [1, 100]"),
    ({"user_id": "u", "k": "10"}, "body.k: Input should be a valid integer"),
    ({"user_id": "u", "k": 10, "num_beams": 5}, "num_beams=5 must be >= k=10"),
    ({"user_id": "u", "k": 10, "num_beams": 1000}, "num_beams=1000 must be in [k=10, 128]"),
    ({"user_id": 7}, "body.user_id: Input should be a valid string"),
    ({"history": ["a"]}, "body.user_id: Field required"),
    ({"user_id": "u", "histroy": ["a"]}, "body.histroy: Extra inputs are not permitted"),
    ({"user_id": "a{b}"}, "body.user_id: String should match pattern"),
    ({"user_id": "u" * 257}, "body.user_id: String should have at most 256 characters"),
    ({"user_id": "u", "domains": ["no-such-domain"]}, "no-such-domain"),
]  # fmt: skip


@pytest.mark.parametrize(("body", "message"), BAD_RECOMMEND)
def test_bad_recommend_requests_get_clear_4xx(
    shared_server: Any, tools: Any, body: Any, message: str
) -> None:
    status, got = tools.http(shared_server.http_port, "POST", "/v1/recommend", body)
    assert status == 422, got
    assert got["error"]["code"] == "invalid_argument"
    assert message in got["error"]["message"], got


def test_malformed_json_and_unknown_routes(shared_server: Any, tools: Any) -> None:
    port = shared_server.http_port
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/recommend", data=b"{not json", method="POST",
        headers={"content-type": "application/json"},
    )  # fmt: skip
    try:
        urllib.request.urlopen(req, timeout=10)
        raise AssertionError("accepted malformed JSON")
    except urllib.error.HTTPError as exc:
        assert exc.code == 422
        assert b"JSON decode error" in exc.read()
    assert tools.http(port, "GET", "/v1/nothing-here")[0] == 404


def test_cold_start_off_rejects_an_empty_stored_history(start_server: Any, tools: Any) -> None:
    server = start_server(rec={"cold_start": False})
    status, body = tools.http(server.http_port, "POST", "/v1/recommend", {"user_id": "new-user"})
    assert status == 422 and "cold start is off" in body["error"]["message"]


def test_events_feed_the_stored_history_and_enqueue_a_refresh(
    start_server: Any, tools: Any, releases: Any, redis_client: redis.Redis
) -> None:
    server = start_server()
    port = server.http_port
    items = releases.history(5)[:4]
    events = [{"item_id": i, "ts": 1_700_000_000.0 + n} for n, i in enumerate(items[:2])]
    status, first = tools.http(port, "POST", "/v1/events", {"user_id": "ev", "events": events})
    assert status == 200, first
    assert first == {"user_id": "ev", "stored": 2, "refresh": "not_due"}  # threshold is 3
    status, second = tools.http(
        port, "POST", "/v1/events", {"user_id": "ev", "events": [{"item_id": i} for i in items[2:]]}
    )
    assert status == 200 and second["stored"] == 4 and second["refresh"] == "enqueued"
    # The refresh went to the broker as a `slow_path.reason_batch` message for this user.
    queued = redis_client.lrange("reasoner-cpu", 0, -1)
    assert len(queued) == 1 and b"slow_path.reason_batch" in queued[0] and b"ev" in queued[0]
    # Debounced: more events soon after do not enqueue again.
    status, third = tools.http(
        port, "POST", "/v1/events", {"user_id": "ev", "events": [{"item_id": i} for i in items]}
    )
    assert third["refresh"] == "not_due" and redis_client.llen("reasoner-cpu") == 1
    # The stored history is what a request without history decodes from.
    status, rec = tools.http(port, "POST", "/v1/recommend", {"user_id": "ev", "k": 3})
    assert status == 200 and rec["history_source"] == "store"
    assert not set(items) & {i["item_id"] for i in rec["items"]}


def test_broker_outage_still_stores_events_and_counts_the_failure(
    start_server: Any, tools: Any, releases: Any, closed_port: int
) -> None:
    server = start_server(broker_url=f"redis://127.0.0.1:{closed_port}/0")
    port = server.http_port
    before = _metric(tools, port, "reasonrec_refresh_enqueues_total", result="failed")
    items = [{"item_id": i} for i in releases.history(6)[:3]]
    t0 = time.perf_counter()
    status, body = tools.http(port, "POST", "/v1/events", {"user_id": "b1", "events": items})
    assert status == 200, body
    assert body == {"user_id": "b1", "stored": 3, "refresh": "failed"}
    assert time.perf_counter() - t0 < 5.0
    assert _metric(tools, port, "reasonrec_refresh_enqueues_total", result="failed") == before + 1


def test_bad_events_get_clear_4xx(shared_server: Any, tools: Any) -> None:
    port = shared_server.http_port
    cases = [
        ({"user_id": "u", "events": []}, "body.events: List should have at least 1 item"),
        ({"user_id": "u", "events": [{"item_id": "nope"}]}, "unknown item id(s)"),
        ({"user_id": "u", "events": [{"item_id": "x", "ts": -1}]}, "greater than or equal to 0"),
        ({"user_id": "u", "events": [{"id": "x"}]}, "body.events.0.item_id: Field required"),
    ]
    for body, message in cases:
        status, got = tools.http(port, "POST", "/v1/events", body)
        assert status == 422 and message in got["error"]["message"], got


def test_api_key_auth(start_server: Any, tools: Any, releases: Any) -> None:
    server = start_server(api_key="s3cret")
    port = server.http_port
    body = {"user_id": "auth", "history": releases.history(1)[:3], "k": 2}
    before = _metric(
        tools, port, "reasonrec_requests_total", endpoint="recommend", variant="none", code="401"
    )
    for headers in ({}, {"x-api-key": "wrong"}):
        status, got = tools.http(port, "POST", "/v1/recommend", body, headers)
        assert status == 401 and got["error"]["code"] == "unauthenticated"
    # Authentication comes before validation: a stranger learns nothing about the schema.
    status, _ = tools.http(port, "POST", "/v1/recommend", {"bad": 1})
    assert status == 401
    status, got = tools.http(port, "POST", "/v1/recommend", body, {"x-api-key": "s3cret"})
    assert status == 200, got
    for path in ("/healthz", "/readyz", "/metrics"):  # operations endpoints stay open
        assert tools.http(port, "GET", path)[0] == 200
    after = _metric(
        tools, port, "reasonrec_requests_total", endpoint="recommend", variant="none", code="401"
    )
    assert after == before + 3


def test_auth_off_with_an_empty_key(start_server: Any, tools: Any, releases: Any) -> None:
    port = start_server(api_key="").http_port
    body = {"user_id": "open", "history": releases.history(1)[:3], "k": 2}
    assert tools.http(port, "POST", "/v1/recommend", body)[0] == 200


def test_readyz_is_false_until_models_load(releases: Any, redis_url: str, tools: Any) -> None:
    import threading

    from serving.server import ThreadedServer

    gate = threading.Event()
    settings = tools.settings(releases.a, redis_url)
    runtime = tools.runtime(settings)
    real_load = runtime._load_release

    def slow_load(path: Any) -> Any:
        gate.wait(30)
        return real_load(path)

    runtime._load_release = slow_load
    with ThreadedServer(settings, runtime) as server:
        port = server.http_port
        assert tools.http(port, "GET", "/healthz") == (200, {"status": "ok"})
        status, ready = tools.http(port, "GET", "/readyz")
        assert status == 503 and ready["models_loaded"] is False and ready["redis"] is True
        status, body = tools.http(port, "POST", "/v1/recommend", {"user_id": "early"})
        assert status == 503 and body["error"]["code"] == "unavailable"
        gate.set()
        server.wait_loaded()
        status, ready = tools.http(port, "GET", "/readyz")
        assert status == 200 and ready["ready"] is True
        assert ready["releases"] == {"default": "serving-test-a"}


def test_readyz_is_false_without_redis(
    start_server: Any, tools: Any, releases: Any, closed_port: int
) -> None:
    server = start_server(redis=f"redis://127.0.0.1:{closed_port}/0")
    port = server.http_port
    status, ready = tools.http(port, "GET", "/readyz")
    assert status == 503 and ready["models_loaded"] is True and ready["redis"] is False
    # Recommendations still work, in no-trace mode.
    status, body = tools.http(
        port, "POST", "/v1/recommend", {"user_id": "r", "history": releases.history(2)[:3]}
    )
    assert status == 200 and body["trace_status"] == "error"
    status, body = tools.http(port, "GET", "/v1/users/r/trace")
    assert status == 503 and body["error"]["code"] == "unavailable"


def test_metrics_follow_the_contract(shared_server: Any, tools: Any, releases: Any) -> None:
    server = shared_server
    port = server.http_port
    body = {"user_id": "m", "history": releases.history(4)[:3], "k": 2}
    assert tools.http(port, "POST", "/v1/recommend", body)[0] == 200
    assert tools.http(port, "POST", "/v1/recommend", {**body, "k": 0})[0] == 422
    status, text = tools.http(port, "GET", "/metrics")
    assert status == 200
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in (
        ("reasonrec_request_latency_seconds", "histogram"),
        ("reasonrec_requests", "counter"),
        ("reasonrec_trace_lookups", "counter"),
        ("reasonrec_beam_search_seconds", "histogram"),
        ("reasonrec_batch_size", "histogram"),
        ("reasonrec_errors", "counter"),
        ("reasonrec_release_info", "gauge"),
    ):
        assert families[name].type == kind, name
    requests = _samples(text, "reasonrec_requests_total")
    assert (
        requests[
            (
                ("code", "200"),
                ("endpoint", "recommend"),
                ("protocol", "http"),
                ("variant", "default"),
            )
        ]
        >= 1
    )
    assert (
        requests[
            (("code", "422"), ("endpoint", "recommend"), ("protocol", "http"), ("variant", "none"))
        ]
        >= 1
    )
    latency = _samples(text, "reasonrec_request_latency_seconds_bucket")
    les = sorted(
        float(dict(k)["le"]) for k in latency
        if dict(k)["endpoint"] == "recommend" and dict(k)["variant"] == "default"
        and dict(k)["protocol"] == "http"
    )  # fmt: skip
    assert les == [
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
        math.inf,
    ]
    assert set(dict(k)["result"] for k in _samples(text, "reasonrec_trace_lookups_total")) == {
        "hit", "miss", "stale", "error"
    }  # fmt: skip
    assert _samples(text, "reasonrec_errors_total")[(("code", "invalid_argument"),)] >= 1
    assert (
        _samples(text, "reasonrec_release_info")[
            (("release_version", "serving-test-a"), ("variant", "default"))
        ]
        == 1
    )
    assert _samples(text, "reasonrec_beam_search_seconds_count")[(("variant", "default"),)] >= 1
    assert _samples(text, "reasonrec_batch_size_count")[()] >= 1
    # Health, readiness and metrics are never counted as requests.
    assert not any(dict(k)["endpoint"] not in ("recommend", "events", "trace") for k in requests)
