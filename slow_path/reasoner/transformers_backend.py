"""`TransformersReasoner`: the reasoner on plain transformers, CPU or GPU.

Per batch of users (left-padded, batch-first), two phases with the shared decoding primitives
of `slow_path.reasoner.decoding` (the trainer's evaluation decodes with the same ones):

1. thought (thinking mode): `decoding.complete`, greedy, KV-cached, until a row writes
   `</think>`, `<answer>` or eos, or reaches the thinking budget `max_think_tokens`. Every row
   is then closed the same way, thought + `</think><answer>`, whatever stopped it. Greedy is
   explicit here, so a model's `generation_config.json` cannot switch sampling on.
2. answers: `decoding.beam_answers`, trie-constrained beam search over the SID tokens
   (`fast_path.beam_search`, KV-cached, context prefilled once per user): exactly L steps,
   only prefixes of catalogue items, the top `num_answers` items with summed
   log-probabilities. The text's answer is the best of them.

Non-thinking prompts end with `<answer>` and go straight to phase 2.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from fast_path.beam_search import BeamSearchConfig
from fast_path.model_step import ModelStep
from sid_index.codes import format_sid
from sid_index.errors import ConfigError, ReleaseError
from slow_path.cot_format import ANSWER, ANSWER_END, THINK_END
from slow_path.reasoner.base import (
    ReasonerConfig,
    ReasonerOutput,
    ReasonRequest,
    build_prompt,
    check_requests,
    count_personas,
    persona_names,
)
from slow_path.reasoner.decoding import beam_answers, complete, model_step_for
from slow_path.reasoner.sid_constraint import AnswerTokens

if TYPE_CHECKING:
    from sid_index.sid_index import SIDIndex

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TransformersReasoner:
    """Reasoner on a transformers causal LM (see the module docstring)."""

    name = "transformers"

    def __init__(
        self,
        config: ReasonerConfig,
        index: SIDIndex,
        *,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        """Args:
        config: backend settings; the model loads from `config.resolved_model_dir()` unless
            `model` and `tokenizer` are given (tests, benchmarks).
        index: the release's SID index (answers are leaves of its trie).
        """
        if (model is None) != (tokenizer is None):
            raise ConfigError("pass both model and tokenizer, or neither")
        if model is None:
            model, tokenizer = _load(config)
        self.config = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.index = index
        self.trie = index.trie
        self.level_sizes = tuple(int(s) for s in index.sids.level_sizes)
        self.model_version = config.model_version
        vocab = tokenizer.get_vocab()
        self.tokens = AnswerTokens.from_vocab(vocab, self.level_sizes)
        self.num_personas = count_personas(vocab)
        self.persona_names = persona_names(config)
        if tokenizer.pad_token_id is None:
            raise ReleaseError("the reasoner's tokenizer has no pad token (nor an eos to pad with)")
        self.offsets = torch.tensor(self.tokens.sid_offsets, dtype=torch.int64)
        self.step: ModelStep[Any] = model_step_for(self.model)
        eos = [] if tokenizer.eos_token_id is None else [int(tokenizer.eos_token_id)]
        self.stop_ids = [self.tokens.think_end, self.tokens.answer, *eos]

    def reason(self, requests: Sequence[ReasonRequest]) -> list[ReasonerOutput]:
        check_requests(requests, self.trie.num_items)
        out: list[ReasonerOutput] = []
        for lo in range(0, len(requests), self.config.batch_size):
            out += self._batch(requests[lo : lo + self.config.batch_size])
        return out

    def _encode(self, requests: Sequence[ReasonRequest]) -> list[list[int]]:
        """`bos + prompt` token ids per request, as the reasoner is trained."""
        prompts = [build_prompt(self.index, r, self.config) for r in requests]
        head = [] if self.tokenizer.bos_token_id is None else [int(self.tokenizer.bos_token_id)]
        ids = self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        return [head + list(x) for x in ids]

    @torch.inference_mode()
    def _batch(self, requests: Sequence[ReasonRequest]) -> list[ReasonerOutput]:
        rows = self._encode(requests)
        cfg = self.config
        thoughts: list[list[int]] = [[] for _ in rows]
        stopped = [False] * len(rows)
        if cfg.thinking:
            if cfg.max_think_tokens > 0:
                thoughts, cut = complete(
                    self.model, self.tokenizer, rows, max_new_tokens=cfg.max_think_tokens,
                    stop_ids=self.stop_ids,
                )  # fmt: skip
                stopped = [not c for c in cut]
            close = [self.tokens.think_end, self.tokens.answer]
            rows = [r + t + close for r, t in zip(rows, thoughts, strict=True)]
        k = max(1, cfg.num_answers)
        found_items, found_sids, found_scores = beam_answers(
            self.model, self.tokenizer, rows, trie=self.trie, offsets=self.offsets,
            step=self.step, config=BeamSearchConfig(k, k),
        )  # fmt: skip
        sids = found_sids.tolist()  # (B, K, L)
        scores = found_scores.tolist()  # (B, K)
        items = found_items.tolist()  # (B, K)
        out = []
        for i, thought_ids in enumerate(thoughts):
            found = [
                (tuple(s), sc)
                for s, sc, it in zip(sids[i], scores[i], items[i], strict=True)
                if it >= 0
            ]
            thought = self.tokenizer.decode(thought_ids, skip_special_tokens=False)
            head = thought + THINK_END + ANSWER if cfg.thinking else ""
            answer = format_sid(found[0][0]) + ANSWER_END if found else ""
            keep = found[: cfg.num_answers]
            # Generated: the thought, its stop token (when the model wrote one), the L codes.
            n = len(thought_ids) + int(stopped[i]) + (self.trie.num_levels if found else 0)
            out.append(
                ReasonerOutput(
                    head + answer, tuple(s for s, _ in keep), tuple(sc for _, sc in keep), n
                )
            )
        return out


def _load(config: ReasonerConfig) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory = config.resolved_model_dir()
    if not (directory / "config.json").is_file():
        raise ReleaseError(f"{directory} is not a reasoner model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        directory, local_files_only=True, dtype=_DTYPES[config.dtype]
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    embedding: Any = model.get_input_embeddings().weight
    if len(tokenizer) > embedding.shape[0]:
        raise ReleaseError(f"{directory}: the model's embedding is smaller than its tokenizer")
    return model, tokenizer
