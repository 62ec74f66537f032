"""LLM-written persona summaries (the `beauty_personas` data) as a check on, and enrichment of,
our persona part. Used by benchmarks; tests use tiny generated summaries only.

The data: `sequential_data_processed.txt` (`user item item ...`, ids of its own) and
`user_summaries.partNN.json` (`{"<user>": {"user_summary": str, "item_ids": [...]}}`).

- `summary_keywords`: per persona, the words that its members' summaries use more than
  everyone's (KL contribution, with a document-frequency stop list), e.g. "hair, color, frizz".
- `keyword_agreement`: on users held out from the keyword fit, how many of their persona's
  keywords their own summary uses, against another random persona's keywords. A lift well
  above 1 says our behaviour-only personas capture what an LLM reading the items wrote.
- `with_summary`: the persona part of one user's CoT described by that user's summary
  (its first sentence), for SFT data richer than the prototype description.
- `cooccurrence_groups`: item groups for a catalogue with neither text nor categories (the
  summaries' own item ids): random-indexing vectors of item co-occurrence, clustered; feed
  them to `ItemFeatures.from_groups` to discover personas on that data.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from sid_index.errors import DataError
from slow_path.cot_format import CoT, clean_text
from trainer.cot.personas import kmeans

_WORD_RE = re.compile(r"[a-z][a-z-]{3,}")
_MAX_DOC_FREQ = 0.3  # words in more than this share of all summaries say nothing distinctive


@dataclass(frozen=True, slots=True)
class PersonaSummaries:
    """The beauty_personas data: sequences and one summary per user (ids as strings)."""

    sequences: dict[str, list[str]]
    """user -> item ids, oldest first."""
    summaries: dict[str, str]
    """user -> LLM-written persona summary."""


def load_persona_summaries(directory: Path) -> PersonaSummaries:
    """Read the directory (DataError naming the file for anything missing or malformed)."""
    directory = Path(directory)
    seq_path = directory / "sequential_data_processed.txt"
    if not seq_path.is_file():
        raise DataError(f"{seq_path}: no such file")
    sequences = {}
    with seq_path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            parts = line.split()
            if len(parts) < 2:
                raise DataError(f"{seq_path}:{lineno}: expected 'user item item ...'")
            sequences[parts[0]] = parts[1:]
    summaries: dict[str, str] = {}
    parts_found = sorted(directory.glob("user_summaries.part*.json"))
    if not parts_found:
        raise DataError(f"{directory}: no user_summaries.part*.json files")
    for path in parts_found:
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            summaries.update({str(u): str(v["user_summary"]) for u, v in doc.items()})
        except (json.JSONDecodeError, AttributeError, KeyError, TypeError) as exc:
            raise DataError(f"{path}: malformed summaries ({type(exc).__name__}: {exc})") from None
    return PersonaSummaries(sequences, summaries)


def summary_words(text: str) -> set[str]:
    """Lower-case content words of a summary (4+ letters)."""
    return set(_WORD_RE.findall(text.lower()))


def summary_keywords(
    summaries: Mapping[str, str], persona_of: Mapping[str, int], num_personas: int, top: int = 8
) -> list[list[str]]:
    """Per persona, the `top` words its members' summaries over-use (most distinctive first)."""
    docs = {u: summary_words(summaries[u]) for u in persona_of if u in summaries}
    if not docs:
        raise DataError("no user has both a persona and a summary")
    df: Counter[str] = Counter(w for words in docs.values() for w in words)
    n = len(docs)
    vocab = {w for w, c in df.items() if 3 <= c <= _MAX_DOC_FREQ * n}
    by_persona = [Counter[str]() for _ in range(num_personas)]
    members = np.zeros(num_personas)
    for u, words in docs.items():
        p = persona_of[u]
        by_persona[p].update(words & vocab)
        members[p] += 1
    out = []
    for p in range(num_personas):
        m = max(members[p], 1.0)
        # Each word's share of the KL divergence of members' word use from everyone's: words
        # that are both common among the members and over-used by them.
        scored = sorted(
            (
                ((c / m) * np.log((c / m) / (df[w] / n)), w)
                for w, c in by_persona[p].items()
                if c >= 2
            ),
            reverse=True,
        )
        out.append([w for s, w in scored[:top] if s > 0])
    return out


