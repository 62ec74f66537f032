"""Training text for the reasoner: the CoT SFT samples and the itemic-alignment corpora.

SFT samples (`build_sft_corpus`), from a leave-one-out split's train parts: per user, K cut
points (the last K positions by default) give a history (the items before the cut, at most
`max_history`) and a target (the item at the cut). A sample is *thinking* or not at a
per-domain ratio (the domain of the target item); exactly round(ratio × n) of a domain's n
samples think, chosen with the seed:

    thinking:      prompt = render_prompt(history, thinking=True)        (ends with <think>)
                   completion = render_cot(teacher CoT) + render_answer(target SID)
    non-thinking:  prompt = render_prompt(history, thinking=False)       (ends with <answer>)
                   completion = render_answer(target SID)

(`slow_path/cot_format.py`). The teacher sees the same history as the prompt plus the target
(hindsight, see `TeacherCoT`); when it fails the sample is written without a thought.

Alignment samples (`build_align_corpus`, R0 item perception), plain text pairs; the prompt
ends with ":" and the completion follows without a space:

    sid2text   "item <a_12><b_3><c_9><d_0> is:"           → "Ballpoint pens 12-pack (Office > Pens)"
    text2sid   "the item Ballpoint pens 12-pack (Office > Pens) has ID:" → "<a_12><b_3><c_9><d_0>"
    item2item  "items related to <a_12><b_3><c_9><d_0> Ballpoint pens 12-pack:"
                                                    → "<a_40><b_1><c_2><d_0>; <a_12>…"
    sequence   "a user's items, oldest first:"      → "<a_12>… Ballpoint pens; <a_40>… Desk lamp"

(the category part is left out when the catalogue has none). item2item lists the top-k items
co-occurring with the item within `cooc_window` positions in the training sequences, by count.

Both sample types are written and read as JSONL, one object per line.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TypeVar

import msgspec
import numpy as np
from tqdm import tqdm

from sid_index.codes import format_sid
from sid_index.datasets.splits import LeaveOneOutSplit
from sid_index.errors import ConfigError, DataError
from sid_index.records import Catalog
from slow_path.cot_format import PromptItem, render_completion, render_prompt, short_title
from trainer.cot.base import CoTTeacher, TeacherError

_CUT_MODES = ("last", "random")
_S = TypeVar("_S", "SFTSample", "AlignSample")
ALIGN_TASKS = ("sid2text", "text2sid", "item2item", "sequence")


@dataclass(frozen=True, slots=True)
class SFTSample:
    """One CoT-SFT sample."""

    prompt: str
    completion: str
    thinking: bool
    """True when the completion carries a chain of thought."""
    domain: str
    """Domain of the target item."""
    user: int
    """Row of the user in the source `Interactions`."""
    target: int
    """Catalogue index of the target item."""


@dataclass(frozen=True, slots=True)
class AlignSample:
    """One itemic-alignment sample."""

    prompt: str
    completion: str
    task: str
    """One of ALIGN_TASKS."""


@dataclass(frozen=True, slots=True)
class CorpusConfig:
    """How SFT samples are cut and mixed."""

    cuts_per_user: int = 1
    """Cut points per user (K); fewer when the train part is shorter."""
    cut_mode: str = "last"
    """"last": the last K positions of the train part; "random": K seeded distinct positions."""
    max_history: int = 20
    """Most recent items before the cut shown in the prompt (and to the teacher)."""
    thinking_ratio: Mapping[str, float] = field(default_factory=dict)
    """Per domain, the fraction of samples that think; other domains use the default."""
    default_thinking_ratio: float = 0.5
    """Thinking fraction of a domain not named in `thinking_ratio`."""
    seed: int = 0
    """Seed of the random cuts and of which samples think."""
    hindsight: bool = True
    """True: the teacher sees the target, and the thought's transition names the interest
    that holds it (adding one when none does) — the thought rationalises the answer. False:
    the thought is the teacher's history-only prediction, wrong as often as the model's own
    will be at inference, so the answer learns not to trust `<next_k>` blindly."""

    def __post_init__(self) -> None:
        if self.cuts_per_user < 1 or self.max_history < 1:
            raise ConfigError(f"{self.cuts_per_user=} and {self.max_history=} must be >= 1")
        if self.cut_mode not in _CUT_MODES:
            raise ConfigError(f"{self.cut_mode=} must be one of {_CUT_MODES}")
        for d, r in {**self.thinking_ratio, "default": self.default_thinking_ratio}.items():
            if not 0.0 <= r <= 1.0:
                raise ConfigError(f"thinking ratio {r!r} of domain {d!r} must be in [0, 1]")

    def ratio(self, domain: str) -> float:
        """Thinking fraction of a domain."""
        return self.thinking_ratio.get(domain, self.default_thinking_ratio)


@dataclass
class CorpusStats:
    """What `build_sft_corpus` produced."""

    samples: int = 0
    thinking: int = 0
    teacher_failures: int = 0
    """Samples meant to think whose teacher returned nothing or failed (written without)."""
    hindsight_differs: int = 0
    """Thinking samples whose hindsight next interest differs from the history-only guess."""
    hindsight_added: int = 0
    """Thinking samples whose chosen interest was added (or widened) to cover the target."""
    per_domain: dict[str, list[int]] = field(default_factory=dict)
    """domain -> [samples, thinking]."""


def _cut_points(split: LeaveOneOutSplit, config: CorpusConfig) -> tuple[np.ndarray, np.ndarray]:
    """(S,) user rows of the split and (S,) cut positions j >= 1 (target = train[j])."""
    lengths = split.train_lengths()
    n = np.minimum(config.cuts_per_user, np.maximum(lengths - 1, 0))  # (U,)
    users = np.repeat(np.arange(len(split)), n)
    if config.cut_mode == "last":
        back = np.arange(int(n.sum())) - np.repeat(np.cumsum(n) - n, n)  # 0..n_u-1 per user
        return users, np.repeat(lengths, n) - 1 - back
    rng = np.random.default_rng([config.seed, 11])
    cuts = [
        np.sort(rng.choice(np.arange(1, m), size=k, replace=False))
        for m, k in zip(lengths.tolist(), n.tolist(), strict=True)
        if k
    ]
    return users, (np.concatenate(cuts) if cuts else np.zeros(0, dtype=np.int64))


def _thinking_mask(domains: Sequence[str], config: CorpusConfig) -> np.ndarray:
    """(S,) bool: exactly round(ratio × n) samples of each domain think (seeded choice)."""
    rng = np.random.default_rng([config.seed, 12])
    names, inverse = np.unique(np.asarray(domains, dtype=object), return_inverse=True)
    mask = np.zeros(len(domains), dtype=bool)
    for d, name in enumerate(names.tolist()):
        rows = np.flatnonzero(inverse == d)
        k = round(config.ratio(str(name)) * len(rows))
        mask[rng.permutation(rows)[:k]] = True
    return mask


def build_sft_corpus(
    split: LeaveOneOutSplit,
    catalog: Catalog,
    codes: np.ndarray,
    teacher: CoTTeacher | None,
    config: CorpusConfig | None = None,
    *,
    stats: CorpusStats | None = None,
    progress: bool = False,
) -> list[SFTSample]:
    """SFT samples of a split's train parts (see the module docstring).

    Args:
        codes: (N, L) SID codes of the catalogue.
        teacher: writes the thoughts; None makes every sample non-thinking.
        stats: filled in with counts when given.
    """
    config = config or CorpusConfig()
    stats = stats if stats is not None else CorpusStats()
    codes = np.asarray(codes)
    users, cuts = _cut_points(split, config)
    starts = split.train_indptr[users] + cuts  # (S,) index of the target in train_items
    targets = split.train_items[starts]
    domains = [catalog.domains[t] for t in targets.tolist()]
    think = _thinking_mask(domains, config) if teacher is not None else np.zeros(len(users), bool)
    out: list[SFTSample] = []
    rows = zip(users.tolist(), starts.tolist(), cuts.tolist(), strict=True)
    for s, (u, pos, cut) in enumerate(
        tqdm(rows, total=len(users), desc="sft", disable=not progress)
    ):
        history = split.train_items[pos - min(cut, config.max_history) : pos]
        target, user = int(targets[s]), int(split.user_index[u])
        cot = None
        if think[s] and teacher is not None:
            try:
                made = teacher.explain(user, history, target if config.hindsight else None)
            except TeacherError:
                made = None
            if made is None:
                stats.teacher_failures += 1
            else:
                cot = made.cot
                stats.hindsight_differs += made.predicted_next != made.cot.next_interest
                stats.hindsight_added += made.added_by_hindsight
        items = [PromptItem(tuple(codes[i].tolist()), catalog.titles[i]) for i in history.tolist()]
        sample = SFTSample(
            prompt=render_prompt(items, thinking=cot is not None),
            completion=render_completion(cot, codes[target].tolist()),
            thinking=cot is not None,
            domain=domains[s],
            user=user,
            target=target,
        )
        out.append(sample)
        per = stats.per_domain.setdefault(sample.domain, [0, 0])
        per[0] += 1
        per[1] += sample.thinking
    stats.samples += len(out)
    stats.thinking += sum(s.thinking for s in out)
    return out


# -- itemic alignment ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AlignConfig:
    """Which alignment samples to build."""

    tasks: tuple[str, ...] = ALIGN_TASKS
    """Subset of ALIGN_TASKS."""
    related_k: int = 5
    """Items listed per item2item sample."""
    cooc_window: int = 3
    """Items at most this many positions apart in a sequence co-occur."""
    max_sequence_items: int = 20
    """Most recent train items of a user in a sequence sample."""
    max_items: int | None = None
    """Seeded sample of at most this many items for the per-item tasks (None: all)."""
    seed: int = 0
    """Seed of the item sample."""

    def __post_init__(self) -> None:
        unknown = set(self.tasks) - set(ALIGN_TASKS)
        if unknown or not self.tasks:
            raise ConfigError(f"{self.tasks=} must be a non-empty subset of {ALIGN_TASKS}")
        if min(self.related_k, self.cooc_window, self.max_sequence_items) < 1:
            raise ConfigError(
                f"{self.related_k=}, {self.cooc_window=}, {self.max_sequence_items=} must be >= 1"
            )
        if self.max_items is not None and self.max_items < 1:
            raise ConfigError(f"{self.max_items=} must be >= 1 (or None)")


def cooccurrence(
    indptr: np.ndarray, items: np.ndarray, window: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k co-occurring items per item within `window` positions of CSR sequences.

    Returns:
        (N_src,) item indices that have partners and (N_src, k) partners by count (ties: lower
        index first), -1 padded.
    """
    items = np.asarray(items, dtype=np.int64)
    user = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))  # (nnz,)
    pairs = []
    for off in range(1, window + 1):
        same = user[off:] == user[:-off]
        a, b = items[:-off][same], items[off:][same]
        keep = a != b
        pairs += [np.stack([a[keep], b[keep]], 1), np.stack([b[keep], a[keep]], 1)]
    if not pairs or not sum(len(p) for p in pairs):
        return np.zeros(0, dtype=np.int64), np.zeros((0, k), dtype=np.int64)
    uniq, count = np.unique(np.concatenate(pairs), axis=0, return_counts=True)  # (P, 2), (P,)
    order = np.lexsort((uniq[:, 1], -count, uniq[:, 0]))  # by source, count desc, partner asc
    uniq = uniq[order]
    src, first = np.unique(uniq[:, 0], return_index=True)
    rank = np.arange(len(uniq)) - np.repeat(first, np.diff(np.append(first, len(uniq))))
    top = np.full((len(src), k), -1, dtype=np.int64)
    keep = rank < k
    top[np.searchsorted(src, uniq[keep, 0]), rank[keep]] = uniq[keep, 1]
    return src, top


