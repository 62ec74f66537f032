"""Datasets: loaders (Amazon, MovieLens, saved), the synthetic generator, leave-one-out
splits and the spec registry.

Names are exported lazily so that importing `sid_index.datasets.cli` (which `reasonrec --help`
does) does not import numpy-heavy modules.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sid_index.datasets.amazon import MISSING_TEXT, items_missing_text, load_amazon
    from sid_index.datasets.movielens import load_movielens
    from sid_index.datasets.registry import (
        load_dataset,
        load_saved_dataset,
        save_dataset,
    )
    from sid_index.datasets.splits import LeaveOneOutSplit, SequenceSamples, leave_one_out
    from sid_index.datasets.synthetic import SyntheticConfig, generate

_EXPORTS = {
    "MISSING_TEXT": "amazon",
    "items_missing_text": "amazon",
    "load_amazon": "amazon",
    "load_movielens": "movielens",
    "load_dataset": "registry",
    "load_saved_dataset": "registry",
    "save_dataset": "registry",
    "LeaveOneOutSplit": "splits",
    "SequenceSamples": "splits",
    "leave_one_out": "splits",
    "SyntheticConfig": "synthetic",
    "generate": "synthetic",
}
__all__ = [
    "MISSING_TEXT",
    "LeaveOneOutSplit",
    "SequenceSamples",
    "SyntheticConfig",
    "generate",
    "items_missing_text",
    "leave_one_out",
    "load_amazon",
    "load_dataset",
    "load_movielens",
    "load_saved_dataset",
    "save_dataset",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)
