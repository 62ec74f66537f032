"""Item-head re-ranking: the fast model's SID beam, re-scored with its own item-token head.

A fast model trained with item tokens and an item-head loss (`train fast --item-tokens all
--item-loss-weight W`) predicts the next item two ways from the same hidden state at the end
of the prompt: its SID tokens, level by level (what the constrained beam search decodes), and
its item token, through the tied item-token embeddings (a SASRec-style full-softmax head).
The beam search proposes candidates; each is re-scored as

    score = log p_SID(item) + weight · <h, e_item>

where h is the last prompt position's hidden state and e_item the item token's embedding.
The item head's log-softmax normaliser is the same for every candidate of a request, so the
raw logit ranks exactly like the log-probability — and only the beam's B candidate rows are
gathered (O(B·d) per request, at any catalogue size). The hidden state costs one more
forward pass over the prompt (the beam search's prefill does not return it).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from fast_path.vocab import FastVocab
from sid_index.errors import ConfigError


def item_head_logits(
    model: PreTrainedModel,
    vocab: FastVocab,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    items: torch.Tensor,
) -> torch.Tensor:
    """(B, K) item-head logits of candidate catalogue indices `items` (B, K) after each
    left-padded prompt; 0 where `items` is -1 (padding)."""
    if not vocab.item_buckets:
        raise ConfigError("item-head re-ranking needs a fast model with item tokens")
    # Positions count real tokens only, as in the beam search's prefill (left padding).
    positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    hidden = model.get_decoder()(
        input_ids=input_ids, attention_mask=attention_mask, position_ids=positions
    )
    h = hidden.last_hidden_state[:, -1]  # left padding: the last column is the prompt's end
    tokens = vocab.item_offset + items.clamp(min=0) % vocab.item_buckets
    emb = model.get_output_embeddings().weight[tokens]  # (B, K, d)
    logits = torch.einsum("bkd,bd->bk", emb.float(), h.float())
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
