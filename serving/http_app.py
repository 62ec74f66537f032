"""The HTTP API (FastAPI): `create_app(settings)`.

Routes: `POST /v1/recommend`, `POST /v1/events`, `GET /v1/users/{user_id}/trace` (the API,
behind the optional `x-api-key`), and `GET /healthz` (liveness: answers as soon as the process
serves, before models load), `GET /readyz` (models loaded and Redis reachable; 503 otherwise),
`GET /metrics` (Prometheus). Every error body is `{"error": {"code", "message", "details"}}`
with the status from `serving.errors`.

`create_app(settings)` owns a `ServingRuntime` started and stopped by the app's lifespan (for
`uvicorn --factory`); `reasonrec serve` passes the runtime it shares with the gRPC server.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import APIKeyHeader
from pydantic import ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serving import metrics
from serving.errors import ApiError, Failure, classify, validation_details, validation_message
from serving.runtime import CallContext, ServingRuntime
from serving.schemas import (
    MAX_ID_LEN,
    ErrorBody,
    EventsBody,
    EventsResponse,
    HealthResponse,
    ReadyResponse,
    RecommendBody,
    RecommendResponse,
    TraceResponse,
    error_body,
)
from serving.settings import ServingSettings
from sid_index.errors import ReasonrecError

_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong x-api-key."},
    404: {"model": ErrorBody, "description": "Not found."},
    422: {"model": ErrorBody, "description": "Invalid request (names the field)."},
    500: {"model": ErrorBody, "description": "Internal error."},
    503: {"model": ErrorBody, "description": "Not ready, overloaded or a store is down."},
}

# ---- dependencies ---------------------------------------------------------------------------

_api_key_header = APIKeyHeader(name="x-api-key", auto_error=False)


async def get_runtime(request: Request) -> ServingRuntime:
    """The process's runtime."""
    runtime: ServingRuntime = request.app.state.runtime
    return runtime


async def get_context(request: Request) -> CallContext:
    """This request's metric context (read back by the observing middleware)."""
    ctx = CallContext()
    request.state.call = ctx
    return ctx


async def require_api_key(
    request: Request, key: Annotated[str | None, Depends(_api_key_header)]
) -> None:
    """Reject the request unless the configured API key was sent (no key configured: open)."""
    expected = request.app.state.settings.api_key
    if expected is None:
        return
    if key is None or not secrets.compare_digest(
        key.encode(), expected.get_secret_value().encode()
    ):
        raise ApiError("unauthenticated", "missing or wrong x-api-key header")


Runtime = Annotated[ServingRuntime, Depends(get_runtime)]
Context = Annotated[CallContext, Depends(get_context)]
Authenticated = Annotated[None, Depends(require_api_key)]
UserIdPath = Annotated[
    str, Path(min_length=1, max_length=MAX_ID_LEN, pattern=r"^[^{}\x00-\x1f\x7f]+$")
]

# ---- metrics middleware ---------------------------------------------------------------------


def _endpoint(path: str) -> str | None:
    if path == "/v1/recommend":
        return "recommend"
    if path == "/v1/events":
        return "events"
    if path.startswith("/v1/users/") and path.endswith("/trace"):
        return "trace"
    return None  # health, readiness, metrics and unknown paths are not counted


