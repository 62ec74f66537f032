"""`ReasonerTeacher`: the fast model's traces written by the trained reasoner.

The reasoner reads a history in the CoT prompt format (the last `max_history` items, SIDs and
titles), thinks greedily within a token budget, and its completion is parsed with
`slow_path.cot_format.parse_completion`. A thought that names a usable persona and at least one
usable interest becomes `TraceTokens` (persona id + interest SID prefixes) — the rule `to_trace`
applies, so the fast model sees what the slow path would store in Redis. Anything else is a
counted parse failure, and the fast model runs in no-trace mode for that history, as it does on
a Redis miss.

Decoding is batched: `precompute_traces` decodes many histories at once (sorted by prompt
length, so a batch pads little) and caches the traces by history, so `trace()` during an
evaluation is a dictionary look-up. A history that was not precomputed is decoded on its own
(correct, but one generation per call: slow for training on CPU).
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sid_index.errors import ConfigError
from sid_index.records import Catalog
from sid_index.trie import SIDTrie
from slow_path.cot_format import PromptItem, parse_completion, render_prompt
from trainer.training_log import progress

if TYPE_CHECKING:
    from fast_path.prompt import TraceTokens
    from trainer.reasoner.model import Reasoner

log = logging.getLogger(__name__)

_DIGITS_RE = re.compile(r"\d+")
_TOP_PROBLEMS = 5


@dataclass(frozen=True, slots=True)
class ReasonerTeacherConfig:
    """How the reasoner writes traces."""

    max_history: int = 20
    """Most recent history items in the prompt (use the value the reasoner was trained with)."""
    max_think_tokens: int = 192
    """Thinking budget in tokens; a thought cut by it usually fails to parse."""
    batch_size: int = 16
    """Histories decoded together."""
    name: str = "reasoner"
    """Name recorded with results."""

    def __post_init__(self) -> None:
        if min(self.max_history, self.batch_size) < 1:
            raise ConfigError(f"{self.max_history=} and {self.batch_size=} must be >= 1")
        if self.max_think_tokens < 1:
            raise ConfigError(f"{self.max_think_tokens=} must be >= 1")


@dataclass
class TraceStats:
    """What the teacher's decodes produced (cache hits are not counted again)."""

    decoded: int = 0
    """Histories the reasoner thought about."""
    parsed: int = 0
    """Of those, completions that gave a usable trace (persona + >= 1 interest)."""
    hit_budget: int = 0
    """Thoughts cut by the thinking budget."""
    think_tokens: int = 0
    """Thought tokens written in total."""
    problems: Counter[str] = field(default_factory=Counter)
    """Parser problems by kind (digits replaced by '#'), over all completions."""

    @property
    def failures(self) -> int:
        return self.decoded - self.parsed

    @property
    def parse_rate(self) -> float:
        """Fraction of decoded histories with a usable trace (NaN before any decode)."""
        return self.parsed / self.decoded if self.decoded else float("nan")

    def to_dict(self) -> dict[str, object]:
        """JSON-able summary: counts, rates and the most frequent problems."""
        return {
            "decoded": self.decoded,
            "parsed": self.parsed,
            "parse_failures": self.failures,
            "parseable_traces": round(self.parse_rate, 4) if self.decoded else None,
            "hit_budget": self.hit_budget,
            "mean_think_tokens": round(self.think_tokens / self.decoded, 1) if self.decoded else 0,
            "top_problems": dict(self.problems.most_common(_TOP_PROBLEMS)),
        }


