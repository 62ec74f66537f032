"""The reasoner's evaluation tiers (the lead wires them into `reasonrec eval`).

- R0 item perception: from `sid2text` alignment prompts ("item <a_..><b_..>… is:"), does the
  model write the item's category? Accuracy of the category written (the `(A > B)` part of the
  completion) against chance (1 / number of categories) and the majority-class rate.
- R1 item-to-item: from `item2item` prompts ("items related to <sid> title:"), the top-K
  trie-constrained SIDs; hit rate = any of them among the listed co-occurrence neighbours,
  against the hit rate of K random distinct items.
- R2 interest (thinking mode): parse the thought (`parse_completion`); does any expanded
  interest prefix — and the one `<next_k>` points at — contain the next item?
- R3 recommendation: Recall@K / NDCG@K (`trainer.metrics`) of the top-K answers, in thinking
  and non-thinking mode.

Prompts come from `trainer.cot.corpus` samples (held-out items or users), so the evaluation
reads exactly the text format the model was trained on.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from sid_index.codes import parse_sid
from sid_index.errors import DataError
from sid_index.trie import SIDTrie
from slow_path.cot_format import PromptItem, parse_completion, render_prompt
from trainer.metrics import ranking_metrics
from trainer.reasoner.generate import ReasonConfig, ReasonOutput, complete, decode_items, reason
from trainer.reasoner.model import Reasoner
from trainer.reasoner.sft_data import PromptCompletion, encode_prompts
from trainer.reasoner.tokenizer import decode

_CATEGORY_RE = re.compile(r"\(([^()]*)\)\s*$")


def category_of(text: str) -> str | None:
    """The `(A > B)` category part at the end of an item description, or None."""
    m = _CATEGORY_RE.search(text.strip())
    return m.group(1).strip() if m else None


@dataclass(frozen=True, slots=True)
class PerceptionResult:
    """R0: SID → category."""

    accuracy: float
    """Fraction of items whose generated category equals the true one."""
    title_accuracy: float
    """Fraction whose whole generated description equals the true one."""
    chance: float
    """1 / number of distinct categories."""
    majority: float
    """Accuracy of always answering the most frequent category."""
    num_items: int

    def to_dict(self) -> dict[str, float]:
        return {
            "r0/category_acc": self.accuracy,
            "r0/description_acc": self.title_accuracy,
            "r0/chance": self.chance,
            "r0/majority": self.majority,
        }


def item_perception(
    reasoner: Reasoner,
    samples: Sequence[PromptCompletion],
    *,
    max_new_tokens: int = 48,
    batch_size: int = 32,
) -> PerceptionResult:
    """R0 on `sid2text` samples (greedy decoding until eos)."""
    truth = [category_of(s.completion) for s in samples]
    keep = [i for i, c in enumerate(truth) if c is not None]
    if not keep:
        raise DataError("no sid2text sample has a '(category)' part to evaluate R0 on")
    rows = encode_prompts(reasoner.tokenizer, [samples[i].prompt for i in keep])
    written: list[str] = []
    for lo in range(0, len(rows), batch_size):
        ids, _ = complete(
            reasoner.model, reasoner.tokenizer, rows[lo : lo + batch_size],
            max_new_tokens=max_new_tokens,
        )  # fmt: skip
        written += [decode(reasoner.tokenizer, r, skip_special=True) for r in ids]
    expected = [truth[i] for i in keep]
    got = [category_of(w) for w in written]
    acc = float(np.mean([g == e for g, e in zip(got, expected, strict=True)]))
    exact = float(
        np.mean(
            [w.strip() == samples[i].completion.strip() for w, i in zip(written, keep, strict=True)]
        )
    )
    _, counts = np.unique(np.asarray(expected, dtype=object), return_counts=True)
    return PerceptionResult(
        acc, exact, 1.0 / len(counts), float(counts.max() / len(expected)), len(keep)
    )


def random_hit_rate(num_items: int, relevant: np.ndarray, k: int) -> float:
    """Mean probability that k distinct random items include one of `relevant[i]` items."""
    k = min(k, num_items)
    miss = [
        math.exp(
            math.lgamma(num_items - m + 1) - math.lgamma(num_items - m - k + 1)
            - math.lgamma(num_items + 1) + math.lgamma(num_items - k + 1)
        )
        if num_items - m >= k
        else 0.0
        for m in relevant.tolist()
    ]  # fmt: skip
    return float(1.0 - np.mean(miss))


def item_to_item(
    reasoner: Reasoner,
    samples: Sequence[PromptCompletion],
    trie: SIDTrie,
    *,
    k: int = 10,
    batch_size: int = 16,
) -> dict[str, float]:
    """R1 on `item2item` samples: hit rate of the top-k constrained SIDs among the listed
    neighbours, and the random baseline."""
    code_to_item = {
        tuple(c): i for i, c in enumerate(trie.sid_of(torch.arange(trie.num_items)).tolist())
    }
    neighbours: list[set[int]] = []
    for s in samples:
        listed = [p.strip() for p in s.completion.split(";") if p.strip()]
        neighbours.append(
            {code_to_item[parse_sid(p)] for p in listed if parse_sid(p) in code_to_item}
        )
    if not any(neighbours):
        raise DataError("no item2item sample lists a catalogue item")
    items, _, _ = decode_items(
        reasoner.model, reasoner.tokenizer, [s.prompt for s in samples], trie=trie,
        num_answers=k, batch_size=batch_size,
    )  # fmt: skip
    hits = [bool(set(row.tolist()) & nb) for row, nb in zip(items, neighbours, strict=True)]
    sizes = np.array([len(nb) for nb in neighbours])
    return {
        f"r1/hit@{k}": float(np.mean(hits)),
        f"r1/random_hit@{k}": random_hit_rate(trie.num_items, sizes, k),
    }


def interest_metrics(
    outputs: Sequence[ReasonOutput], target_sids: np.ndarray, reasoner: Reasoner
) -> dict[str, float]:
    """R2 from thinking outputs: parse rate, interests per thought, and whether an interest
    prefix (any / the predicted next one) contains the target's SID."""
    vocab = reasoner.vocab
    parsed = [
        parse_completion(o.text, level_sizes=vocab.level_sizes, num_personas=vocab.num_personas)
        for o in outputs
    ]
    any_hit, next_hit, n_interests, ok, persona = [], [], [], [], []
    for p, target in zip(parsed, np.asarray(target_sids).tolist(), strict=True):
        cot = p.cot
        ok.append(cot is not None)
        persona.append(cot is not None and cot.persona_id is not None)
        interests = cot.interests if cot is not None else ()
        n_interests.append(len(interests))
        contains = [tuple(target[: len(i.sid_prefix)]) == i.sid_prefix for i in interests]
        any_hit.append(any(contains))
        nxt = cot.next_interest if cot is not None else None
        next_hit.append(nxt is not None and contains[nxt])
    return {
        "r2/parsed": float(np.mean(ok)),
        "r2/persona": float(np.mean(persona)),
        "r2/interests": float(np.mean(n_interests)),
        "r2/interest_hit": float(np.mean(any_hit)),
        "r2/next_interest_hit": float(np.mean(next_hit)),
        "r2/budget_hit": float(np.mean([o.hit_budget for o in outputs])),
        "r2/think_tokens": float(np.mean([o.think_tokens for o in outputs])),
    }


