"""The reasoner's network: a base causal LM (a local HF directory or a `scratch:*` Llama-style
config) whose vocabulary is extended with the CoT format's tokens.

A reasoner directory is an HF `save_pretrained` directory (safetensors) plus the tokenizer
files and `reasoner_vocab.json`, so transformers and vLLM both load it; it is what a release's
`reasoner/` part holds and what every training stage reads and writes.

New-row initialisation when a base model's vocabulary is extended (old rows never change):
- SID token `(level, code)`: the mean, over the catalogue items whose SID has `code` at
  `level`, of the mean input embedding of the item title's tokens — so `<a_12>` starts near
  the words of the items it groups, which the alignment warm-up then refines;
- markers, persona tokens and SID codes that no item uses: the mean of the base model's rows;
- an untied `lm_head` gets the same treatment from its own rows.
`scratch:*` models are trained from random initialisation with the full vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import numpy as np
import torch
from transformers import (
    AutoModelForCausalLM,
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from sid_index.errors import ConfigError, ReleaseError
from trainer.reasoner.tokenizer import (
    VOCAB_FILE,
    ReasonerVocab,
    build_scratch_tokenizer,
    extend_tokenizer,
    load_tokenizer,
    save_tokenizer,
)

SCRATCH_PREFIX = "scratch:"


@dataclass(frozen=True, slots=True)
class ScratchArch:
    """A from-scratch Llama-style architecture."""

    num_layers: int = 4
    """Decoder blocks."""
    hidden_size: int = 256
    """Width of the residual stream."""
    num_heads: int = 4
    """Attention heads (must divide hidden_size)."""
    num_kv_heads: int = 4
    """Key/value heads (grouped-query attention when < num_heads)."""
    intermediate_size: int = 704
    """SwiGLU MLP width."""
    max_positions: int = 1024
    """Longest prompt + completion in tokens."""
    bpe_vocab_size: int = 4096
    """BPE vocabulary trained on the corpus (the format tokens come on top)."""
    tie_embeddings: bool = True
    """Share input and output embeddings (SID tokens are both read and written)."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{self.hidden_size=} must be divisible by {self.num_heads=}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{self.num_heads=} must be divisible by {self.num_kv_heads=}")
        if min(self.num_layers, self.intermediate_size, self.max_positions) < 1:
            raise ConfigError("num_layers, intermediate_size and max_positions must be >= 1")


SCRATCH_SIZES: dict[str, ScratchArch] = {
    # ~4M parameters without embeddings: trains in minutes on a 2-core CPU.
    "tiny": ScratchArch(),
    # ~25M parameters without embeddings: a GPU-sized smoke model.
    "small": ScratchArch(
        num_layers=8, hidden_size=512, num_heads=8, num_kv_heads=8, intermediate_size=1408,
        bpe_vocab_size=8192,
    ),
}  # fmt: skip


