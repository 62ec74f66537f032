"""`RuleTeacher`: the three-part chain of thought derived from the data, no LLM needed.

For a history (and, for training examples, the true next item):

1. Persona Abstraction — the nearest persona prototype of the history (`PersonaModel`).
2. Interest Expansion — the history-only rules the slow path's rule backend uses too
   (`slow_path.reasoner.interests.InterestRules`): the level-0 SID prefixes of the history
   ranked by recency-weighted mass; as many as it takes to cover `coverage` of the mass (each
   holding >= `min_share`), at most 5. A prefix whose mass sits mostly (>= `refine_share`) in
   one level-1 child becomes that level-0+1 prefix. On top of these, when there is room, one
   *expansion* interest the history does not hold yet: the level-0 prefix that the last item's
   transition statistics (`PrefixTransitions`, complementary categories) and the FAISS nearest
   neighbours of the recent items point to — or, with persona statistics
   (`PersonaPrefixes`, from labelled personas), the persona's most likely prefix the history
   does not hold: the expansion only the persona predicts. Weights are the normalized masses;
   labels come from `PrefixLabels`.
3. Transition Inference — the interest the next item most likely comes from. From history
   only (`predicted_next`): a mix of the interest's mass and P(its prefix | last item's
   prefix). With the true next item (*hindsight*, flagged on the output): the interest whose
   prefix the next item has — added (or replacing the weakest) when none has it. A one-sentence
   reason is built from the last item and the chosen interest.

`RuleTeacher` is also a `trainer.teachers.TraceTeacher` (history only, no hindsight), so the
same traces can train the fast model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from sid_index.errors import ConfigError
from sid_index.item_index import ItemIndex
from sid_index.records import Catalog
from slow_path.cot_format import MAX_INTERESTS, CoT, CoTInterest
from slow_path.reasoner.interests import InterestRules, history_transition, last_item_phrase
from trainer.cot.base import TeacherCoT
from trainer.cot.personas import PersonaConfig, PersonaModel, csr_histories, features_for
from trainer.cot.prefix_stats import PersonaPrefixes, PrefixLabels, PrefixTransitions

if TYPE_CHECKING:
    from fast_path.prompt import TraceTokens

_COMPLEMENT_PROB = 0.15  # P(prefix | last prefix) above which a move reads as "often follows"
_MAX_NEIGHBOUR_TABLE = 2_000_000  # catalogues up to this size get a precomputed neighbour table
_SEARCH_CHUNK = 65536
_MIN_PERSONA_LIFT = 1.5  # a persona expansion must be this many times likelier than uniform


@dataclass(frozen=True, slots=True)
class RuleTeacherConfig:
    """How the rule teacher derives interests and transitions."""

    max_interests: int = MAX_INTERESTS
    """At most this many interests (1..5)."""
    coverage: float = 0.8
    """Interests are added until they cover this share of the recency-weighted history mass."""
    min_share: float = 0.08
    """An interest beyond the first needs at least this share of the mass."""
    refine_share: float = 0.6
    """A level-0 prefix becomes level-0+1 when one child holds this share of its mass."""
    half_life: float = 8.0
    """Recency half-life in items: an item `half_life` steps back counts half."""
    expand: bool = True
    """Add one expansion interest (transition statistics + nearest items) when there is room."""
    neighbours: int = 10
    """Nearest items looked up per recent item for the expansion (0: no FAISS look-up)."""
    recent_items: int = 3
    """How many of the most recent items the nearest-item look-up starts from."""
    expansion_share: float = 0.5
    """Weight of an expansion interest relative to the smallest history interest."""
    next_mass_weight: float = 0.5
    """History-only next interest: score = w * mass share + (1 - w) * P(prefix | last)."""
    name: str = "rule"
    """Teacher name (recorded on every output)."""

    def __post_init__(self) -> None:
        if not 1 <= self.max_interests <= MAX_INTERESTS:
            raise ConfigError(f"{self.max_interests=} must be in [1, {MAX_INTERESTS}]")
        for name in ("coverage", "refine_share", "next_mass_weight"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in (0, 1]")
        for name in ("min_share", "expansion_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name}={getattr(self, name)} must be in [0, 1]")
        if self.half_life <= 0:
            raise ConfigError(f"{self.half_life=} must be > 0")
        if self.neighbours < 0 or self.recent_items < 1:
            raise ConfigError(f"{self.neighbours=} must be >= 0, {self.recent_items=} >= 1")


@dataclass(frozen=True, slots=True)
class _Hypothesis:
    prefix: tuple[int, ...]
    share: float
    kind: str  # "history" | "expansion" | "hindsight"


class RuleTeacher:
    """Data-derived three-part CoT (see the module docstring); a `TraceTeacher` too."""

    def __init__(
        self,
        catalog: Catalog,
        codes: np.ndarray,
        personas: PersonaModel,
        *,
        labels: PrefixLabels | None = None,
        transitions: PrefixTransitions | None = None,
        item_index: ItemIndex | None = None,
        config: RuleTeacherConfig | None = None,
        known_personas: np.ndarray | None = None,
        persona_prefixes: PersonaPrefixes | None = None,
    ) -> None:
        """
        Args:
            codes: (N, L) SID codes of the catalogue (L >= 2).
            personas: fitted persona prototypes, bound to the catalogue's item features.
            labels: prefix labels (built from the catalogue when None).
            transitions: prefix transition statistics of the *training* sequences (None: the
                expansion and the next-interest prediction use the history alone).
            item_index: FAISS nearest items for the expansion (None: not used).
            known_personas: (U,) persona id per user index, when the data carries them (a
                `PersonaConfig(source="labels")` model): the persona part names the user's own
                persona instead of the history's nearest prototype (users outside the array,
                or with a negative id, fall back to the nearest prototype).
            persona_prefixes: P(level-0 prefix | persona) of labelled users; when given, the
                expansion interest is the persona's most likely prefix outside the history.
        """
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or codes.shape[1] < 2 or len(codes) != len(catalog):
            raise ConfigError(f"codes of shape {codes.shape} do not fit {len(catalog)} items")
        self.catalog = catalog
        self.codes = codes
        self.personas = personas
        self.known_personas = (
            None if known_personas is None else np.asarray(known_personas, dtype=np.int64)
        )
        if (
            self.known_personas is not None
            and len(self.known_personas)
            and (int(self.known_personas.max()) >= personas.num_personas)
        ):
            raise ConfigError(
                f"known persona ids reach {int(self.known_personas.max())}, the persona model "
                f"has {personas.num_personas}"
            )
        self.persona_prefixes = persona_prefixes
        self.labels = labels if labels is not None else PrefixLabels.build(catalog, codes)
        self.transitions = transitions
        self.item_index = item_index
        self.config = config or RuleTeacherConfig()
        self.name = self.config.name
        cfg = self.config
        self.rules = InterestRules(
            max_interests=cfg.max_interests, coverage=cfg.coverage, min_share=cfg.min_share,
            narrow_share=cfg.refine_share, half_life=cfg.half_life,
            # The teacher has always narrowed 2-level SIDs to whole SIDs; kept as it was.
            narrow_to_full_sid=True,
        )  # fmt: skip
        self._neighbour_table: np.ndarray | None = None  # (N, k) int32, built on first use

    @classmethod
    def fit(
        cls,
        catalog: Catalog,
        codes: np.ndarray,
        train_indptr: np.ndarray,
        train_items: np.ndarray,
        *,
        persona_config: PersonaConfig | None = None,
        item_index: ItemIndex | None = None,
        config: RuleTeacherConfig | None = None,
    ) -> RuleTeacher:
        """Fit personas, prefix labels and transitions on training sequences (CSR arrays,
        e.g. `LeaveOneOutSplit.train_indptr/train_items`) and build the teacher."""
        persona_config = persona_config or PersonaConfig()
        features = features_for(catalog, codes, persona_config)
        histories = csr_histories(train_indptr, train_items)
        personas = PersonaModel.fit(features, histories, persona_config)
        return cls(
            catalog,
            codes,
            personas,
            transitions=PrefixTransitions.build(train_indptr, train_items, codes),
            item_index=item_index,
            config=config,
        )

    # -- the three parts ----------------------------------------------------------------------

    def _persona(self, user: int, history: np.ndarray) -> int:
        """The user's known persona when there is one, else the history's nearest prototype."""
        known = self.known_personas
        if known is not None and 0 <= user < len(known) and known[user] >= 0:
            return int(known[user])
        return self.personas.assign(history)

    def _history_interests(self, history: np.ndarray) -> list[_Hypothesis]:
        """Interests held by the history, best first."""
        prefixes, shares = self.rules.interests(self.codes[history])
        return [
            _Hypothesis(p, float(sh), "history") for p, sh in zip(prefixes, shares, strict=True)
        ]

    def _expansion(self, history: np.ndarray, held: list[_Hypothesis]) -> _Hypothesis | None:
        """A level-0 prefix the history does not hold but its last items point to."""
        cfg = self.config
        held0 = {h.prefix[0] for h in held}
        score: dict[int, float] = {}
        if self.transitions is not None:
            row = self.transitions.row(int(self.codes[history[-1], 0]))
            for code in np.argsort(-row, kind="stable")[: len(held0) + 3].tolist():
                if code not in held0:
                    score[code] = score.get(code, 0.0) + float(row[code])
        if self.item_index is not None and cfg.neighbours > 0:
            idx = self._neighbours(np.unique(history[-cfg.recent_items :]))  # (B, k)
            idx = idx[idx >= 0]
            if len(idx):
                codes0, votes = np.unique(self.codes[idx, 0], return_counts=True)
                for code, v in zip(codes0.tolist(), votes.tolist(), strict=True):
                    if code not in held0 and v >= 2:  # one stray neighbour is no evidence
                        score[code] = score.get(code, 0.0) + v / len(idx)
        if not score:
            return None
        best = max(sorted(score), key=lambda k: score[k])
        if score[best] < 0.1:
            return None
        share = cfg.expansion_share * min(h.share for h in held)
        return _Hypothesis((best,), share, "expansion")

    def _neighbours(self, items: np.ndarray) -> np.ndarray:
        """(B, k) nearest other items of `items` (-1 where missing)."""
        assert self.item_index is not None
        k = self.config.neighbours
        if len(self.catalog) > _MAX_NEIGHBOUR_TABLE:
            return self.item_index.related_items(items, k)[1]
        if self._neighbour_table is None:
            # One batched search for the whole catalogue: FAISS spends milliseconds of thread
            # start-up on every call, whatever the query size.
            rows = np.arange(len(self.catalog))
            self._neighbour_table = np.concatenate(
                [
                    self.item_index.related_items(rows[lo : lo + _SEARCH_CHUNK], k)[1]
                    for lo in range(0, len(rows), _SEARCH_CHUNK)
                ]
            ).astype(np.int32)
        return self._neighbour_table[items]

    def _persona_expansion(self, persona: int, held: list[_Hypothesis]) -> _Hypothesis | None:
        """The persona's most likely level-0 prefix the history does not hold."""
        assert self.persona_prefixes is not None
        found = self.persona_prefixes.expansion(persona, {h.prefix[0] for h in held})
        k0 = self.persona_prefixes.probs.shape[1]
        if found is None or found[1] * k0 < _MIN_PERSONA_LIFT:
            return None
        share = self.config.expansion_share * min(h.share for h in held)
        return _Hypothesis((found[0],), share, "expansion")

    def _interests(self, history: np.ndarray, persona: int) -> list[_Hypothesis]:
        held = self._history_interests(history)
        if self.config.expand and len(held) < self.config.max_interests:
            if self.persona_prefixes is not None:
                extra = self._persona_expansion(persona, held)
            else:
                extra = self._expansion(history, held)
            if extra is not None:
                held.append(extra)
        return held

    def _predict_next(self, history: np.ndarray, hyps: list[_Hypothesis]) -> int:
        """History-only choice of the next interest."""
        wm = self.config.next_mass_weight
        total = sum(h.share for h in hyps)
        last0 = int(self.codes[history[-1], 0])
        scores = []
        for h in hyps:
            trans = self.transitions.prob(last0, h.prefix[0]) if self.transitions else 0.0
            scores.append(wm * h.share / total + (1 - wm) * trans)
        return int(np.argmax(scores))

    def _reason(self, history: np.ndarray, hyp: _Hypothesis, label: str) -> str:
        last = int(history[-1])
        title = last_item_phrase(self.catalog.titles[last])
        last_sid = self.codes[last]
        last_label = self.labels.label(last_sid[:1])
        if tuple(last_sid[: len(hyp.prefix)].tolist()) == hyp.prefix:
            return history_transition(title, label, holds_last=True)
        p = self.transitions.prob(int(last_sid[0]), hyp.prefix[0]) if self.transitions else 0.0
        if p >= _COMPLEMENT_PROB:
            return f"after {title} ({last_label}), {label} often comes next"
        if hyp.kind == "history":
            return history_transition(title, label, holds_last=False)
        return f"after {title}, a new direction: {label}"

    # -- public API ---------------------------------------------------------------------------

    def explain(self, user: int, history: np.ndarray, target: int | None) -> TeacherCoT | None:
        """The CoT of one example; with `target`, the transition is chosen in hindsight."""
        history = np.asarray(history, dtype=np.int64)
        if len(history) == 0:
            return None
        persona = self._persona(user, history)
        hyps = self._interests(history, persona)
        chosen = self._predict_next(history, hyps)
        predicted: int | None = chosen
        if target is not None:
            sid = tuple(self.codes[int(target)].tolist())
            matches = [i for i, h in enumerate(hyps) if sid[: len(h.prefix)] == h.prefix]
            coarse = [i for i, h in enumerate(hyps) if h.prefix[0] == sid[0]]
            if matches:
                chosen = max(matches, key=lambda i: (len(hyps[i].prefix), hyps[i].share))
            elif coarse:  # a refined interest of the right region: widen it to level 0
                chosen = coarse[0]
                hyps[chosen] = _Hypothesis(sid[:1], hyps[chosen].share, "hindsight")
            else:
                new = _Hypothesis(
                    sid[:1], self.config.expansion_share * min(h.share for h in hyps), "hindsight"
                )
                if len(hyps) < self.config.max_interests:
                    hyps.append(new)
                else:
                    hyps[-1] = new  # the weakest interest makes room
                    if predicted == len(hyps) - 1:
                        predicted = None
                chosen = len(hyps) - 1
        total = sum(h.share for h in hyps)
        interests = tuple(
            CoTInterest(h.prefix, h.share / total, self.labels.label(h.prefix)) for h in hyps
        )
        cot = CoT(
            persona_id=persona,
            persona_name=self.personas.title(persona),
            interests=interests,
            next_interest=chosen,
            transition=self._reason(history, hyps[chosen], interests[chosen].label),
        )
        added = target is not None and hyps[chosen].kind == "hindsight"
        return TeacherCoT(cot, target is not None, predicted, self.name, added)

    def trace(self, user: int, history: np.ndarray) -> TraceTokens | None:
        """`TraceTeacher`: persona and interest prefixes from the history alone."""
        from fast_path.prompt import TraceTokens  # torch comes with it: only when used

        history = np.asarray(history, dtype=np.int64)
        if len(history) == 0:
            return None
        persona = self._persona(user, history)
        hyps = self._interests(history, persona)
        return TraceTokens(persona, tuple(h.prefix for h in hyps))
