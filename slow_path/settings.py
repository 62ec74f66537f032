"""Process settings for the slow path's Redis stores, read from the environment.

This is the only slow_path module that reads the environment. Every variable carries the
`REASONREC_` prefix (e.g. `REASONREC_SOCKET_TIMEOUT_S=0.2`); the Redis URL is also read from
the conventional `REDIS_URL` (`REASONREC_REDIS_URL` wins when both are set). Build settings
with `load_settings(RedisSettings)` so a bad value raises `ConfigError` naming it.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import AliasChoices, Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from sid_index.errors import ConfigError

_CONFIG = SettingsConfigDict(
    env_prefix="REASONREC_", extra="forbid", frozen=True, populate_by_name=True
)


class RedisSettings(BaseSettings):
    """How to reach Redis (or a Redis-compatible server such as valkey)."""

    model_config = _CONFIG

    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REASONREC_REDIS_URL", "REDIS_URL", "redis_url"),
    )
    """`redis://[user:pass@]host:port/db` (or `rediss://`, `unix://`). Unset: an embedded
    valkey server is started on loopback (see `slow_path.redis_conn.ensure_redis`)."""
    socket_timeout_s: float = Field(default=0.5, gt=0)
    """Upper bound on every command's reply; budgeted reads use their own, shorter bound."""
    socket_connect_timeout_s: float = Field(default=0.5, gt=0)
    """Upper bound on opening a TCP connection."""
    retries: int = Field(default=1, ge=0, le=10)
    """Retries of a command after a connection error (never applied to budgeted reads)."""
    max_connections: int = Field(default=64, ge=1)
    """Size cap of the client's connection pool."""
    health_check_interval_s: int = Field(default=0, ge=0)
    """PING a pooled connection idle this many seconds before reusing it (0: never). Off by
    default: the PING is an extra round trip outside a read's budget; a dead connection
    fails its command instead, and readers degrade while writers retry."""
    embedded: bool = True
    """Start an embedded valkey server when no URL is set; False makes a missing URL an error."""
    embedded_maxmemory: str | None = None
    """`maxmemory` of the embedded server (e.g. "512mb"); None leaves it unbounded."""


class StoreSettings(BaseSettings):
    """Layout and policy of the trace and history stores."""

    model_config = _CONFIG

    key_prefix: str = Field(default="rr", min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    """First component of every key (`rr:trace:{user}`); lets several deployments share a db."""
    trace_ttl_s: float = Field(default=7 * 86400.0, gt=0)
    """Lifetime of a stored trace; an expired trace reads as a miss (no-trace mode)."""
    trace_read_budget_s: float = Field(default=0.02, gt=0)
    """Default time budget of one batched trace (or history) read on the fast path."""
    history_max_len: int = Field(default=200, ge=1)
    """Events kept per user; older ones are trimmed on append."""
    history_ttl_s: float | None = Field(default=None, gt=0)
    """Forget a user's history this long after their last event (None: keep it)."""
    refresh_min_new_events: int = Field(default=5, ge=1)
    """New events since the last refresh that trigger an event-driven trace refresh."""
    refresh_min_interval_s: float = Field(default=60.0, ge=0)
    """At most one event-driven refresh per user per this many seconds (0: no debounce)."""


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build a settings object from the environment plus `overrides`.

    Raises:
        ConfigError: a value is missing, malformed or out of range (names field and value).
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}={err.get('input')!r}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{cls.__name__}: {problems}") from None