def persona_match(outputs: Sequence[ReasonOutput], truth: np.ndarray, reasoner: Reasoner) -> float:
    """R2 persona: share of thoughts that name the user's known persona (`truth`, one id per
    output); an unparseable thought or one without a persona counts as a miss."""
    vocab = reasoner.vocab
    hits = []
    for o, t in zip(outputs, np.asarray(truth).tolist(), strict=True):
        cot = parse_completion(
            o.text, level_sizes=vocab.level_sizes, num_personas=vocab.num_personas
        ).cot
        hits.append(cot is not None and cot.persona_id == int(t))
    return float(np.mean(hits)) if hits else 0.0


def recommendation(
    reasoner: Reasoner,
    trie: SIDTrie,
    histories: Sequence[Sequence[PromptItem]],
    targets: np.ndarray,
    *,
    config: ReasonConfig,
    ks: Sequence[int] = (5, 10),
    exclusion_sets: Sequence[Sequence[int]] | None = None,
) -> tuple[dict[str, float], list[ReasonOutput]]:
    """R3 (and R2 in thinking mode) for users' histories and held-out target items.

    Args:
        histories: per user, the prompt items (most recent last).
        targets: (U,) catalogue index of each user's next item.
        config: decoding settings; `config.thinking` picks the mode (metric prefix
            "thinking/" or "nothinking/").
    Returns:
        (metrics, outputs): Recall@k/NDCG@k and, in thinking mode, the R2 metrics.
    """
    targets = np.asarray(targets, dtype=np.int64)
    prompts = [render_prompt(h, thinking=config.thinking) for h in histories]
    outputs = reason(
        reasoner.model, reasoner.tokenizer, prompts, trie=trie, config=config,
        exclusion_sets=exclusion_sets,
    )  # fmt: skip
    topk = np.stack([o.items for o in outputs])  # (U, K)
    mode = "thinking" if config.thinking else "nothinking"
    metrics = {
        f"{mode}/r3/{name}": float(v)
        for name, v in ranking_metrics(topk, targets, ks).to_dict().items()
        if name != "num_users"
    }
    if config.thinking:
        target_sids = trie.sid_of(torch.from_numpy(targets)).numpy()
        metrics.update(
            {f"{mode}/{k}": v for k, v in interest_metrics(outputs, target_sids, reasoner).items()}
        )
    return metrics, outputs
