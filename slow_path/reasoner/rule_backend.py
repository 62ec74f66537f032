"""`RuleReasoner`: a deterministic reference backend that writes the CoT from rules, no model.

It exists so the whole slow path (Celery tasks, parser, stores, refresh) runs and is tested
without a trained reasoner, and as a baseline for the real ones. Its text is rendered with
`slow_path.cot_format` and goes through the same parser as a model's. The rules, per user:

- Persona Abstraction: the nearest prototype of the release's persona model
  (`reasoner/personas.json`, see `personas.PersonaAssigner`); without one, the dominant level-0
  SID code (`personas.PrefixPersonas`).
- Interest Expansion: the history-only rules of `interests.InterestRules` (default settings):
  recency-weighted mass of the history per level-0 SID prefix, heaviest first, until they
  cover 80% of the mass, narrowed to a dominant level-1 child; weights normalized; each prefix
  labelled by the most common category (or title word) of the catalogue items under it. The
  trainer's rule teacher (`trainer/cot/rule_teacher.py`) reads interests with the same rules
  and adds an expansion interest from training-set transition statistics the slow path does
  not have.
- Transition Inference: the interest of the most recent item (users continue what they do
  now), else the heaviest one.
- Answers: unseen catalogue items under the interests, each interest's items ordered by how
  many leading SID codes they share with the most recent item; score = w / (1 + rank in its
  interest), where w is the interest's weight, and 1 for the next interest (the transition says
  the next item comes from it, so the text's answer is its best item).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from slow_path.cot_format import CoT, CoTInterest, render_answer, render_cot
from slow_path.reasoner.base import (
    ReasonerConfig,
    ReasonerOutput,
    ReasonRequest,
    check_requests,
)
from slow_path.reasoner.interests import InterestRules, history_transition, last_item_phrase
from slow_path.reasoner.personas import PersonaAssigner, PrefixPersonas, group_label

if TYPE_CHECKING:
    from sid_index.sid_index import SIDIndex

RULES = InterestRules()
"""The history-only interest rules (the trainer's rule teacher uses the same defaults)."""


class RuleReasoner:
    """Rule-based reasoner over a release's SID index (see the module docstring)."""

    name = "rule"

    def __init__(self, config: ReasonerConfig, index: SIDIndex) -> None:
        self.config = config
        self.index = index
        self.codes = np.asarray(index.sids.codes, dtype=np.int64)  # (N, L)
        self.level_sizes = tuple(int(s) for s in index.sids.level_sizes)
        self.model_version = config.model_version
        path = config.resolved_persona_model()
        self.personas: PersonaAssigner | PrefixPersonas
        if path is not None:
            self.personas = PersonaAssigner.load(path, index.catalog, self.codes)
        else:
            self.personas = PrefixPersonas(index.catalog, self.codes, self.level_sizes[0])
        self.num_personas = self.personas.num_personas
        self.persona_names: Sequence[str] | None = self.personas.names
        # Items in SID order: the items under any prefix are one contiguous range of it.
        self.order = np.lexsort(self.codes.T[::-1])  # (N,)
        self.sorted_codes = self.codes[self.order]  # (N, L)
        self._labels: dict[tuple[int, ...], str] = {}

    def reason(self, requests: Sequence[ReasonRequest]) -> list[ReasonerOutput]:
        check_requests(requests, len(self.codes))
        if isinstance(self.personas, PersonaAssigner):
            pids = self.personas.assign_many([r.items for r in requests]).tolist()
        else:
            pids = [None] * len(requests)
        return [self._one(r, p) for r, p in zip(requests, pids, strict=True)]

    def _one(self, request: ReasonRequest, persona_id: int | None) -> ReasonerOutput:
        rows = np.asarray(request.items, dtype=np.int64)
        codes = self.codes[rows]  # (T, L)
        if persona_id is None:
            assert isinstance(self.personas, PrefixPersonas)
            persona_id = self.personas.assign(codes[:, 0], RULES.weights(len(rows)))
        prefixes, mass = RULES.interests(codes)  # best first
        share = mass / mass.sum()
        labels = [self._label(p) for p in prefixes]
        last = codes[-1]
        holds_last = [k for k, p in enumerate(prefixes) if _matches(last, p)]
        nxt = holds_last[0] if holds_last else 0
        reason = history_transition(
            last_item_phrase(self.index.catalog.titles[int(rows[-1])]),
            labels[nxt],
            holds_last=bool(holds_last),
        )
        cot = CoT(
            persona_id=persona_id,
            persona_name=self.personas.text(persona_id),
            interests=tuple(
                CoTInterest(p, float(w), lab)
                for p, w, lab in zip(prefixes, share, labels, strict=True)
            ),
            next_interest=nxt,
            transition=reason,
        )
        answers, scores = self._candidates(rows, prefixes, share, nxt)
        text = (render_cot(cot) if self.config.thinking else "") + render_answer(answers[0])
        keep = self.config.num_answers
        return ReasonerOutput(text, tuple(answers[:keep]), tuple(scores[:keep]), 0)

    def _label(self, prefix: tuple[int, ...]) -> str:
        """Label of the catalogue items under a prefix (cached: few distinct prefixes)."""
        label = self._labels.get(prefix)
        if label is None:
            spelled = " ".join(f"{chr(97 + i)}_{c}" for i, c in enumerate(prefix))
            label = group_label(self.index.catalog, self._items_under(prefix)) or spelled
            self._labels[prefix] = label
        return label

    def _candidates(
        self,
        rows: np.ndarray,
        prefixes: list[tuple[int, ...]],
        share: np.ndarray,
        nxt: int,
    ) -> tuple[list[tuple[int, ...]], list[float]]:
        """Unseen items under the interests, best first (at least one answer, always)."""
        want = max(1, self.config.num_answers)
        last = self.codes[rows[-1]]
        picked: dict[int, float] = {}
        for k in [nxt, *[k for k in range(len(prefixes)) if k != nxt]]:
            items = self._items_under(prefixes[k])
            items = items[~np.isin(items, rows)]
            shared = np.cumprod(self.codes[items] == last, axis=1).sum(axis=1)
            ranked = items[np.lexsort((items, -shared))][:want]
            for rank, item in enumerate(ranked.tolist()):
                score = (1.0 if k == nxt else float(share[k])) / (1 + rank)
                if score > picked.get(item, -1.0):
                    picked[item] = score
        if not picked:  # every item under the interests was seen: repeat the latest one
            picked[int(rows[-1])] = 0.0
        best = sorted(picked.items(), key=lambda kv: (-kv[1], kv[0]))[:want]
        return [tuple(int(c) for c in self.codes[i]) for i, _ in best], [s for _, s in best]

    def _items_under(self, prefix: tuple[int, ...]) -> np.ndarray:
        """Catalogue rows whose SID starts with `prefix` (a binary search in SID order)."""
        lo, hi = 0, len(self.order)
        for level, code in enumerate(prefix):
            col = self.sorted_codes[lo:hi, level]
            lo, hi = (
                lo + int(np.searchsorted(col, code, "left")),
                lo + int(np.searchsorted(col, code, "right")),
            )
        return self.order[lo:hi]


def _matches(sid: np.ndarray, prefix: tuple[int, ...]) -> bool:
    return bool((sid[: len(prefix)] == np.asarray(prefix)).all())
