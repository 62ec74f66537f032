"""Item-head re-ranking: logits of the candidates' item tokens after the prompt, and the
re-ranked top-k."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fast_path.fast_model import FastModelConfig, build_model
from fast_path.item_head import item_head_logits, rerank
from fast_path.model_step import HFModelStep, SharedPrefixStep
from fast_path.prompt import encode, left_pad
from fast_path.vocab import FastVocab
from sid_index.errors import ConfigError


def _model(vocab: FastVocab) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = FastModelConfig(
        hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_size=32,
        max_positions=64,
    )  # fmt: skip
    return build_model(vocab, cfg).eval()


@pytest.mark.parametrize("adapter", [HFModelStep, SharedPrefixStep])
def test_item_head_logits_come_from_the_prefill_logits_of_the_item_tokens(adapter: type) -> None:
    """The beam search's prefill logits at the end of each (left-padded) prompt hold the item
    head's logits: gathered per candidate they equal the full model's item-token logits."""
    vocab = FastVocab(level_sizes=(4, 3), num_personas=2, item_buckets=5)
    model = _model(vocab)
    codes = np.array([[1, 2], [3, 0], [0, 1]])
    ids, mask = left_pad(
        [encode(vocab, codes, items=np.array([0, 6, 2])), encode(vocab, codes[:1], items=[4])]
    )
    items = torch.tensor([[0, 6, -1], [4, 3, 2]])
    with torch.inference_mode():
        prompt_logits, _ = adapter(model).prefill(ids, mask)
        got = item_head_logits(vocab, prompt_logits, items)
        rows = [model(input_ids=ids[b : b + 1, mask[b].bool()]).logits[0, -1] for b in range(2)]
    full = torch.stack(rows)  # each prompt alone, no padding
    want = full[torch.arange(2)[:, None], vocab.item_offset + items.clamp(min=0) % 5]
    torch.testing.assert_close(got[0, :2], want[0, :2], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)
    assert got[0, 2] == 0.0  # padding slot
    with pytest.raises(ConfigError, match="item tokens"):
        item_head_logits(FastVocab(level_sizes=(4, 3)), prompt_logits, items)


def test_rerank_orders_by_the_combined_score_and_keeps_padding_last() -> None:
    items = torch.tensor([[7, 3, 9, -1], [1, 2, -1, -1]])
    inf = float("-inf")
    scores = torch.tensor([[-1.0, -2.0, -3.0, inf], [-1.0, -1.5, inf, inf]])
    head = torch.tensor([[0.0, 2.0, 0.5, 0.0], [0.0, 0.0, 0.0, 0.0]])
    top, combined = rerank(items, scores, head, weight=1.0, k=3)
    assert top.tolist() == [[3, 7, 9], [1, 2, -1]]
    torch.testing.assert_close(combined[0], torch.tensor([0.0, -1.0, -2.5]))
    assert combined[1, 2] == float("-inf")
    # weight 0: the beam's own order
    assert rerank(items, scores, head, weight=0.0, k=2)[0].tolist() == [[7, 3], [1, 2]]
