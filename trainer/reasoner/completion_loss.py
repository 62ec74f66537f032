"""Completion-only causal-LM loss.

Only the positions that carry loss go through `lm_head`: with SFT prompts much longer than
their completions and base vocabularies of 150k tokens, that saves most of the logits memory
and compute. The LM is wrapped in this module so DDP sees one forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from trainer.reasoner.sft_data import IGNORE, Batch


class CompletionLoss(nn.Module):
    """Sum of cross-entropy over loss positions; wraps the LM so DDP sees one forward."""

    def __init__(self, lm: PreTrainedModel) -> None:
        super().__init__()
        self.lm = lm
        cfg = lm.config
        # Heads that rescale logits after lm_head (soft-capping, logit_scale) need the model's
        # own forward; Llama/Qwen/Mistral families take the cheap path.
        self._full_forward = bool(getattr(cfg, "final_logit_softcapping", None)) or (
            getattr(cfg, "logit_scale", 1.0) not in (None, 1.0)
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        target = batch.labels[:, 1:]  # (B, T-1)
        keep = target != IGNORE
        if self._full_forward:
            logits = self.lm(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            ).logits[:, :-1][keep]
        else:
            hidden = self.lm.get_decoder()(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                position_ids=batch.position_ids,
                use_cache=False,
            ).last_hidden_state  # (B, T, H)
            logits = self.lm.get_output_embeddings()(hidden[:, :-1][keep])  # (N, V)
        return F.cross_entropy(logits.float(), target[keep], reduction="sum")
