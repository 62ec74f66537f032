"""Reasoner backends of the slow path: the `Reasoner` protocol and its lazy registry
(`base`), the rule-based reference (`rule_backend`), transformers (`transformers_backend`) and
vLLM (`vllm_backend`), plus the SID-constrained answer mask they share (`sid_constraint`).

Importing this package imports no backend (no torch model, no vLLM)."""

from slow_path.reasoner.base import (
    BackendUnavailableError,
    Reasoner,
    ReasonerConfig,
    ReasonerOutput,
    ReasonRequest,
    get_reasoner,
    reasoner_names,
    register_reasoner,
)

__all__ = [
    "BackendUnavailableError",
    "ReasonRequest",
    "Reasoner",
    "ReasonerConfig",
    "ReasonerOutput",
    "get_reasoner",
    "reasoner_names",
    "register_reasoner",
]
