"""Prompt encoding for the fast model: history as SID tokens, the trace inserted after the items
it was computed from.

    <bos> sid(h_1) … sid(h_c) <trace> <p_k> <interest> <a_3> <interest> <a_9><b_1> </trace>
          sid(h_{c+1}) … sid(h_T)          → next: sid(target)

Placing the trace *after* the history it summarises (instead of in front) has two effects:
positions before it cannot attend to it, so training on a whole sequence at once never leaks
a trace computed from the future into earlier predictions; and at serving time, events that
arrived after the trace was computed simply follow it, which is exactly what a cached trace
in Redis looks like. A fresh trace sits at the end of the prompt.

With item tokens (`FastVocab.item_buckets > 0`) each history item is `sid(h) <i_h>`; the
trace still follows a whole item and the answer is still the next item's SID tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from fast_path.vocab import BOS, INTEREST, PAD, TRACE, TRACE_END, FastVocab
from sid_index.errors import ConfigError

MAX_INTERESTS = 5


@dataclass(frozen=True, slots=True)
class TraceTokens:
    """The part of a reasoning trace the fast model reads."""

    persona_id: int | None
    """Persona prototype id (None or out of range → the unknown-persona token)."""
    interests: tuple[tuple[int, ...], ...] = ()
    """Interest hypotheses as SID prefixes (codes of levels 0..len-1), at most 5, best first."""


def trace_token_ids(vocab: FastVocab, trace: TraceTokens) -> np.ndarray:
    """`<trace> <p_k> (<interest> prefix…)* </trace>` as vocab ids; prefixes longer than L-1
    levels are cut (a full SID would name one item, not an interest)."""
    out = [TRACE, vocab.persona_token(trace.persona_id)]
    for prefix in trace.interests[:MAX_INTERESTS]:
        prefix = prefix[: vocab.num_levels - 1]
        if not prefix:
            continue
        out.append(INTEREST)
        out.extend(vocab.sid_tokens(np.asarray(prefix)).tolist())
    out.append(TRACE_END)
    return np.asarray(out, dtype=np.int64)


def encode(
    vocab: FastVocab,
    history_codes: np.ndarray,
    trace: TraceTokens | None = None,
    trace_at: int | None = None,
    items: np.ndarray | None = None,
) -> np.ndarray:
    """Token ids of one prompt.

    Args:
        history_codes: (T, L) SID codes of the history, oldest first.
        trace: the trace, or None for no-trace mode.
        trace_at: number of history items the trace was computed from (default: all of them).
        items: (T,) catalogue indices of the history; required when the vocabulary has item
            tokens, ignored otherwise.

    Returns:
        (1 + T*tokens_per_item [+ trace length],) int64 token ids.
    """
    hist = vocab.sid_tokens(history_codes)
    if vocab.item_buckets:
        if items is None or len(items) != len(history_codes):
            raise ConfigError(
                f"this fast model reads item tokens: pass the {len(history_codes)} history "
                f"items' catalogue indices (got {None if items is None else len(items)})"
            )
        hist = np.concatenate([hist, vocab.item_tokens(items)[:, None]], axis=1)
    hist = hist.reshape(-1)
    if trace is None:
        return np.concatenate([[BOS], hist]).astype(np.int64)
    cut = len(history_codes) if trace_at is None else int(trace_at)
    cut = min(max(cut, 0), len(history_codes)) * vocab.tokens_per_item
    return np.concatenate([[BOS], hist[:cut], trace_token_ids(vocab, trace), hist[cut:]]).astype(
        np.int64
    )


def left_pad(prompts: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad token id arrays into a batch.

    Returns:
        input_ids (B, T) int64 and attention_mask (B, T) int64 (0 on padding).
    """
    width = max(len(p) for p in prompts)
    ids = np.full((len(prompts), width), PAD, dtype=np.int64)
    mask = np.zeros((len(prompts), width), dtype=np.int64)
    for i, p in enumerate(prompts):
        ids[i, width - len(p) :] = p
        mask[i, width - len(p) :] = 1
    return torch.from_numpy(ids), torch.from_numpy(mask)
