"""Glue shared by the trainer's commands: load a release's dataset and split, build teachers.

A release's `sid_index` part records the dataset spec it was built from; commands reload the
dataset from that spec (or an explicit `--dataset`) and check that its catalogue is the
release's catalogue item for item, so models are never trained against the wrong SIDs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from sid_index.datasets.registry import load_dataset
from sid_index.datasets.splits import LeaveOneOutSplit, leave_one_out
from sid_index.errors import ConfigError, DataError, ReleaseError
from sid_index.records import Dataset
from sid_index.release import Release, load_release
from sid_index.sid_index import SIDIndex
from trainer.teachers import DominantPrefixTeacher, PersonaOracleTeacher, TraceTeacher

if TYPE_CHECKING:
    from trainer.cot.personas import PersonaModel
    from trainer.cot.rule_teacher import RuleTeacher
    from trainer.reasoner_teacher import ReasonerTeacher

TEACHERS = ("none", "dominant", "oracle", "rule", "reasoner")
"""Trace sources for the fast model: no trace, dominant SID prefixes, the synthetic
generator's planted persona (+ dominant prefixes), the rule-based CoT teacher, the release's
trained reasoner (its parsed thoughts)."""

REASONER_PART = "reasoner"
PERSONAS_FILE = "personas.json"
"""The persona model inside the reasoner part: the persona ids of the reasoner's `<p_k>`
tokens, shared by the rule teacher, the slow path and the fast model."""


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
    if name == "reasoner":
        return reasoner_teacher(ws)
    return rule_teacher(ws, release_personas(ws))


def rule_teacher(
    ws: Workspace, personas: PersonaModel | None = None, persona_expansion: bool | None = None
) -> RuleTeacher:
    """The rule CoT teacher on the train split; with `personas` (the reasoner's persona model)
    rule traces and reasoner traces share persona ids, else personas are fitted here.

    `persona_expansion` (labelled personas only): the expansion interest is the persona's
    likeliest prefix outside the history; None reads it from the release's reasoner config
    (what `train reasoner-sft --persona-expansion` recorded), so the fast model's rule traces
    match the reasoner's thoughts."""
    from trainer.cot.rule_teacher import RuleTeacher

    if personas is None:
        return RuleTeacher.fit(
            ws.index.catalog,
            ws.codes,
            ws.split.train_indptr,
            ws.split.train_items,
            item_index=ws.index.item_index,
        )
    from trainer.cot.prefix_stats import PersonaPrefixes, PrefixTransitions

    known = known_personas(ws, personas)
    split = ws.split
    if persona_expansion is None:
        persona_expansion = bool(reasoner_config(ws).get("persona_expansion", False))
    by_persona = None
    if known is not None and persona_expansion:  # the expansion is what the persona predicts
        by_persona = PersonaPrefixes.build(
            split.train_indptr, split.train_items, ws.codes, known[split.user_index],
            personas.num_personas,
        )  # fmt: skip
    return RuleTeacher(
        ws.index.catalog,
        ws.codes,
        personas,
        transitions=PrefixTransitions.build(split.train_indptr, split.train_items, ws.codes),
        item_index=ws.index.item_index,
        known_personas=known,
        persona_prefixes=by_persona,
    )


def fit_personas(
    ws: Workspace, source: str = "kmeans", num_personas: int = 20, seed: int = 0
) -> PersonaModel:
    """Persona prototypes on the train split: k-means over users' histories ("kmeans",
    `num_personas` of them) or one per persona label the dataset carries ("labels")."""
    from trainer.cot.personas import PersonaConfig, PersonaModel, csr_histories, features_for

    histories = csr_histories(ws.split.train_indptr, ws.split.train_items)
    if source == "labels":
        labels = ws.dataset.personas
        if labels is None:
            raise ConfigError(
                f"persona source 'labels': dataset {ws.dataset.name!r} carries no persona labels"
            )
        config = PersonaConfig(num_personas=int(labels.max()) + 1, seed=seed, source="labels")
        features = features_for(ws.index.catalog, ws.codes, config)
        return PersonaModel.from_labels(
            features, histories, labels[ws.split.user_index], ws.dataset.persona_names, config
        )
    config = PersonaConfig(num_personas=num_personas, seed=seed, source=source)
    features = features_for(ws.index.catalog, ws.codes, config)
    return PersonaModel.fit(features, histories, config)


def known_personas(ws: Workspace, personas: PersonaModel) -> np.ndarray | None:
    """(U,) the dataset's persona labels when `personas` was built from them, else None."""
    if personas.config.source != "labels":
        return None
    if ws.dataset.personas is None:
        raise ConfigError(
            f"the persona model was built from persona labels, but dataset {ws.dataset.name!r} "
            "has none"
        )
    return ws.dataset.personas


def reasoner_config(ws: Workspace) -> dict[str, Any]:
    """What `train reasoner-*` recorded about the release's reasoner ({} without one)."""
    return dict(ws.release.manifest.configs.get(REASONER_PART, {}))


def require_reasoner(ws: Workspace) -> Path:
    """The release's `reasoner/` directory (ReleaseError naming the command that makes it)."""
    if not ws.release.has_part(REASONER_PART):
        raise ReleaseError(
            f"release {ws.release.path} has no reasoner part; train one first with "
            f"'reasonrec train reasoner-align --release {ws.release.path}'"
        )
    return ws.release.part(REASONER_PART)


def release_personas(ws: Workspace) -> PersonaModel | None:
    """The reasoner's persona model bound to the catalogue, or None when the release has none."""
    if not ws.release.has_part(REASONER_PART):
        return None
    path = ws.release.part(REASONER_PART) / PERSONAS_FILE
    if not path.is_file():
        return None
    from trainer.cot.personas import PersonaModel, features_for

    model = PersonaModel.load(path)
    model.bind(features_for(ws.index.catalog, ws.codes, model.config))
    return model


def reasoner_teacher(ws: Workspace, *, max_think_tokens: int | None = None) -> ReasonerTeacher:
    """A trace teacher running the release's reasoner with the settings it was trained with."""
    from trainer.reasoner.model import load_reasoner
    from trainer.reasoner_teacher import ReasonerTeacher, ReasonerTeacherConfig

    cfg = reasoner_config(ws)
    reasoner = load_reasoner(require_reasoner(ws))
    config = ReasonerTeacherConfig(
        max_history=int(cfg.get("max_history", 20)),
        max_think_tokens=int(max_think_tokens or cfg.get("max_think_tokens", 192)),
    )
    return ReasonerTeacher(reasoner, ws.index.trie, ws.index.catalog, ws.codes, config)
