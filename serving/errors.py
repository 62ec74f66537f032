"""The one place where errors become API outcomes (HTTP status, gRPC status, metric code).

Handlers of both protocols call `classify(exc)`; the application code below serving raises
its own error classes (fast_path.errors, slow_path.errors, sid_index.errors) and never knows
about HTTP or gRPC. The `code` is the snake_case name of the gRPC canonical code, so both
protocols agree on the `code` label of `reasonrec_errors_total` (docs/metrics.md).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from fast_path.errors import OverloadedError, RequestError, UnavailableError
from sid_index.errors import DataError
from slow_path.errors import StoreError

log = logging.getLogger(__name__)

HTTP_STATUS = {
    "invalid_argument": 422,
    "unauthenticated": 401,
    "permission_denied": 403,
    "not_found": 404,
    "resource_exhausted": 503,
    "deadline_exceeded": 504,
    "unavailable": 503,
    "internal": 500,
}
"""HTTP status of each application error code (the codes of docs/metrics.md)."""
ERROR_CODES = tuple(HTTP_STATUS)


class ApiError(Exception):
    """An outcome decided by serving itself (not found, not authenticated, not ready)."""

    def __init__(self, code: str, message: str) -> None:
        if code not in HTTP_STATUS:
            raise ValueError(f"unknown error code {code!r}")
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Failure:
    """How an exception is answered."""

    code: str
    """Application error code (a key of HTTP_STATUS)."""
    message: str
    """One clear line for the client."""
    details: tuple[Mapping[str, Any], ...] = field(default=())
    """Per-field problems of a validation error: {"loc": [...], "msg": ..., "type": ...}."""

    @property
    def http_status(self) -> int:
        """The HTTP status code."""
        return HTTP_STATUS[self.code]

    @property
    def grpc_name(self) -> str:
        """The `grpc.StatusCode` member name, e.g. INVALID_ARGUMENT."""
        return self.code.upper()


def validation_details(errors: Sequence[Mapping[str, Any]]) -> tuple[dict[str, Any], ...]:
    """Pydantic error dicts reduced to JSON-safe loc/msg/type (the input is never echoed:
    it may be a 10,000-item list)."""
    return tuple(
        {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg")), "type": e.get("type")}
        for e in errors
    )


def validation_message(details: Sequence[Mapping[str, Any]]) -> str:
    """`field.path: problem; ...` for the first few problems."""
    parts = [f"{'.'.join(d['loc']) or '<request>'}: {d['msg']}" for d in details[:5]]
    more = f" (and {len(details) - 5} more)" if len(details) > 5 else ""
    return "invalid request: " + "; ".join(parts) + more


def classify(exc: BaseException) -> Failure:
    """The answer to an exception raised while serving a request."""
    if isinstance(exc, ApiError):
        return Failure(exc.code, exc.message)
    if isinstance(exc, ValidationError):
        details = validation_details(exc.errors(include_url=False, include_input=False))
        return Failure("invalid_argument", validation_message(details), details)
    if isinstance(exc, RequestError | DataError):
        return Failure("invalid_argument", str(exc))
    if isinstance(exc, OverloadedError):
        return Failure("resource_exhausted", f"server overloaded, retry later: {exc}")
    if isinstance(exc, UnavailableError):
        return Failure("unavailable", f"not serving now, retry later: {exc}")
    if isinstance(exc, StoreError):
        return Failure("unavailable", f"store unavailable, retry later: {exc}")
    if isinstance(exc, TimeoutError):
        return Failure("deadline_exceeded", "the request took too long")
    # Anything else is a bug or an unexpected failure: log it, never leak internals.
    log.error("unexpected error while serving a request", exc_info=exc)
    return Failure("internal", "internal error")