@dataclass(slots=True)
class Reasoner:
    """A reasoner: network, tokenizer and the layout of the format tokens in its vocabulary."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    vocab: ReasonerVocab

    def save(self, directory: Path) -> None:
        """Write a self-contained reasoner directory (model, tokenizer, vocabulary layout)."""
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)
        save_tokenizer(directory, self.tokenizer, self.vocab)


def input_matrix(model: PreTrainedModel) -> torch.nn.Parameter:
    """The (V, H) input embedding matrix."""
    return cast(torch.nn.Parameter, model.get_input_embeddings().weight)


def output_matrix(model: PreTrainedModel) -> torch.nn.Parameter | None:
    """The (V, H) `lm_head` matrix (the input matrix itself when tied), or None."""
    head = model.get_output_embeddings()
    return None if head is None else cast(torch.nn.Parameter, head.weight)


def is_reasoner_dir(path: Path) -> bool:
    """True when `path` holds a reasoner written by `Reasoner.save` (or a checkpoint)."""
    return (path / VOCAB_FILE).is_file() and (path / "config.json").is_file()


def load_reasoner(
    directory: Path, *, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32
) -> Reasoner:
    """Load a reasoner directory (a release's `reasoner/` part or a stage's output)."""
    directory = Path(directory)
    if not is_reasoner_dir(directory):
        raise ReleaseError(f"{directory} is not a reasoner directory (config.json, {VOCAB_FILE})")
    tokenizer, vocab = load_tokenizer(directory)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
    if input_matrix(model).shape[0] < vocab.vocab_size:
        raise ReleaseError(f"{directory}: the model's embedding is smaller than its tokenizer")
    cast(torch.nn.Module, model).to(device)  # HF types .to() oddly
    return Reasoner(model, tokenizer, vocab)


def _deterministic_generation_config(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> None:
    # A base model's generation_config.json can turn on sampling and break constrained beams.
    model.generation_config = GenerationConfig(
        do_sample=False,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )


def build_scratch(
    arch: ScratchArch,
    texts: Sequence[str],
    level_sizes: Sequence[int],
    num_personas: int,
    *,
    seed: int = 0,
) -> Reasoner:
    """Train a BPE tokenizer on `texts`, add the format tokens, build a random Llama model."""
    tokenizer, vocab = build_scratch_tokenizer(
        texts, arch.bpe_vocab_size, level_sizes, num_personas
    )
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=arch.hidden_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_kv_heads,
        intermediate_size=arch.intermediate_size,
        max_position_embeddings=arch.max_positions,
        tie_word_embeddings=arch.tie_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init without touching the global RNG
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    _deterministic_generation_config(model, tokenizer)
    # A fresh BPE has none of the format tokens, so all of them are new rows (the warm-up
    # phase trains them against the random backbone).
    return Reasoner(model, tokenizer, vocab)


def extend_base_model(
    directory: Path,
    level_sizes: Sequence[int],
    num_personas: int,
    *,
    sid_codes: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float32,
) -> Reasoner:
    """Load a local HF causal LM + tokenizer, add the format tokens and grow its embeddings.

    Args:
        directory: an HF model directory with tokenizer files (no hub access here).
        sid_codes: (N, L) catalogue SID codes and `titles` (N,) item titles; when given, SID
            token rows start from the mean title embedding of their items (see module doc).
    """
    from transformers import AutoTokenizer

    directory = Path(directory)
    if not (directory / "config.json").is_file():
        raise ReleaseError(f"--base-model {directory}: not an HF model directory (no config.json)")
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(directory, local_files_only=True, dtype=dtype)
    old_rows = input_matrix(model).shape[0]
    base_len = len(tokenizer)
    vocab = extend_tokenizer(tokenizer, level_sizes, num_personas)
    # Padded vocabularies (Qwen) already have spare rows; never shrink them.
    model.resize_token_embeddings(max(len(tokenizer), old_rows), mean_resizing=False)
    _init_new_rows(model, tokenizer, vocab, min(base_len, old_rows), sid_codes, titles)
    model.config.vocab_size = input_matrix(model).shape[0]
    _deterministic_generation_config(model, tokenizer)
    return Reasoner(model, tokenizer, vocab)


@torch.no_grad()
def _init_new_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    vocab: ReasonerVocab,
    trained_rows: int,
    sid_codes: np.ndarray | None,
    titles: Sequence[str] | None,
) -> None:
    new = torch.from_numpy(vocab.new_token_mask(input_matrix(model).shape[0]))
    title_ids: list[list[int]] | None = None
    if sid_codes is not None and titles is not None:
        title_ids = [tokenizer.encode(t, add_special_tokens=False) for t in titles]
    matrices = [input_matrix(model)]
    out = output_matrix(model)
    if out is not None and out.data_ptr() != matrices[0].data_ptr():
        matrices.append(out)
    for weight in matrices:
        mean = weight[:trained_rows].float().mean(dim=0)  # (H,)
        weight[new] = mean.to(weight.dtype)
        if title_ids is not None and sid_codes is not None:
            _init_sid_rows(weight, vocab, sid_codes, title_ids, mean)


def _init_sid_rows(
    weight: torch.Tensor,
    vocab: ReasonerVocab,
    sid_codes: np.ndarray,
    title_ids: list[list[int]],
    fallback: torch.Tensor,
) -> None:
    """Overwrite SID rows with the mean of their items' mean title-token embeddings."""
    lengths = torch.tensor([max(1, len(t)) for t in title_ids])  # (N,)
    flat = torch.tensor([i for t in title_ids for i in t], dtype=torch.int64)
    owner = torch.repeat_interleave(
        torch.arange(len(title_ids)), torch.tensor([len(t) for t in title_ids])
    )
    item_vec = torch.zeros(len(title_ids), weight.shape[1])  # (N, H)
    item_vec.index_add_(0, owner, weight[flat].float())
    item_vec /= lengths[:, None]
    codes = torch.from_numpy(np.asarray(sid_codes, dtype=np.int64))  # (N, L)
    for level, size in enumerate(vocab.level_sizes):
        sums = torch.zeros(size, weight.shape[1])
        counts = torch.zeros(size)
        sums.index_add_(0, codes[:, level], item_vec)
        counts.index_add_(0, codes[:, level], torch.ones(len(title_ids)))
        rows = torch.where(counts[:, None] > 0, sums / counts.clamp(min=1)[:, None], fallback)
        lo = vocab.sid_offsets[level]
        weight[lo : lo + size] = rows.to(weight.dtype)


def prepare_reasoner(
    base: str | ScratchArch,
    level_sizes: Sequence[int],
    num_personas: int,
    *,
    corpus_texts: Sequence[str] = (),
    sid_codes: np.ndarray | None = None,
    titles: Sequence[str] | None = None,
    seed: int = 0,
) -> Reasoner:
    """The starting point of the alignment stage.

    Args:
        base: "scratch:tiny" | "scratch:small" | a `ScratchArch` | a local HF model directory
            (an existing reasoner directory is loaded as is, after checking its layout).
        corpus_texts: texts the scratch BPE is trained on (catalogue text + CoT corpus).
        sid_codes, titles: catalogue SIDs and titles for the SID-row initialisation.
    """
    if isinstance(base, ScratchArch) or base.startswith(SCRATCH_PREFIX):
        if isinstance(base, str):
            size = base[len(SCRATCH_PREFIX) :]
            if size not in SCRATCH_SIZES:
                raise ConfigError(
                    f"unknown scratch size {base!r}; choose from {sorted(SCRATCH_SIZES)}"
                )
            base = SCRATCH_SIZES[size]
        if not corpus_texts:
            raise ConfigError("a scratch reasoner needs corpus_texts to train its tokenizer on")
        return build_scratch(base, corpus_texts, level_sizes, num_personas, seed=seed)
    path = Path(base)
    if is_reasoner_dir(path):
        reasoner = load_reasoner(path)
        if reasoner.vocab.level_sizes != tuple(level_sizes):
            raise ConfigError(
                f"reasoner {path} was built for SID levels {reasoner.vocab.level_sizes}, "
                f"the index has {tuple(level_sizes)}"
            )
        return reasoner
    return extend_base_model(path, level_sizes, num_personas, sid_codes=sid_codes, titles=titles)
