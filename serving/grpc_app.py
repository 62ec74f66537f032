"""The gRPC API (`serving/proto/reasonrec/v1/recommend.proto`) on a `grpc.aio` server.

`RecommendService` (Recommend, PostEvents, GetTrace) serves from the same `ServingRuntime` as
the HTTP app, on the same event loop: one registry, one micro-batcher per release, so both
protocols' requests share batches. Requests are validated through the HTTP schemas (same
limits, same messages) and errors mapped by `serving.errors` to gRPC status codes. The server
also runs the standard health service (`grpc.health.v1.Health`: NOT_SERVING until the models
are loaded, NOT_SERVING again on shutdown) and server reflection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from pydantic import TypeAdapter

from serving import metrics
from serving.errors import ApiError, classify
from serving.proto.gen.reasonrec.v1 import recommend_pb2 as pb
from serving.proto.gen.reasonrec.v1 import recommend_pb2_grpc as pb_grpc
from serving.runtime import CallContext, ServingRuntime
from serving.schemas import (
    EventsBody,
    EventsResponse,
    RecommendBody,
    RecommendResponse,
    UserId,
)
from serving.settings import ServingSettings
from sid_index.errors import ConfigError

log = logging.getLogger(__name__)

SERVICE_NAME = pb.DESCRIPTOR.services_by_name["RecommendService"].full_name
API_KEY_METADATA = "x-api-key"
Resp = TypeVar("Resp")
_USER_ID: TypeAdapter[str] = TypeAdapter(UserId)


# ---- wire <-> schema ------------------------------------------------------------------------


def recommend_body(req: pb.RecommendRequest) -> RecommendBody:
    """The validated request (pydantic ValidationError names a bad field)."""
    data: dict[str, Any] = {"user_id": req.user_id, "explain": req.explain}
    if req.HasField("history"):
        data["history"] = list(req.history.item_ids)
    for name in ("k", "num_beams", "use_trace", "exclude_seen"):
        if req.HasField(name):
            data[name] = getattr(req, name)
    if req.blocklist:
        data["blocklist"] = list(req.blocklist)
    if req.HasField("domains"):
        data["domains"] = list(req.domains.names)
    return RecommendBody.model_validate(data)


def recommend_message(resp: RecommendResponse) -> pb.RecommendResponse:
    """The wire form of a recommendation."""
    out = pb.RecommendResponse(
        user_id=resp.user_id,
        variant=resp.variant,
        release_version=resp.release_version,
        items=[
            pb.RecommendedItem(
                item_id=i.item_id, score=i.score, title=i.title, sid=i.sid, source=i.source,
                interest=i.interest,
            )
            for i in resp.items
        ],
        trace_status=resp.trace_status,
        trace_used=resp.trace_used,
        history_source=resp.history_source,
        timings=resp.timings,
    )  # fmt: skip
    if resp.experiment is not None:
        out.experiment = resp.experiment
    if resp.explanation is not None:
        e = resp.explanation
        out.explanation.CopyFrom(
            pb.Explanation(persona=e.persona, interests=e.interests, transition=e.transition)
        )
    return out


def events_body(req: pb.PostEventsRequest) -> EventsBody:
    """The validated events."""
    events = [
        {"item_id": e.item_id, **({"ts": e.ts} if e.HasField("ts") else {})} for e in req.events
    ]
    return EventsBody.model_validate({"user_id": req.user_id, "events": events})


def trace_message(d: dict[str, Any]) -> pb.GetTraceResponse:
    """The wire form of `Trace.to_json_dict()`."""
    nxt = d["transition"]["next_interest"]
    return pb.GetTraceResponse(
        schema_version=d["schema_version"],
        user_id=d["user_id"],
        persona=pb.Persona(**d["persona"]),
        interests=[pb.Interest(**i) for i in d["interests"]],
        transition=pb.Transition(
            text=d["transition"]["text"], **({} if nxt is None else {"next_interest": nxt})
        ),
        candidates=[pb.Candidate(**c) for c in d["candidates"]],
        text=d["text"],
        model_version=d["model_version"],
        history_fingerprint=d["history_fingerprint"],
        created_at=d["created_at"],
    )


# ---- the service ----------------------------------------------------------------------------


class RecommendServicer(pb_grpc.RecommendServiceServicer):
    """Recommend, PostEvents and GetTrace over a `ServingRuntime`."""

    def __init__(self, runtime: ServingRuntime, settings: ServingSettings) -> None:
        self.runtime = runtime
        key = settings.api_key
        self._key = None if key is None else key.get_secret_value().encode()

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        async def run(ctx: CallContext) -> pb.RecommendResponse:
            return recommend_message(await self.runtime.recommend(recommend_body(request), ctx))

        return await self._call("recommend", context, run)

    async def PostEvents(
        self, request: pb.PostEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.PostEventsResponse:
        async def run(ctx: CallContext) -> pb.PostEventsResponse:
            r: EventsResponse = await self.runtime.post_events(events_body(request), ctx)
            return pb.PostEventsResponse(user_id=r.user_id, stored=r.stored, refresh=r.refresh)

        return await self._call("events", context, run)

    async def GetTrace(
        self, request: pb.GetTraceRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetTraceResponse:
        async def run(ctx: CallContext) -> pb.GetTraceResponse:
            # The HTTP path parameter's rules: bounded, no braces or control characters.
            user_id = _USER_ID.validate_python(request.user_id)
            trace = await self.runtime.get_trace(user_id, ctx)
            return trace_message(trace.to_json_dict())

        return await self._call("trace", context, run)

    async def _call(
        self,
        endpoint: str,
        context: grpc.aio.ServicerContext,
        run: Callable[[CallContext], Awaitable[Resp]],
    ) -> Resp:
        t0 = time.perf_counter()
        ctx = CallContext()
        code = "OK"
        try:
            self._authenticate(context)
            return await run(ctx)
        except asyncio.CancelledError:
            code = "CANCELLED"
            raise
        except Exception as exc:
            failure = classify(exc)
            metrics.observe_error(failure.code)
            code = failure.grpc_name
            await context.abort(grpc.StatusCode[code], failure.message)
            raise AssertionError("abort returns by raising") from None
        finally:
            metrics.observe_request(endpoint, ctx.variant, "grpc", code, time.perf_counter() - t0)

    def _authenticate(self, context: grpc.aio.ServicerContext) -> None:
        if self._key is None:
            return
        sent = next(
            (v for k, v in context.invocation_metadata() or () if k == API_KEY_METADATA), None
        )
        raw = sent.encode() if isinstance(sent, str) else sent
        if raw is None or not secrets.compare_digest(raw, self._key):
            raise ApiError("unauthenticated", f"missing or wrong {API_KEY_METADATA} metadata")


# ---- the server -----------------------------------------------------------------------------


class GrpcServer:
    """A `grpc.aio` server with the service, health checking and reflection."""

    def __init__(self, runtime: ServingRuntime, settings: ServingSettings) -> None:
        self.runtime = runtime
        self.settings = settings
        self.server = grpc.aio.server(
            options=[("grpc.max_receive_message_length", 4 * 1024 * 1024)]
        )
        pb_grpc.add_RecommendServiceServicer_to_server(
            RecommendServicer(runtime, settings), self.server
        )
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port: int | None = None
        self._health_task: asyncio.Task[None] | None = None

    async def start(self, host: str, port: int) -> int:
        """Bind and start; returns the bound port (useful with port 0).

        Raises:
            ConfigError: the port cannot be bound.
        """
        try:
            bound = self.server.add_insecure_port(f"{host}:{port}")
        except RuntimeError as exc:
            raise ConfigError(f"gRPC cannot listen on {host}:{port}: {exc}") from None
        if bound == 0:
            raise ConfigError(f"gRPC cannot listen on {host}:{port}")
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        self.port = bound
        self._health_task = asyncio.get_running_loop().create_task(self._follow_loading())
        log.info("gRPC listening on %s:%d", host, bound)
        return bound

    async def _set_health(self, status: int) -> None:
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)

    async def _follow_loading(self) -> None:
        await self.runtime.loaded.wait()
        if self.runtime.models_loaded:
            await self._set_health(health_pb2.HealthCheckResponse.SERVING)

    async def stop(self, grace_s: float) -> None:
        """NOT_SERVING, then stop accepting calls; calls in flight get `grace_s` to finish."""
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
