"""Glue shared by the trainer's commands: load a release's dataset and split, build teachers.

A release's `sid_index` part records the dataset spec it was built from; commands reload the
dataset from that spec (or an explicit `--dataset`) and check that its catalogue is the
release's catalogue item for item, so models are never trained against the wrong SIDs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sid_index.datasets.registry import load_dataset
from sid_index.datasets.splits import LeaveOneOutSplit, leave_one_out
from sid_index.errors import ConfigError, DataError
from sid_index.records import Dataset
from sid_index.release import Release, load_release
from sid_index.sid_index import SIDIndex
from trainer.teachers import DominantPrefixTeacher, PersonaOracleTeacher, TraceTeacher

TEACHERS = ("none", "dominant", "oracle", "rule")
"""Trace sources for the fast model: no trace, dominant SID prefixes, the synthetic
generator's planted persona (+ dominant prefixes), the rule-based CoT teacher."""


@dataclass
class Workspace:
    """A release with its SID index, dataset and leave-one-out split, loaded once."""

    release: Release
    index: SIDIndex
    dataset: Dataset
    split: LeaveOneOutSplit

    @property
    def codes(self) -> np.ndarray:
        return self.index.sids.codes

    def train_sequences(self) -> list[np.ndarray]:
        """Per split user, the train part (views into the split's CSR arrays)."""
        s = self.split
        return [s.train_items[s.train_indptr[u] : s.train_indptr[u + 1]] for u in range(len(s))]


def open_workspace(release_dir: Path, dataset_spec: str | None = None) -> Workspace:
    """Load a release's SID index and its dataset (from `dataset_spec` or the release config)."""
    release = load_release(release_dir, require=["sid_index"])
    spec = dataset_spec or release.manifest.configs.get("sid_index", {}).get("dataset")
    if not spec:
        raise ConfigError(f"release {release_dir} does not record its dataset; pass --dataset SPEC")
    index = SIDIndex.load(release.part("sid_index"))
    dataset = load_dataset(str(spec))
    if dataset.catalog.item_ids != index.catalog.item_ids:
        raise DataError(
            f"dataset {spec!r} has a different catalogue ({len(dataset.catalog)} items) than "
            f"release {release_dir} ({len(index.catalog)} items); rebuild the index for it"
        )
    return Workspace(release, index, dataset, leave_one_out(dataset.interactions))


def build_teacher(name: str, ws: Workspace) -> TraceTeacher | None:
    """The named trace teacher fitted on the workspace's train split (None for "none")."""
    if name not in TEACHERS:
        raise ConfigError(f"unknown teacher {name!r}; choose from {', '.join(TEACHERS)}")
    dominant = DominantPrefixTeacher(ws.codes, prefix_len=1, max_interests=3)
    if name == "none":
        return None
    if name == "dominant":
        return dominant
    if name == "oracle":
        if ws.dataset.personas is None:
            raise ConfigError(
                f"teacher 'oracle' needs planted personas; dataset {ws.dataset.name!r} has none"
            )
        return PersonaOracleTeacher(ws.dataset.personas, dominant)
    from trainer.cot.rule_teacher import RuleTeacher

    return RuleTeacher.fit(
        ws.index.catalog,
        ws.codes,
        ws.split.train_indptr,
        ws.split.train_items,
        item_index=ws.index.item_index,
    )
