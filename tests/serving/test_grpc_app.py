"""The gRPC API on a real grpc.aio server (loopback) next to the HTTP server: identical answers
through both protocols, health (NOT_SERVING until loaded), reflection, status codes, auth."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from serving.grpc_app import SERVICE_NAME
from serving.proto.gen.reasonrec.v1 import recommend_pb2 as pb
from serving.proto.gen.reasonrec.v1 import recommend_pb2_grpc as pb_grpc
from serving.server import ThreadedServer
from slow_path.trace import Interest, Persona, Trace, Transition, history_fingerprint
from slow_path.trace_store import RedisTraceStore


@pytest.fixture
def channel_to() -> Iterator[Any]:
    channels: list[grpc.Channel] = []

    def open_channel(port: int) -> grpc.Channel:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        return channel

    yield open_channel
    for channel in channels:
        channel.close()


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    """A response without its timings (which differ per call)."""
    return {k: v for k, v in d.items() if k != "timings"}


def _grpc_as_http(msg: pb.RecommendResponse) -> dict[str, Any]:
    """The gRPC response in the HTTP body's shape."""
    return {
        "user_id": msg.user_id,
        "variant": msg.variant,
        "experiment": msg.experiment if msg.HasField("experiment") else None,
        "release_version": msg.release_version,
        "items": [
            {
                "item_id": i.item_id, "score": i.score, "title": i.title, "sid": i.sid,
                "source": i.source, "interest": i.interest if i.HasField("interest") else None,
            }
            for i in msg.items
        ],
        "trace_status": msg.trace_status,
        "trace_used": msg.trace_used,
        "history_source": msg.history_source,
        "explanation": None
        if not msg.HasField("explanation")
        else {
            "persona": msg.explanation.persona,
            "interests": list(msg.explanation.interests),
            "transition": msg.explanation.transition,
        },
    }  # fmt: skip


def test_http_and_grpc_give_identical_answers(
    start_server: Any, tools: Any, releases: Any, channel_to: Any, redis_client: redis.Redis
) -> None:
    server = start_server()
    stub = pb_grpc.RecommendServiceStub(channel_to(server.grpc_port))
    history = releases.history(7)[:6]
    RedisTraceStore(redis_client, ttl_s=600.0).put(
        Trace(
            user_id="g1", persona=Persona(id=3, name="gadget fan"),
            interests=[Interest((2,), 1.0, "gadgets")],
            transition=Transition(text="towards audio", next_interest=0), candidates=[],
            text="<think>...</think>", model_version="r", created_at=time.time(),
            history_fingerprint=history_fingerprint(history),
        )
    )  # fmt: skip
    hist = pb.History(item_ids=history)
    cases = [
        ({"user_id": "g1", "history": history, "k": 6, "explain": True},
         pb.RecommendRequest(user_id="g1", history=hist, k=6, explain=True)),
        ({"user_id": "g2", "history": history, "k": 4, "num_beams": 8, "use_trace": False,
          "blocklist": releases.item_ids[:5]},
         pb.RecommendRequest(user_id="g2", history=hist, k=4, num_beams=8, use_trace=False,
                             blocklist=releases.item_ids[:5])),
        ({"user_id": "g3", "history": history, "exclude_seen": False},
         pb.RecommendRequest(user_id="g3", history=hist, exclude_seen=False)),
        ({"user_id": "g4"}, pb.RecommendRequest(user_id="g4")),
    ]  # fmt: skip
    for body, request in cases:
        status, via_http = tools.http(server.http_port, "POST", "/v1/recommend", body)
        assert status == 200, via_http
        via_grpc = _grpc_as_http(stub.Recommend(request, timeout=30))
        assert _comparable(via_http) == via_grpc
    assert via_grpc["history_source"] == "store"  # case 4 read the (empty) stored history
    first = stub.Recommend(cases[0][1], timeout=30)
    assert first.trace_status == "hit" and first.explanation.persona == "gadget fan"
    assert set(first.timings) >= {"history", "trace", "decode", "total"}