class ObserveMiddleware:
    """Latency and outcome of every API request (pure ASGI: no per-request task overhead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = _endpoint(scope["path"]) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def observe_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, observe_send)
        finally:
            ctx = scope.get("state", {}).get("call")
            variant = ctx.variant if isinstance(ctx, CallContext) else metrics.NO_VARIANT
            metrics.observe_request(
                endpoint, variant, "http", str(status), time.perf_counter() - t0
            )


# ---- errors ---------------------------------------------------------------------------------


def _respond(failure: Failure, count: bool = True) -> JSONResponse:
    if count:
        metrics.observe_error(failure.code)
    headers = {"Retry-After": "1"} if failure.http_status == 503 else None
    return JSONResponse(
        error_body(failure.code, failure.message, failure.details),
        status_code=failure.http_status,
        headers=headers,
    )


def _is_api_path(request: Request) -> bool:
    return _endpoint(request.url.path) is not None


async def _on_error(request: Request, exc: Exception) -> JSONResponse:
    return _respond(classify(exc), count=_is_api_path(request))


async def _on_validation(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    details = validation_details(exc.errors())
    return _respond(
        Failure("invalid_argument", validation_message(details), details),
        count=_is_api_path(request),
    )


# ---- the app --------------------------------------------------------------------------------


def create_app(settings: ServingSettings, runtime: ServingRuntime | None = None) -> FastAPI:
    """The FastAPI app.

    Args:
        settings: the process settings.
        runtime: a runtime shared with the gRPC server and started by the caller; None: the
            app builds its own and its lifespan starts and stops it.
    """
    owned = runtime is None
    rt = runtime if runtime is not None else ServingRuntime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await rt.start()  # returns at once: releases load in the background
        try:
            yield
        finally:
            if owned:
                await rt.stop()

    app = FastAPI(
        title="reasonrec",
        summary="Reasoning-augmented generative recommendation over Semantic IDs.",
        version="1",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.runtime = rt
    app.add_middleware(ObserveMiddleware)
    # Expected errors are answered inside the middleware stack; anything else reaches
    # Starlette's ServerErrorMiddleware, which answers 500 through _on_error and logs it.
    app.add_exception_handler(RequestValidationError, _on_validation)
    for expected in (ApiError, ReasonrecError, ValidationError):
        app.add_exception_handler(expected, _on_error)
    app.add_exception_handler(Exception, _on_error)

    @app.post("/v1/recommend", tags=["recommend"], responses=_ERRORS)
    async def recommend(
        body: RecommendBody, runtime: Runtime, ctx: Context, _: Authenticated
    ) -> RecommendResponse:
        """Top-k items for a user, decoded by the fast model over the Semantic ID trie.

        The user's experiment variant picks the release, thinking (the slow path's cached
        trace) and beam width. A trace miss or a Redis outage degrades to no-trace mode
        (`trace_status` says which), never to an error."""
        return await runtime.recommend(body, ctx)

    @app.post("/v1/events", tags=["events"], responses=_ERRORS)
    async def post_events(
        body: EventsBody, runtime: Runtime, ctx: Context, _: Authenticated
    ) -> EventsResponse:
        """Append interactions to the user's history; enqueues a (debounced) trace refresh on
        the slow path. A broker outage does not fail the call (`refresh: failed`)."""
        return await runtime.post_events(body, ctx)

    @app.get("/v1/users/{user_id}/trace", tags=["explanations"], responses=_ERRORS)
    async def get_trace(
        user_id: UserIdPath, runtime: Runtime, ctx: Context, _: Authenticated
    ) -> TraceResponse:
        """The slow path's reasoning trace for a user (persona, interests, transition, the
        chain of thought); 404 when none is stored."""
        trace = await runtime.get_trace(user_id, ctx)
        return TraceResponse.model_validate(trace.to_json_dict())

    @app.get("/healthz", tags=["operations"])
    async def healthz() -> HealthResponse:
        """Liveness: the process serves (models may still be loading)."""
        return HealthResponse(status="ok")

    @app.get(
        "/readyz",
        tags=["operations"],
        responses={503: {"model": ReadyResponse, "description": "Not ready."}},
    )
    async def readyz(runtime: Runtime) -> JSONResponse:
        """Readiness: models loaded and Redis reachable."""
        loaded = runtime.models_loaded
        redis_ok = await runtime.redis_reachable()
        error = runtime.registry.last_error if runtime.registry is not None else None
        if runtime.load_error is not None:
            error = str(runtime.load_error)
        body = ReadyResponse(
            ready=loaded and redis_ok,
            models_loaded=loaded,
            redis=redis_ok,
            releases=runtime.release_versions(),
            error=error,
        )
        return JSONResponse(body.model_dump(), status_code=200 if body.ready else 503)

    @app.get("/metrics", tags=["operations"], response_class=Response)
    async def prometheus_metrics() -> Response:
        """Prometheus text exposition (docs/metrics.md)."""
        data, content_type = metrics.exposition()
        return Response(data, media_type=content_type)

    return app
