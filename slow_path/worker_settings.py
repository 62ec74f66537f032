"""Settings of the slow path's Celery workers, beat and enqueue command, from the environment.

Like `slow_path.settings` (the store settings), every variable carries the `REASONREC_` prefix,
e.g. `REASONREC_REASONER_BACKEND=transformers`, `REASONREC_TASK_BATCH_SIZE=64`. Build with
`load_settings(WorkerSettings, **cli_overrides)` so a bad value raises `ConfigError` naming it.

Time limits are related: a task must finish well inside the broker's `visibility_timeout`
(with the Redis broker a longer task is delivered a second time while it still runs, celery
#5935), so the settings refuse `time_limit_s >= visibility_timeout_s / 2`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

_CONFIG = SettingsConfigDict(
    env_prefix="REASONREC_", extra="forbid", frozen=True, populate_by_name=True
)

CPU_QUEUE = "reasoner-cpu"
"""Queue consumed by CPU workers (rule and transformers-on-CPU backends)."""
GPU_QUEUE = "reasoner-gpu"
"""Queue consumed by GPU workers (vLLM or transformers on CUDA)."""


class WorkerSettings(BaseSettings):
    """One object per worker / beat / enqueue process."""

    model_config = _CONFIG

    # -- reasoner -----------------------------------------------------------------------------
    reasoner_backend: str = Field(default="rule", min_length=1)
    """Reasoner backend: `rule`, `transformers`, `vllm`, or a plugin `module:factory`."""
    release_dir: Path | None = None
    """Release directory (its `sid_index/` part is required; `reasoner/` for model backends)."""
    dataset_spec: str | None = None
    """Dataset spec used for backfill histories (default: the one recorded in the release)."""
    thinking: bool = True
    """Generate the chain of thought (a trace needs one; off only for experiments)."""
    max_think_tokens: int = Field(default=256, ge=0)
    """Thinking budget: after this many thought tokens `</think><answer>` is forced."""
    num_answers: int = Field(default=10, ge=0, le=100)
    """Candidate items per user (SID-constrained beams); 0 keeps only the text's answer."""
    max_history_items: int = Field(default=50, ge=1)
    """Most recent history items rendered into the prompt."""
    reasoner_batch_size: int = Field(default=16, ge=1)
    """Users per model generation call inside a task."""
    device: str = "cpu"
    """Torch device of the transformers backend (`cpu`, `cuda`, `cuda:1`)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Model weights dtype."""
    torch_threads: int = Field(default=0, ge=0)
    """Intra-op CPU threads of torch (0: torch's default). On a CPU shared with other
    processes, 1 avoids OpenMP threads spinning against each other."""
    persona_model: Path | None = None
    """Persona prototypes JSON for the rule backend (default: `<release>/reasoner/personas.json`
    when present)."""

    # -- tasks ------------------------------------------------------------------------------
    queue: str = Field(default=CPU_QUEUE, min_length=1)
    """Queue that enqueue, the event-driven refresh and beat send reasoning tasks to."""
    task_batch_size: int = Field(default=32, ge=1, le=4096)
    """Users per Celery task (the unit of retry and of redelivery)."""
    task_max_retries: int = Field(default=5, ge=0, le=50)
    """Retries of a task after a store/broker error before its users are dead-lettered."""
    retry_backoff_max_s: int = Field(default=300, ge=1)
    """Cap of the exponential retry backoff (1 s, 2 s, 4 s, ... with jitter)."""
    user_max_attempts: int = Field(default=3, ge=1, le=20)
    """Attempts per user whose output does not parse, before the user is dead-lettered."""
    soft_time_limit_s: float = Field(default=900.0, gt=0)
    """Time after which a task stops starting new reasoner calls and re-enqueues the rest
    (checked between calls, so it also holds under the solo pool)."""
    time_limit_s: float = Field(default=1200.0, gt=0)
    """Hard limit (enforced by prefork/threads pools; the solo pool cannot kill itself)."""
    visibility_timeout_s: float = Field(default=3600.0, gt=0)
    """Redis broker visibility timeout: an unacknowledged message is redelivered after it."""
    result_expires_s: int = Field(default=86400, ge=60)
    """Lifetime of task results in the result backend."""
    soft_shutdown_timeout_s: float = Field(default=30.0, ge=0)
    """On SIGTERM, let the running task finish for this long (Kubernetes grace period)."""

    # -- refresh -----------------------------------------------------------------------------
    stale_after_s: float = Field(default=86400.0, gt=0)
    """A trace older than this is refreshed by the beat schedule."""
    refresh_interval_s: float = Field(default=300.0, gt=0)
    """Period of the beat's stale-trace scan."""
    refresh_scan_count: int = Field(default=2000, ge=1)
    """Users examined per beat run (the scan resumes where the last run stopped)."""
    refresh_claim_s: float = Field(default=1800.0, gt=0)
    """After the beat enqueues a user's refresh, it does not enqueue that user again for this
    long (so a backlog is not enqueued twice)."""
    event_refresh_delay_s: float = Field(default=0.0, ge=0)
    """Countdown of an event-driven refresh task (lets a burst of events settle)."""

    # -- metrics -----------------------------------------------------------------------------
    metrics_port: int = Field(default=9100, ge=0, le=65535)
    """Port of the worker's `/metrics` (0: no server)."""
    queue_depth_interval_s: float = Field(default=15.0, gt=0)
    """Period of the `LLEN` sampling behind `reasonrec_queue_depth`."""

    @model_validator(mode="after")
    def _check_limits(self) -> WorkerSettings:
        if self.soft_time_limit_s >= self.time_limit_s:
            raise ValueError(
                f"soft_time_limit_s={self.soft_time_limit_s} must be < "
                f"time_limit_s={self.time_limit_s}"
            )
        if self.time_limit_s >= self.visibility_timeout_s / 2:
            raise ValueError(
                f"time_limit_s={self.time_limit_s} must be < visibility_timeout_s/2="
                f"{self.visibility_timeout_s / 2} (a longer task is redelivered while it runs)"
            )
        return self

    def queues(self) -> tuple[str, ...]:
        """Every reasoning queue this deployment knows (for queue-depth sampling)."""
        return tuple(dict.fromkeys((CPU_QUEUE, GPU_QUEUE, self.queue)))