def test_events_and_trace_over_grpc(
    shared_server: ThreadedServer, releases: Any, channel_to: Any, redis_client: redis.Redis
) -> None:
    stub = pb_grpc.RecommendServiceStub(channel_to(shared_server.grpc_port))
    items = releases.history(8)[:2]
    got = stub.PostEvents(
        pb.PostEventsRequest(
            user_id="ge", events=[pb.Event(item_id=items[0], ts=1.0e9), pb.Event(item_id=items[1])]
        ),
        timeout=30,
    )
    assert (got.user_id, got.stored, got.refresh) == ("ge", 2, "not_due")
    with pytest.raises(grpc.RpcError) as info:
        stub.GetTrace(pb.GetTraceRequest(user_id="ge"), timeout=30)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    trace = Trace(
        user_id="ge", persona=Persona(id=0, name="p"), interests=[Interest((1, 1), 0.5, "x")],
        transition=Transition(text="t", next_interest=None), candidates=[], text="cot",
        model_version="m", history_fingerprint="f", created_at=123.0,
    )  # fmt: skip
    RedisTraceStore(redis_client, ttl_s=600.0).put(trace)
    msg = stub.GetTrace(pb.GetTraceRequest(user_id="ge"), timeout=30)
    assert (msg.persona.name, list(msg.interests[0].sid_prefix), msg.text) == ("p", [1, 1], "cot")
    assert not msg.transition.HasField("next_interest") and msg.created_at == 123.0


BAD_GRPC = [
    (pb.RecommendRequest(user_id=""), "user_id: String should have at least 1 character"),
    (pb.RecommendRequest(user_id="u", k=0), "k: Input should be greater than or equal to 1"),
    (pb.RecommendRequest(user_id="u", history=pb.History(item_ids=["nope"])),
     "unknown item id(s)"),
    (pb.RecommendRequest(user_id="u", history=pb.History()),
     "history: List should have at least 1 item"),
    (pb.RecommendRequest(user_id="u", history=pb.History(item_ids=["x"] * 1001)),
     "at most 1000 items"),
    (pb.GetTraceRequest(user_id="a{b}"), "String should match pattern"),
    (pb.PostEventsRequest(user_id="u"), "events: List should have at least 1 item"),
]  # fmt: skip


@pytest.mark.parametrize(("request_", "message"), BAD_GRPC)
def test_bad_requests_get_invalid_argument(
    shared_server: ThreadedServer, channel_to: Any, request_: Any, message: str
) -> None:
    stub = pb_grpc.RecommendServiceStub(channel_to(shared_server.grpc_port))
    call = {
        pb.RecommendRequest: stub.Recommend,
        pb.GetTraceRequest: stub.GetTrace,
        pb.PostEventsRequest: stub.PostEvents,
    }[type(request_)]
    with pytest.raises(grpc.RpcError) as info:
        call(request_, timeout=30)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in info.value.details()


def test_health_reflection_and_auth(
    releases: Any, redis_url: str, tools: Any, channel_to: Any
) -> None:
    gate = threading.Event()
    settings = tools.settings(releases.a, redis_url, api_key="k3y")
    runtime = tools.runtime(settings)
    real_load = runtime._load_release
    runtime._load_release = lambda path: (gate.wait(30), real_load(path))[1]
    with ThreadedServer(settings, runtime) as server:
        channel = channel_to(server.grpc_port)
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", SERVICE_NAME):
            got = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert got.status == health_pb2.HealthCheckResponse.NOT_SERVING
        gate.set()
        server.wait_loaded()
        tools.wait_for(
            lambda: (
                health.Check(health_pb2.HealthCheckRequest(service=SERVICE_NAME), timeout=10).status
                == health_pb2.HealthCheckResponse.SERVING
            ),
            what="SERVING",
        )
        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        answer = next(
            reflect.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=10
            )
        )
        names = {s.name for s in answer.list_services_response.service}
        assert {SERVICE_NAME, "grpc.health.v1.Health"} <= names
        stub = pb_grpc.RecommendServiceStub(channel)
        request = pb.RecommendRequest(
            user_id="a", history=pb.History(item_ids=releases.history(1)[:3])
        )
        for metadata in ((), (("x-api-key", "nope"),)):
            with pytest.raises(grpc.RpcError) as info:
                stub.Recommend(request, metadata=metadata, timeout=30)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert (
            len(stub.Recommend(request, metadata=(("x-api-key", "k3y"),), timeout=30).items) == 10
        )
    # After shutdown the server is gone.
    with pytest.raises(grpc.RpcError):
        health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
