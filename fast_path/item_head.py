"""Item-head re-ranking: the fast model's SID beam, re-scored with its own item-token head.

A fast model trained with item tokens and an item-head loss (`train fast --item-tokens all
--item-loss-weight W`) predicts the next item two ways from the same hidden state at the end
of the prompt: its SID tokens, level by level (what the constrained beam search decodes), and
its item token, through the tied item-token embeddings (a SASRec-style full-softmax head).
The beam search proposes candidates; each is re-scored as

    score = log p_SID(item) + weight · <h, e_item>

where h is the last prompt position's hidden state and e_item the item token's output
embedding (tied to its input embedding by default). <h, e_item> is the LM's logit of the item
token at the end of the prompt, which the beam search's prefill has already computed
(`BeamSearchResult.prompt_logits`): re-ranking gathers one value per candidate and runs no
extra forward pass. The
item head's log-softmax normaliser is the same for every candidate of a request, so the raw
logit ranks exactly like the log-probability.
"""

from __future__ import annotations

import torch

from fast_path.vocab import FastVocab
from sid_index.errors import ConfigError


def item_head_logits(
    vocab: FastVocab, prompt_logits: torch.Tensor, items: torch.Tensor
) -> torch.Tensor:
    """(B, K) item-head logits of candidate catalogue indices `items` (B, K), read from the
    (B, V) next-token logits at the end of each prompt; 0 where `items` is -1 (padding)."""
    if not vocab.item_buckets:
        raise ConfigError("item-head re-ranking needs a fast model with item tokens")
    tokens = vocab.item_offset + items.clamp(min=0) % vocab.item_buckets
    logits = prompt_logits.float().gather(1, tokens)
    return torch.where(items >= 0, logits, torch.zeros_like(logits))


def rerank(
    items: torch.Tensor, scores: torch.Tensor, head_logits: torch.Tensor, weight: float, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of the candidates by `scores + weight * head_logits` (padding stays last).

    Returns:
        (B, k) items and their combined scores, best first (-1 / -inf in padded slots).
    """
    combined = torch.where(items >= 0, scores + weight * head_logits, float("-inf"))
    order = torch.argsort(combined, dim=1, descending=True, stable=True)[:, :k]
    return items.gather(1, order), combined.gather(1, order)
