"""Errors raised by slow_path. Only `serving` maps them to HTTP/gRPC codes; the CLI prints
their message without a traceback."""

from __future__ import annotations

from sid_index.errors import ReasonrecError


class SlowPathError(ReasonrecError):
    """Base of the errors slow_path raises on purpose."""


class TraceError(SlowPathError):
    """A trace is invalid, or its bytes are corrupt or of an unknown schema version.

    Readers treat it as a cache miss and count it; writers never store such a trace."""


class StoreError(SlowPathError):
    """A Redis store is unreachable or refused a write (the Celery task retries on it)."""