@dataclass(frozen=True, slots=True)
class SummaryAgreement:
    """How well persona keywords predict held-out users' summaries."""

    users: int
    """Held-out users evaluated."""
    own: float
    """Mean share of their own persona's keywords that a user's summary uses."""
    other: float
    """The same for a random other persona's keywords (the no-signal level)."""

    @property
    def lift(self) -> float:
        return self.own / self.other if self.other > 0 else float("inf")


def keyword_agreement(
    summaries: Mapping[str, str],
    persona_of: Mapping[str, int],
    num_personas: int,
    *,
    holdout: float = 0.2,
    top: int = 8,
    seed: int = 0,
) -> tuple[SummaryAgreement, list[list[str]]]:
    """Fit keywords on most users, score them on the held-out rest (see the module docstring).

    Returns:
        the agreement and the keywords fitted on the non-held-out users.
    """
    users = sorted(u for u in persona_of if u in summaries)
    rng = np.random.default_rng(seed)
    held = set(rng.choice(users, size=max(1, int(holdout * len(users))), replace=False).tolist())
    fit = {u: persona_of[u] for u in users if u not in held}
    keywords = summary_keywords(summaries, fit, num_personas, top)
    own, other, n = 0.0, 0.0, 0
    for u in sorted(held):
        p = persona_of[u]
        q = int((p + rng.integers(1, num_personas)) % num_personas) if num_personas > 1 else p
        if not keywords[p] or not keywords[q]:
            continue
        words = summary_words(summaries[u])
        own += len(words.intersection(keywords[p])) / len(keywords[p])
        other += len(words.intersection(keywords[q])) / len(keywords[q])
        n += 1
    return SummaryAgreement(n, own / max(n, 1), other / max(n, 1)), keywords


def keyword_names(keywords: Sequence[Sequence[str]], words: int = 2) -> list[str]:
    """Readable persona names from summary keywords ("hair & color"), "persona k" if none."""
    return [" & ".join(k[:words]) if k else f"persona {p}" for p, k in enumerate(keywords)]


def with_summary(cot: CoT, summary: str, max_words: int = 30) -> CoT:
    """The CoT with its persona described by a user's own summary (first sentence, cut)."""
    first = re.split(r"(?<=[.!?])\s", clean_text(summary), maxsplit=1)[0]
    short = " ".join(first.split()[:max_words])
    name = cot.persona_name.split(":", 1)[0]
    return replace(cot, persona_name=f"{name}: {short}" if short else name)


def cooccurrence_groups(
    indptr: np.ndarray,
    items: np.ndarray,
    num_items: int,
    num_groups: int,
    *,
    dim: int = 64,
    window: int = 3,
    seed: int = 0,
) -> np.ndarray:
    """(N,) group of each item from co-occurrence (-1 for items never seen).

    Each item gets a random unit vector; an item's context vector is the sum of the random
    vectors of the items within `window` positions of it (random indexing, a cheap stand-in
    for an SVD of the co-occurrence matrix); context vectors are normalized and clustered.
    """
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(num_items, dim))
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    ctx = np.zeros((num_items, dim))
    items = np.asarray(items, dtype=np.int64)
    user = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    for off in range(1, window + 1):
        same = user[off:] == user[:-off]
        a, b = items[:-off][same], items[off:][same]
        np.add.at(ctx, a, base[b])
        np.add.at(ctx, b, base[a])
    norm = np.linalg.norm(ctx, axis=1)
    seen = norm > 0
    groups = np.full(num_items, -1, dtype=np.int64)
    if seen.sum() < num_groups:
        raise DataError(f"{int(seen.sum())} items with co-occurrences, fewer than {num_groups=}")
    x = ctx[seen] / norm[seen, None]
    _, labels, _ = kmeans(x, num_groups, n_init=1, n_iter=30, seed=seed)
    groups[seen] = labels
    return groups
