"""Settings of the fast path (`Recommender` and `MicroBatcher`), read from the environment.

This is the only fast_path module that reads the environment. Every variable carries the
`REASONREC_` prefix, e.g. `REASONREC_BLEND="score_mix(0.7)"`, `REASONREC_MAX_WAIT_S=0.002`.
Build with `RecommenderSettings.load(**overrides)` (or `slow_path.settings.load_settings`) so a
bad value raises `ConfigError` naming it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from fast_path.blending import BlendPolicy
from sid_index.errors import ConfigError
from slow_path.settings import load_settings


class RecommenderSettings(BaseSettings):
    """One object per serving process."""

    model_config = SettingsConfigDict(
        env_prefix="REASONREC_", extra="forbid", frozen=True, populate_by_name=True
    )

    # -- request limits -----------------------------------------------------------------------
    k_max: int = Field(default=100, ge=1)
    """Largest `k` (items per response) a request may ask for."""
    beams_max: int = Field(default=128, ge=1)
    """Largest `num_beams` a request may ask for (bounds the decode cost of one request)."""
    history_max: int = Field(default=50, ge=1)
    """Most recent history items put in the prompt; also capped by the model's positions and
    by the window it was trained on (`configs.fast_model.max_items` in the release manifest)."""
    cold_start: bool = True
    """Serve an empty history by decoding from `<bos>` alone; False raises EmptyHistoryError."""

    # -- stores -------------------------------------------------------------------------------
    trace_budget_s: float = Field(default=0.02, gt=0)
    """Time budget of one batched trace read; what is not read in time is served without."""
    history_budget_s: float = Field(default=0.02, gt=0)
    """Time budget of one batched history read; unread users are served as cold starts."""
    trace_max_age_s: float | None = Field(default=None, gt=0)
    """A trace older than this (by its `created_at`) is stale; None: no age limit."""
    trace_max_lag: int = Field(default=0, ge=0, le=50)
    """A trace computed from the history minus its newest `j <= trace_max_lag` events is still
    used, placed before those events (as in training); 0: only an exact fingerprint match."""

    # -- ranking ------------------------------------------------------------------------------
    blend: str = "none"
    """How the trace's reasoner candidates enter the list: `none`, `interleave` or
    `score_mix(alpha)` (alpha in [0, 1] weighs the fast model), see fast_path.blending."""
    decoder: Literal["auto", "shared_prefix", "hf"] = "auto"
    """Model adapter of the beam search: `shared_prefix` keeps the prompt's KV once per request
    (Llama/Qwen2 only), `hf` uses the transformers cache, `auto` picks shared_prefix where the
    architecture allows it."""

    # -- compute ------------------------------------------------------------------------------
    device: str = "cpu"
    """Torch device of the fast model (`cpu`, `cuda`, `cuda:1`)."""
    num_threads: int | None = Field(default=None, ge=1)
    """`torch.set_num_threads` for the process (None: leave torch's default)."""
    verify_release: bool = True
    """Hash every release file at load (a few ms per MB)."""
    warmup: bool = True
    """Run one decode at load so the first request does not pay for lazy initialisation."""

    # -- micro-batching -----------------------------------------------------------------------
    max_batch: int = Field(default=64, ge=1)
    """Requests per recommend_batch call (and per beam-search chunk)."""
    max_wait_s: float = Field(default=0.003, ge=0)
    """How long a busy batcher waits for more requests before dispatching a partial batch."""
    max_queue: int = Field(default=1024, ge=1)
    """Requests waiting in the batcher; beyond it submit raises OverloadedError."""

    @field_validator("blend")
    @classmethod
    def _check_blend(cls, value: str) -> str:
        try:
            BlendPolicy.parse(value)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        if not value or not (value == "cpu" or value.startswith(("cuda", "mps"))):
            raise ValueError(f"device {value!r} must be cpu, cuda[:N] or mps")
        return value

    @model_validator(mode="after")
    def _check_related(self) -> RecommenderSettings:
        if self.k_max > self.beams_max:
            raise ValueError(f"k_max={self.k_max} must be <= beams_max={self.beams_max}")
        return self

    @property
    def blend_policy(self) -> BlendPolicy:
        """The parsed `blend` setting."""
        return BlendPolicy.parse(self.blend)

    @classmethod
    def load(cls, **overrides: Any) -> RecommenderSettings:
        """Settings from the environment plus `overrides`; ConfigError names a bad value."""
        return load_settings(cls, **overrides)
