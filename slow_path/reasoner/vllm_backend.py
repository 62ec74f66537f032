"""`VLLMReasoner`: the reasoner on an offline `vllm.LLM` (GPU; the `gpu` extra).

Two batched `LLM.generate` calls per batch of users, like the transformers backend:

1. thought (thinking mode): greedy, `max_tokens = max_think_tokens`, stopping at `</think>`,
   `<answer>` or eos; every row is closed with `</think><answer>` whatever stopped it.
2. answers: from prompt + thought + `</think><answer>`, SID-constrained by a custom logits
   processor (`AnswerConstraint`: only the trie's valid next SID tokens, then `</answer>`):
   one greedy completion — the text's answer — and, for `num_answers > 1`, `2·num_answers`
   seeded samples, deduplicated, ranked by their summed raw log-probabilities. (vLLM's beam
   search is a Python loop in the frontend, slow at wide beams, vllm #14426.) With prefix
   caching the second call re-reads the shared context from cache.

The logits processor follows vLLM's current interface, which is marked unstable: the Model
Runner V2 processor (`vllm.v1.worker.gpu.sample.logits_processor.LogitsProcessor`:
`add_request(slot, params)`, `apply(logits, ctx)` with the token history in
`req_states.all_token_ids`), and the V1 runner's (`vllm.v1.sample.logits_processor
.LogitsProcessor`: `update_state(BatchUpdate)`, `apply(logits)`) where V2 is off or absent.
Which one runs is decided by vLLM's own `VLLM_USE_V2_MODEL_RUNNER`. Requests opt in through
`SamplingParams.extra_args["reasonrec_sid"]`; the processor runs in vLLM's engine process, so
the arguments name the SID index directory and token ids rather than carrying the trie.

vLLM is imported only here; without it `BackendUnavailableError` says how to get it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from sid_index.codes import SemanticIDs, format_sid
from sid_index.errors import ConfigError
from sid_index.trie import SIDTrie
from slow_path.cot_format import ANSWER, ANSWER_END, THINK_END
from slow_path.reasoner.base import (
    BackendUnavailableError,
    ReasonerConfig,
    ReasonerOutput,
    ReasonRequest,
    build_prompt,
    check_requests,
    count_personas,
    persona_names,
)
from slow_path.reasoner.sid_constraint import (
    AnswerConstraint,
    AnswerTokens,
    ConstraintPlan,
    apply_plan,
)

if TYPE_CHECKING:
    from sid_index.sid_index import SIDIndex

log = logging.getLogger(__name__)

EXTRA_KEY = "reasonrec_sid"
"""`SamplingParams.extra_args` key that turns the SID constraint on for a request."""


# -- the constraint, as the engine process rebuilds it ---------------------------------------


def constraint_args(sid_index_dir: Path, tokens: AnswerTokens) -> dict[str, Any]:
    """The JSON-able `extra_args[EXTRA_KEY]` of a constrained request."""
    return {
        "sid_index": str(Path(sid_index_dir).resolve()),
        "offsets": list(tokens.sid_offsets),
        "think_end": tokens.think_end,
        "answer": tokens.answer,
        "answer_end": tokens.answer_end,
    }


def parse_constraint_args(args: Any) -> tuple[str, tuple[int, ...], int, int, int]:
    """Validate `extra_args[EXTRA_KEY]` (ValueError, as vLLM's `validate_params` expects)."""
    if not isinstance(args, Mapping):
        raise ValueError(f"extra_args[{EXTRA_KEY!r}] must be a mapping")
    try:
        path = str(args["sid_index"])
        offsets = tuple(int(o) for o in args["offsets"])
        ids = (int(args["think_end"]), int(args["answer"]), int(args["answer_end"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"extra_args[{EXTRA_KEY!r}] malformed: {exc}") from None
    if not offsets or min(offsets) < 0 or min(ids) < 0:
        raise ValueError(f"extra_args[{EXTRA_KEY!r}]: token ids must be >= 0")
    return (path, offsets, *ids)


@lru_cache(maxsize=4)
def load_constraint(
    path: str, offsets: tuple[int, ...], think_end: int, answer: int, answer_end: int
) -> AnswerConstraint:
    """The constraint of a SID index directory (codes.npy + level_sizes.json; no FAISS)."""
    directory = Path(path)
    codes = np.load(directory / "codes.npy", allow_pickle=False).astype(np.int32)
    sizes = tuple(int(s) for s in json.loads((directory / "level_sizes.json").read_text()))
    trie = SIDTrie.build(SemanticIDs(codes, sizes))
    return AnswerConstraint(trie, AnswerTokens(offsets, think_end, answer, answer_end))


def _constraint_of(params: Any) -> AnswerConstraint | None:
    extra = getattr(params, "extra_args", None) or {}
    args = extra.get(EXTRA_KEY)
    return None if args is None else load_constraint(*parse_constraint_args(args))


def _apply_groups(
    logits: torch.Tensor,
    rows: Sequence[int],
    constraints: Sequence[AnswerConstraint],
    windows: torch.Tensor,
) -> torch.Tensor:
    """Plan and mask per distinct constraint (one, in practice). windows: (R, L+1) CPU."""
    rows_t = torch.as_tensor(list(rows), dtype=torch.int64)
    for c in dict.fromkeys(constraints):
        sel = torch.tensor([i for i, ci in enumerate(constraints) if ci is c], dtype=torch.int64)
        plan = c.plan(windows[sel])
        apply_plan(logits, ConstraintPlan(rows_t[sel][plan.rows], plan.tokens))
    return logits


try:  # Model Runner V2 interface (vLLM >= 0.3x default)
    from vllm.v1.worker.gpu.sample.logits_processor import LogitsProcessor as _V2Base
except ImportError:  # pragma: no cover - depends on the installed vLLM
    _V2Base = None
try:  # V1 model runner interface
    from vllm.v1.sample.logits_processor import LogitsProcessor as _V1Base
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates
except ImportError:  # pragma: no cover - depends on the installed vLLM
    _V1Base = None


if _V2Base is not None:

    class SIDLogitsProcessorV2(_V2Base):
        """Model Runner V2 processor: per-slot constraint, windows from the token history."""

        def __init__(self, vllm_config: Any, req_states: Any) -> None:
            self.req_states = req_states
            self.slots: dict[int, AnswerConstraint] = {}

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            extra = getattr(sampling_params, "extra_args", None) or {}
            if EXTRA_KEY in extra:
                parse_constraint_args(extra[EXTRA_KEY])

        def add_request(self, req_idx: int, sampling_params: Any) -> bool:
            c = _constraint_of(sampling_params)
            if c is None:
                self.slots.pop(req_idx, None)  # a recycled slot: forget its last occupant
                return False
            self.slots[req_idx] = c
            return True

        def is_argmax_invariant(self) -> bool:  # older V2 containers still ask
            return False

        def apply(self, logits: torch.Tensor, ctx: Any) -> torch.Tensor:
            slots = np.asarray(ctx.idx_mapping_np)
            if logits.shape[0] != len(slots):
                raise RuntimeError(
                    "the reasonrec SID constraint does not support speculative decoding"
                )
            rows = [i for i, s in enumerate(slots.tolist()) if s in self.slots]
            if not rows:
                return logits
            constraints = [self.slots[int(slots[i])] for i in rows]
            width = constraints[0].window
            rows_t = torch.tensor(rows, device=logits.device)
            pos = ctx.pos[rows_t].long()  # (R,) position of each row's input token
            slot_t = ctx.expanded_idx_mapping[rows_t].long()
            idx = pos[:, None] + torch.arange(-width + 1, 1, device=pos.device)  # (R, W)
            hist = self.req_states.all_token_ids.gpu[slot_t[:, None], idx.clamp(min=0)].long()
            hist[:, -1] = ctx.input_ids[rows_t].long()  # this step's input token
            hist = torch.where(idx >= 0, hist, -1)
            return _apply_groups(logits, rows, constraints, hist.cpu())


if _V1Base is not None:

    class SIDLogitsProcessorV1(_V1Base):
        """V1 model runner processor: windows from the prompt and output token lists."""

        def __init__(self, vllm_config: Any, device: torch.device, is_pin_memory: bool) -> None:
            # batch index -> (constraint, prompt ids, live output ids list)
            self.reqs: dict[int, tuple[AnswerConstraint, list[int], list[int]]] = {}

        @classmethod
        def validate_params(cls, sampling_params: Any) -> None:
            extra = getattr(sampling_params, "extra_args", None) or {}
            if EXTRA_KEY in extra:
                parse_constraint_args(extra[EXTRA_KEY])

        def is_argmax_invariant(self) -> bool:
            return False

        def update_state(self, batch_update: Any) -> None:
            def new(params: Any, prompt: list[int] | None, output: list[int]) -> Any:
                c = _constraint_of(params)
                return None if c is None else (c, list(prompt or []), output)

            process_dict_updates(self.reqs, batch_update, new)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            if not self.reqs:
                return logits
            rows = sorted(self.reqs)
            constraints = [self.reqs[r][0] for r in rows]
            width = constraints[0].window
            windows = torch.full((len(rows), width), -1, dtype=torch.int64)
            for i, r in enumerate(rows):  # W tokens per row: a handful of list slices
                _, prompt, output = self.reqs[r]
                tail = (prompt[-width:] + output)[-width:]
                windows[i, width - len(tail) :] = torch.tensor(tail, dtype=torch.int64)
            return _apply_groups(logits, rows, constraints, windows)


# -- the backend ----------------------------------------------------------------------------


def _vllm() -> Any:
    try:
        import vllm
    except ImportError as exc:
        raise BackendUnavailableError(
            f"the vllm reasoner backend needs vLLM ({exc}); install the GPU extra "
            "(pip install 'reasonrec[gpu]') on a CUDA machine, or use --backend transformers"
        ) from None
    return vllm


def _processor_class(vllm: Any) -> type:
    use_v2 = bool(getattr(getattr(vllm, "envs", None), "VLLM_USE_V2_MODEL_RUNNER", True))
    if use_v2 and _V2Base is not None:
        return SIDLogitsProcessorV2
    if _V1Base is not None:
        return SIDLogitsProcessorV1
    raise BackendUnavailableError(f"vLLM {vllm.__version__}: no known logits-processor interface")


class VLLMReasoner:
    """Reasoner on an offline vLLM engine (see the module docstring)."""

    name = "vllm"

    def __init__(self, config: ReasonerConfig, index: SIDIndex) -> None:
        vllm = _vllm()
        from transformers import AutoTokenizer

        if config.release_dir is None:
            raise ConfigError("the vllm backend needs --release DIR (its sid_index/ and reasoner/)")
        model_dir = config.resolved_model_dir()
        self.config = config
        self.index = index
        self.level_sizes = tuple(int(s) for s in index.sids.level_sizes)
        self.model_version = config.model_version
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        vocab = self.tokenizer.get_vocab()
        self.tokens = AnswerTokens.from_vocab(vocab, self.level_sizes)
        self.num_personas = count_personas(vocab)
        self.persona_names = persona_names(config)
        self.extra = {EXTRA_KEY: constraint_args(config.release_dir / "sid_index", self.tokens)}
        self.llm = vllm.LLM(
            model=str(model_dir),
            tokenizer=str(model_dir),
            dtype=config.dtype,
            seed=config.seed,
            enable_prefix_caching=True,
            logits_processors=[_processor_class(vllm)],
        )
        self.sampling = vllm.SamplingParams
        eos = self.tokenizer.eos_token_id
        self.stop_ids = [self.tokens.think_end, self.tokens.answer] + ([] if eos is None else [eos])

    def _encode(self, requests: Sequence[ReasonRequest]) -> list[list[int]]:
        prompts = [build_prompt(self.index, r, self.config) for r in requests]
        head = [] if self.tokenizer.bos_token_id is None else [int(self.tokenizer.bos_token_id)]
        return [
            head + list(x) for x in self.tokenizer(prompts, add_special_tokens=False)["input_ids"]
        ]

    def reason(self, requests: Sequence[ReasonRequest]) -> list[ReasonerOutput]:
        check_requests(requests, len(self.index))
        cfg = self.config
        rows = self._encode(requests)
        thoughts: list[list[int]] = [[] for _ in rows]
        stopped = [False] * len(rows)
        if cfg.thinking:
            if cfg.max_think_tokens > 0:
                think = self.sampling(
                    temperature=0.0, max_tokens=cfg.max_think_tokens, stop_token_ids=self.stop_ids,
                    skip_special_tokens=False, detokenize=False,
                )  # fmt: skip
                outs = self.llm.generate(
                    [{"prompt_token_ids": r} for r in rows], think, use_tqdm=False
                )
                for i, o in enumerate(outs):
                    ids = list(o.outputs[0].token_ids)
                    cut = next((j for j, t in enumerate(ids) if t in self.stop_ids), None)
                    stopped[i] = cut is not None
                    thoughts[i] = ids if cut is None else ids[:cut]
            rows = [
                r + t + [self.tokens.think_end, self.tokens.answer]
                for r, t in zip(rows, thoughts, strict=True)
            ]
        answers = self._answers(rows)
        out = []
        for i, thought_ids in enumerate(thoughts):
            found, answer_tokens = answers[i]
            thought = str(self.tokenizer.decode(thought_ids, skip_special_tokens=False))
            head = thought + THINK_END + ANSWER if cfg.thinking else ""
            text = head + (format_sid(found[0][0]) + ANSWER_END if found else "")
            keep = found[: cfg.num_answers]
            n = len(thought_ids) + int(stopped[i]) + answer_tokens
            out.append(
                ReasonerOutput(text, tuple(s for s, _ in keep), tuple(x for _, x in keep), n)
            )
        return out

    def _answers(
        self, rows: list[list[int]]
    ) -> list[tuple[list[tuple[tuple[int, ...], float]], int]]:
        """Per row: distinct answers (SID, summed log-prob), the greedy one first, and the
        tokens generated for them."""
        cfg, num_levels = self.config, len(self.level_sizes)
        common = dict(
            max_tokens=num_levels + 1, stop_token_ids=[self.tokens.answer_end], logprobs=0,
            skip_special_tokens=False, detokenize=False, extra_args=self.extra,
        )  # fmt: skip
        prompts: list[dict[str, Any]] = []
        params = []
        for r in rows:
            prompts.append({"prompt_token_ids": r})
            params.append(self.sampling(temperature=0.0, **common))
            if cfg.num_answers > 1:
                prompts.append({"prompt_token_ids": r})
                params.append(
                    self.sampling(temperature=1.0, n=2 * cfg.num_answers, seed=cfg.seed, **common)
                )
        outs = iter(self.llm.generate(prompts, params, use_tqdm=False))
        offsets = np.asarray(self.tokens.sid_offsets)
        result = []
        for _ in rows:
            greedy = next(outs).outputs[0]
            samples = list(next(outs).outputs) if cfg.num_answers > 1 else []
            tokens = sum(len(c.token_ids) for c in [greedy, *samples])
            best: dict[tuple[int, ...], float] = {}
            for c in samples:
                sid = _sid(c.token_ids, offsets)
                if sid is not None:
                    best[sid] = max(best.get(sid, -np.inf), _score(c))
            first = _sid(greedy.token_ids, offsets)
            ranked = [] if first is None else [(first, _score(greedy))]
            ranked += sorted(((s, v) for s, v in best.items() if s != first), key=lambda kv: -kv[1])
            result.append((ranked, tokens))
        return result


def _sid(token_ids: Sequence[int], offsets: np.ndarray) -> tuple[int, ...] | None:
    """The SID of an answer completion's first L tokens (None when it is shorter)."""
    ids = np.asarray(token_ids[: len(offsets)], dtype=np.int64)
    return None if len(ids) != len(offsets) else tuple(int(x) for x in ids - offsets)


def _score(completion: Any) -> float:
    """Summed raw log-probability of a completion (0 when vLLM returned none)."""
    value = completion.cumulative_logprob
    return 0.0 if value is None or not np.isfinite(value) else float(value)
