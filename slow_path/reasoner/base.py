"""The `Reasoner` protocol, its input/output records, and the lazy backend registry.

A reasoner reads users' histories (catalogue rows of a release's SID index) and writes, per
user, a completion in the CoT text format (`slow_path.cot_format`) plus its own top items as
full SIDs. It does not parse its text: the caller (`slow_path.tasks`) runs every backend's
output through the same parser, so a backend that drifts from the format is counted, never
trusted.

Backends are chosen by name from a registry that imports them only when asked for:
`rule` (deterministic reference, no model), `transformers` (CPU or GPU), `vllm` (GPU, the
`gpu` extra), or a plugin given as `module:factory` (a callable `(config, index) -> Reasoner`).
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from sid_index.errors import ConfigError
from slow_path.cot_format import PromptItem, persona_token, render_prompt
from slow_path.errors import SlowPathError

if TYPE_CHECKING:
    from sid_index.sid_index import SIDIndex

log = logging.getLogger(__name__)

DTYPES = ("float32", "bfloat16", "float16")


class BackendUnavailableError(SlowPathError):
    """A reasoner backend needs an optional dependency (an extra) that is not installed."""


@dataclass(frozen=True, slots=True)
class ReasonerConfig:
    """What every backend is configured with (backends ignore what they do not use)."""

    release_dir: Path | None = None
    """Release directory; model backends load `<release>/reasoner/` unless `model_dir` is set."""
    model_dir: Path | None = None
    """HF model directory of the reasoner (overrides the release's `reasoner/` part)."""
    persona_model: Path | None = None
    """Persona prototypes JSON (rule backend); default `<release>/reasoner/personas.json`."""
    model_version: str = "dev"
    """Version written into every trace (the release version)."""
    thinking: bool = True
    """Write the chain of thought before the answer."""
    max_think_tokens: int = 256
    """Thought tokens after which `</think><answer>` is forced."""
    num_answers: int = 10
    """Candidate items per user (0: only the text's answer)."""
    max_history_items: int = 50
    """Most recent history items rendered into a prompt."""
    batch_size: int = 16
    """Users per generation call."""
    device: str = "cpu"
    """Torch device (`cpu`, `cuda`, `cuda:1`)."""
    dtype: str = "float32"
    """Model weights dtype: float32, bfloat16 or float16."""
    seed: int = 0
    """Seed of any sampling a backend does (answers are otherwise greedy / beam)."""

    def __post_init__(self) -> None:
        if self.max_think_tokens < 0:
            raise ConfigError(f"{self.max_think_tokens=} must be >= 0")
        if not 0 <= self.num_answers <= 100:
            raise ConfigError(f"{self.num_answers=} must be in [0, 100]")
        if self.max_history_items < 1 or self.batch_size < 1:
            raise ConfigError(f"{self.max_history_items=} and {self.batch_size=} must be >= 1")
        if self.dtype not in DTYPES:
            raise ConfigError(f"{self.dtype=} must be one of {DTYPES}")
        if not self.model_version:
            raise ConfigError(f"{self.model_version=} must be non-empty")

    def resolved_model_dir(self) -> Path:
        """`model_dir`, else `<release_dir>/reasoner` (ConfigError when neither is set)."""
        if self.model_dir is not None:
            return self.model_dir
        if self.release_dir is None:
            raise ConfigError("a model backend needs --release DIR (or a model_dir)")
        return self.release_dir / "reasoner"

    def resolved_persona_model(self) -> Path | None:
        """`persona_model`, else `<release>/reasoner/personas.json` when it exists."""
        if self.persona_model is not None:
            return self.persona_model
        if self.release_dir is not None:
            default = self.release_dir / "reasoner" / "personas.json"
            if default.is_file():
                return default
        return None


@dataclass(frozen=True, slots=True)
class ReasonRequest:
    """One user to reason about."""

    user_id: str
    """The user."""
    items: np.ndarray
    """(T,) int64 catalogue rows of the history, oldest first (T >= 1)."""


@dataclass(frozen=True, slots=True)
class ReasonerOutput:
    """What a reasoner wrote for one request."""

    text: str
    """The completion (everything after the prompt), in the CoT format, answer included."""
    answers: tuple[tuple[int, ...], ...]
    """Candidate items as full SIDs, best first (every one names a catalogue item)."""
    scores: tuple[float, ...]
    """Finite score per answer (summed log-probabilities for model backends)."""
    num_tokens: int
    """Tokens the model generated for this request (0 for the rule backend)."""

    def __post_init__(self) -> None:
        if len(self.answers) != len(self.scores):
            raise ConfigError(f"{len(self.answers)} answers but {len(self.scores)} scores")


@runtime_checkable
class Reasoner(Protocol):
    """A reasoning backend (see the module docstring)."""

    name: str
    """Registry name of the backend."""
    model_version: str
    """Version written into traces."""
    level_sizes: tuple[int, ...]
    """Codebook size per SID level of the index the backend decodes against."""
    num_personas: int
    """Persona ids the backend may write lie in [0, num_personas)."""
    persona_names: Sequence[str] | None
    """Readable persona names by id (used when the text names none), or None."""

    def reason(self, requests: Sequence[ReasonRequest]) -> list[ReasonerOutput]:
        """One output per request, in order. Raises only for a broken backend (model/device
        failure), never for a user: bad text is the parser's business."""
        ...


ReasonerFactory = Callable[[ReasonerConfig, "SIDIndex"], Reasoner]

_BUILTIN: dict[str, str] = {
    "rule": "slow_path.reasoner.rule_backend:RuleReasoner",
    "transformers": "slow_path.reasoner.transformers_backend:TransformersReasoner",
    "vllm": "slow_path.reasoner.vllm_backend:VLLMReasoner",
}
_REGISTERED: dict[str, ReasonerFactory] = {}


def register_reasoner(name: str, factory: ReasonerFactory) -> None:
    """Register a backend under `name` in this process (tests, plugins)."""
    if not name or ":" in name:
        raise ConfigError(f"reasoner name {name!r} must be non-empty and contain no ':'")
    _REGISTERED[name] = factory


def reasoner_names() -> list[str]:
    """Every backend name known to this process."""
    return sorted({*_BUILTIN, *_REGISTERED})


def _load(target: str, what: str) -> ReasonerFactory:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"reasoner {what!r}: expected 'module:factory'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"reasoner {what!r}: cannot import {module_name!r} ({exc})") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"reasoner {what!r}: {module_name!r} has no {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"reasoner {what!r}: {target!r} is not callable")
    return obj


def get_reasoner(name: str, config: ReasonerConfig, *, index: SIDIndex) -> Reasoner:
    """Build the backend `name` (`rule`, `transformers`, `vllm`, a registered name, or a
    plugin `module:factory`) over the catalogue `index`.

    Raises:
        ConfigError: unknown name, or a plugin that cannot be imported.
        BackendUnavailableError: the backend's optional dependency is missing.
    """
    if name in _REGISTERED:
        factory = _REGISTERED[name]
    elif name in _BUILTIN:
        factory = _load(_BUILTIN[name], name)
    elif ":" in name:
        factory = _load(name, name)
    else:
        raise ConfigError(
            f"unknown reasoner backend {name!r}; choose from {', '.join(reasoner_names())} "
            "or give a plugin as 'module:factory'"
        )
    reasoner = factory(config, index)
    if not isinstance(reasoner, Reasoner):
        raise ConfigError(f"reasoner {name!r}: factory returned {type(reasoner).__name__}")
    return reasoner


# -- helpers shared by the backends ---------------------------------------------------------


def prompt_items(index: SIDIndex, rows: np.ndarray, max_items: int) -> list[PromptItem]:
    """The last `max_items` history rows as prompt items (SID codes + title)."""
    rows = np.asarray(rows, dtype=np.int64)[-max_items:]
    codes = index.sids.codes[rows]  # (T, L)
    titles = index.catalog.titles
    return [
        PromptItem(tuple(int(c) for c in code), titles[int(r)])
        for r, code in zip(rows.tolist(), codes, strict=True)
    ]


def build_prompt(index: SIDIndex, request: ReasonRequest, config: ReasonerConfig) -> str:
    """The reasoner's prompt for one request."""
    return render_prompt(
        prompt_items(index, request.items, config.max_history_items), thinking=config.thinking
    )


def check_requests(requests: Sequence[ReasonRequest], num_items: int) -> None:
    """ConfigError for an empty history or a row outside the catalogue (a caller bug)."""
    for r in requests:
        items = np.asarray(r.items)
        if items.ndim != 1 or len(items) == 0:
            raise ConfigError(f"request of user {r.user_id!r} has no history items")
        if int(items.min()) < 0 or int(items.max()) >= num_items:
            raise ConfigError(
                f"request of user {r.user_id!r} names a row outside the catalogue of {num_items}"
            )


def count_personas(vocab: dict[str, int]) -> int:
    """Number of persona tokens `<p_0>`, `<p_1>`, ... a vocabulary has (contiguous from 0)."""
    n = 0
    while persona_token(n) in vocab:
        n += 1
    return n


def persona_names(config: ReasonerConfig) -> list[str] | None:
    """Readable persona names from the persona model JSON, when the release has one."""
    path = config.resolved_persona_model()
    if path is None:
        return None
    try:
        names = json.loads(path.read_text(encoding="utf-8"))["names"]
        return [str(n) for n in names]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("persona names not read from %s: %s", path, exc)
        return None