def _described(catalog: Catalog, i: int) -> str:
    title = short_title(catalog.titles[i])
    cat = catalog.categories[i]
    return f"{title} ({' > '.join(cat[-2:])})" if cat else title


def build_align_corpus(
    split: LeaveOneOutSplit, catalog: Catalog, codes: np.ndarray, config: AlignConfig | None = None
) -> list[AlignSample]:
    """Itemic-alignment samples (see the module docstring); co-occurrence and sequences come
    from the split's train parts only."""
    config = config or AlignConfig()
    codes = np.asarray(codes)
    if len(codes) != len(catalog):
        raise DataError(f"{len(codes)} SIDs for a catalogue of {len(catalog)} items")
    sid = [format_sid(c) for c in codes.tolist()]
    rows = np.arange(len(catalog))
    if config.max_items is not None and config.max_items < len(rows):
        rows = np.sort(np.random.default_rng(config.seed).choice(rows, config.max_items, False))
    out: list[AlignSample] = []
    for i in rows.tolist():
        text = _described(catalog, i)
        if "sid2text" in config.tasks:
            out.append(AlignSample(f"item {sid[i]} is:", text, "sid2text"))
        if "text2sid" in config.tasks:
            out.append(AlignSample(f"the item {text} has ID:", sid[i], "text2sid"))
    if "item2item" in config.tasks:
        src, top = cooccurrence(
            split.train_indptr, split.train_items, config.cooc_window, config.related_k
        )
        wanted = np.isin(src, rows)
        for i, partners in zip(src[wanted].tolist(), top[wanted].tolist(), strict=True):
            listed = "; ".join(sid[p] for p in partners if p >= 0)
            prompt = f"items related to {sid[i]} {short_title(catalog.titles[i])}:"
            out.append(AlignSample(prompt, listed, "item2item"))
    if "sequence" in config.tasks:
        bounds = split.train_indptr.tolist()
        for lo, hi in pairwise(bounds):
            seq = split.train_items[max(lo, hi - config.max_sequence_items) : hi].tolist()
            listed = "; ".join(f"{sid[i]} {short_title(catalog.titles[i])}" for i in seq)
            out.append(AlignSample("a user's items, oldest first:", listed, "sequence"))
    return out


# -- JSONL ------------------------------------------------------------------------------------

_ENCODER = msgspec.json.Encoder()


def write_jsonl(path: Path, samples: Iterable[SFTSample | AlignSample]) -> int:
    """Write samples one JSON object per line; returns how many."""
    n = 0
    with Path(path).open("wb") as fh:
        for s in samples:
            fh.write(_ENCODER.encode(s) + b"\n")
            n += 1
    return n


def _read(path: Path, decoder: msgspec.json.Decoder[_S]) -> list[_S]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    out = []
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                out.append(decoder.decode(line))
            except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                raise DataError(f"{path}:{lineno}: malformed sample ({exc})") from None
    return out


def read_sft_jsonl(path: Path) -> list[SFTSample]:
    """Samples written by `write_jsonl`, type-checked (DataError naming a malformed line)."""
    return _read(path, msgspec.json.Decoder(SFTSample))


def read_align_jsonl(path: Path) -> list[AlignSample]:
    """Alignment samples written by `write_jsonl`, type-checked."""
    return _read(path, msgspec.json.Decoder(AlignSample))