class ReasonerTeacher:
    """A `trainer.teachers.TraceTeacher` backed by the trained reasoner (see module doc)."""

    def __init__(
        self,
        reasoner: Reasoner,
        trie: SIDTrie,
        catalog: Catalog,
        codes: np.ndarray,
        config: ReasonerTeacherConfig | None = None,
    ) -> None:
        """
        Args:
            trie: the catalogue's SID trie (the answer the reasoner writes is a real item).
            codes: (N, L) SID codes of the catalogue.
        """
        codes = np.asarray(codes, dtype=np.int64)
        if codes.ndim != 2 or len(codes) != len(catalog):
            raise ConfigError(f"codes of shape {codes.shape} do not fit {len(catalog)} items")
        if tuple(reasoner.vocab.level_sizes) != tuple(trie.level_sizes):
            raise ConfigError(
                f"reasoner SID levels {reasoner.vocab.level_sizes} differ from the index's "
                f"{tuple(trie.level_sizes)}"
            )
        self.reasoner = reasoner
        self.trie = trie
        self.catalog = catalog
        self.codes = codes
        self.config = config or ReasonerTeacherConfig()
        self.stats = TraceStats()
        self._cache: dict[bytes, TraceTokens | None] = {}
        self._warned = False

    @property
    def name(self) -> str:
        return self.config.name

    def _window(self, history: np.ndarray) -> np.ndarray:
        return np.asarray(history, dtype=np.int64)[-self.config.max_history :]

    def prompt(self, history: np.ndarray) -> str:
        """The thinking prompt of a history ((T,) catalogue indices, oldest first)."""
        items = [
            PromptItem(tuple(self.codes[i].tolist()), self.catalog.titles[i])
            for i in self._window(history).tolist()
        ]
        return render_prompt(items, thinking=True)

    def precompute_traces(
        self, histories: Sequence[np.ndarray], *, show_progress: bool = False
    ) -> list[TraceTokens | None]:
        """Traces of many histories, decoded in batches (cached; failures counted in `stats`).

        Returns:
            per history, its trace or None (empty history or an unparseable completion).
        """
        from trainer.reasoner.generate import ReasonConfig, reason

        keys = [self._window(h).tobytes() for h in histories]
        todo: dict[bytes, np.ndarray] = {}
        for key, h in zip(keys, histories, strict=True):
            if key not in self._cache and len(h) and key not in todo:
                todo[key] = self._window(h)
        if todo:
            pending = list(todo)
            prompts = [self.prompt(todo[k]) for k in pending]
            order = np.argsort([len(p) for p in prompts], kind="stable")
            cfg = ReasonConfig(
                thinking=True,
                max_think_tokens=self.config.max_think_tokens,
                num_answers=1,
                batch_size=self.config.batch_size,
            )
            size = self.config.batch_size
            starts = range(0, len(order), size)
            bar = progress(starts, desc="reasoner traces", unit="batch", disable=not show_progress)
            for lo in bar:
                rows = order[lo : lo + size].tolist()
                outputs = reason(
                    self.reasoner.model,
                    self.reasoner.tokenizer,
                    [prompts[r] for r in rows],
                    trie=self.trie,
                    config=cfg,
                )
                for r, out in zip(rows, outputs, strict=True):
                    trace = self.trace_from_completion(
                        out.text, think_tokens=out.think_tokens, hit_budget=out.hit_budget
                    )
                    self._cache[pending[r]] = trace
        return [self._cache.get(k) for k in keys]

    def trace_from_completion(
        self, text: str, *, think_tokens: int, hit_budget: bool
    ) -> TraceTokens | None:
        """Parse one thinking completion into a trace, counting it in `stats`.

        Args:
            text: the completion after the prompt's `<think>` (`ReasonOutput.text`).
            think_tokens, hit_budget: the thought's length and whether the budget cut it.
        """
        from fast_path.prompt import TraceTokens

        vocab = self.reasoner.vocab
        parsed = parse_completion(
            text, level_sizes=vocab.level_sizes, num_personas=vocab.num_personas
        )
        st = self.stats
        st.decoded += 1
        st.think_tokens += think_tokens
        st.hit_budget += hit_budget
        st.problems.update(_DIGITS_RE.sub("#", p) for p in parsed.problems)
        cot = parsed.cot
        if cot is None or cot.persona_id is None or not cot.interests:
            return None
        st.parsed += 1
        return TraceTokens(cot.persona_id, tuple(i.sid_prefix for i in cot.interests))

    def trace(self, user: int, history: np.ndarray) -> TraceTokens | None:
        """`TraceTeacher`: the cached trace of `history`, decoding it now on a miss."""
        if len(history) == 0:
            return None
        key = self._window(history).tobytes()
        if key not in self._cache:
            if not self._warned:
                log.warning(
                    "reasoner teacher: decoding histories one at a time (precompute_traces "
                    "batches them)"
                )
                self._warned = True
            self.precompute_traces([history])
        return self._cache[key]
