"""Settings of the serving process (`reasonrec serve`), read from the environment.

This is the only serving module that reads the environment. Every variable carries the
`REASONREC_` prefix (`REASONREC_RELEASE_DIR`, `REASONREC_EXPERIMENTS_FILE`, `REASONREC_API_KEY`,
`REASONREC_LOG_LEVEL`, ...); the Redis URL is also read from the conventional `REDIS_URL`, as
the slow path reads it. The fast path's own knobs (`k_max`, budgets, micro-batching) live in
`fast_path.settings.RecommenderSettings` and the store layout in `slow_path.settings`.
Build with `ServingSettings.load(**overrides)` so a bad value raises `ConfigError` naming it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from slow_path.settings import load_settings

LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class ServingSettings(BaseSettings):
    """One object per API process."""

    model_config = SettingsConfigDict(
        env_prefix="REASONREC_", extra="forbid", frozen=True, populate_by_name=True
    )

    # -- what to serve ------------------------------------------------------------------------
    release_dir: Path | None = None
    """The default release (`manifest.json`, `sid_index/`, `fast_model/`); the experiments
    file may name more. Served as the release called `default`."""
    experiments_file: Path | None = None
    """A/B experiments YAML (see serving.experiments); None: everyone gets `default`. Watched
    by path (re-read every `experiments_poll_s`), so a symlink swap is picked up."""

    # -- network ------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Interface of both servers (`0.0.0.0` in containers)."""
    port: int = Field(default=8000, ge=0, le=65535)
    """HTTP port (0: an ephemeral port, for tests)."""
    grpc_port: int | None = Field(default=50051, ge=0, le=65535)
    """gRPC port (0: ephemeral; None: no gRPC server)."""
    api_key: SecretStr | None = None
    """Clients must send it in the `x-api-key` header (gRPC metadata); unset or empty: no auth.
    Health, readiness and metrics endpoints never need it."""
    log_level: str = "INFO"
    """Root log level: DEBUG, INFO, WARNING, ERROR or CRITICAL."""

    # -- Redis and the slow path --------------------------------------------------------------
    redis_url: str | None = Field(
        default=None,
        validation_alias=AliasChoices("REASONREC_REDIS_URL", "REDIS_URL", "redis_url"),
    )
    """Trace and history stores. Unset: an embedded server (unless `REASONREC_EMBEDDED=false`,
    see slow_path.settings.RedisSettings)."""
    broker_url: str | None = None
    """Celery broker of the slow path's refresh tasks (None: `redis_url`)."""
    refresh_on_events: bool = True
    """`POST /v1/events` enqueues a debounced trace refresh (slow_path.refresh.RefreshTrigger)."""
    broker_timeout_s: float = Field(default=1.0, gt=0)
    """Bound on one refresh enqueue (connect + publish); a broker outage costs at most this."""
    trace_read_budget_s: float = Field(default=0.25, gt=0)
    """Time budget of the trace read of `GET /v1/users/{id}/trace` (not a hot path)."""
    readiness_timeout_s: float = Field(default=0.5, gt=0)
    """Bound on the Redis PING of `/readyz`."""

    # -- reloads ------------------------------------------------------------------------------
    experiments_poll_s: float = Field(default=2.0, gt=0)
    """How often the experiments file is re-read (a changed content triggers a reload)."""
    release_poll_s: float = Field(default=10.0, ge=0)
    """How often each release's `manifest.json` is re-read (0: never reload releases)."""
    drain_timeout_s: float = Field(default=30.0, gt=0)
    """After a swap, how long requests in flight on a replaced release may take before its
    micro-batcher is stopped (queued requests are still answered)."""
    micro_batching: bool = True
    """Gather concurrent requests into one beam search (False: one request per decode)."""
    shutdown_timeout_s: float = Field(default=10.0, gt=0)
    """On SIGTERM, how long open requests may take before the servers close."""

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, value: Any) -> Any:
        # Compose passes `REASONREC_API_KEY=${REASONREC_API_KEY:-}`: empty means "no auth".
        if value is None or (isinstance(value, str) and not value.strip()):
            return None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _check_level(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip().upper() in LOG_LEVELS:
            return value.strip().upper()
        raise ValueError(f"log level {value!r} must be one of {', '.join(LOG_LEVELS)}")

    @field_validator("redis_url", "broker_url", mode="before")
    @classmethod
    def _empty_url_is_none(cls, value: Any) -> Any:
        return None if isinstance(value, str) and not value.strip() else value

    @property
    def log_level_number(self) -> int:
        """`log_level` as a `logging` constant."""
        return int(getattr(logging, self.log_level))

    @classmethod
    def load(cls, **overrides: Any) -> ServingSettings:
        """Settings from the environment plus `overrides`; ConfigError names a bad value."""
        return load_settings(cls, **overrides)
