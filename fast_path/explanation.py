"""What an answer says about its items and why, in the reasoner's words (from the trace).

`spell_items` turns ranked catalogue indices into `RecommendedItem`s (id, title, SID, source)
labelled with the trace interest each item falls under (`interest_labels`: the interest with
the longest SID prefix of the item); `explain` is the persona / interests / transition
`Explanation` a request asks for with `explain=True`.
"""

from __future__ import annotations

import numpy as np

from fast_path.blending import Blended
from fast_path.records import Explanation, RecommendedItem
from sid_index.codes import format_sid
from sid_index.records import Catalog
from slow_path.trace import Trace


def explain(trace: Trace) -> Explanation:
    """The trace's persona name, interest labels and transition text."""
    return Explanation(
        persona=trace.persona.name,
        interests=tuple(i.label for i in trace.interests),
        transition=trace.transition.text,
    )


def interest_labels(codes: np.ndarray, trace: Trace | None) -> list[str | None]:
    """Label of the trace interest with the longest SID prefix containing each item.

    Args:
        codes: (n, L) SID codes of the items.
    Returns:
        n labels, None where no interest (or no trace) contains the item.
    """
    labels: list[str | None] = [None] * len(codes)
    if trace is not None and len(codes):
        # Longest matching prefix wins: assign short prefixes first, let longer overwrite.
        best = np.full(len(codes), -1, dtype=np.int64)
        best_len = np.zeros(len(codes), dtype=np.int64)
        for k, interest in enumerate(trace.interests):
            p = np.asarray(interest.sid_prefix, dtype=np.int64)
            match = (codes[:, : len(p)] == p).all(axis=1) & (len(p) > best_len)
            best[match], best_len[match] = k, len(p)
        labels = [trace.interests[b].label if b >= 0 else None for b in best.tolist()]
    return labels


def spell_items(
    ranked: Blended, codes: np.ndarray, catalog: Catalog, trace: Trace | None
) -> tuple[RecommendedItem, ...]:
    """Spell out ranked items: id, title, SID tokens, source and interest label.

    Args:
        codes: (N, L) SID codes of the whole catalogue.
    """
    item_codes = codes[ranked.items]  # (n, L)
    labels = interest_labels(item_codes, trace)
    return tuple(
        RecommendedItem(
            item_id=catalog.item_ids[item],
            score=float(score),
            title=catalog.titles[item],
            sid=format_sid(item_codes[row]),
            source="fast" if fast else "reasoner",
            interest=labels[row],
        )
        for row, (item, score, fast) in enumerate(
            zip(
                ranked.items.tolist(),
                ranked.scores.tolist(),
                ranked.from_fast.tolist(),
                strict=True,
            )
        )
    )
