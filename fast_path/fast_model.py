"""The fast model: a small decoder-only transformer over SID, persona and interest tokens.

It is a plain Hugging Face causal LM (Llama or Qwen2 architecture) saved with
`save_pretrained` (safetensors), so transformers and vLLM can both load it. The trainer builds
and trains it (`trainer/fast_trainer.py`); the fast path only loads it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from fast_path.vocab import BOS, EOS, PAD, FastVocab
from sid_index.errors import ConfigError, ReleaseError

ARCH_FILE = "fast_model.json"


@dataclass(frozen=True, slots=True)
class FastModelConfig:
    """Architecture of the fast model."""

    arch: str = "llama"
    """"llama" or "qwen2" (both load in transformers and vLLM)."""
    hidden_size: int = 256
    """Width of the residual stream."""
    num_layers: int = 4
    """Number of decoder blocks."""
    num_heads: int = 4
    """Attention heads (hidden_size must divide evenly)."""
    num_kv_heads: int = 4
    """Key/value heads (grouped-query attention when < num_heads)."""
    intermediate_size: int = 768
    """Width of the MLP."""
    max_positions: int = 512
    """Longest prompt + answer in tokens (history items x levels + trace + answer)."""
    dropout: float = 0.1
    """Attention dropout during training."""
    tie_embeddings: bool = True
    """Share input and output embeddings (SID tokens are both read and written)."""

    def __post_init__(self) -> None:
        if self.arch not in ("llama", "qwen2"):
            raise ConfigError(f"{self.arch=} must be 'llama' or 'qwen2'")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{self.hidden_size=} must be divisible by {self.num_heads=}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(f"{self.num_heads=} must be divisible by {self.num_kv_heads=}")
        if min(self.num_layers, self.intermediate_size, self.max_positions) < 1:
            raise ConfigError("num_layers, intermediate_size and max_positions must be >= 1")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{self.dropout=} must be in [0, 1)")


def build_model(vocab: FastVocab, config: FastModelConfig) -> PreTrainedModel:
    """A freshly initialised fast model for `vocab`."""
    common: dict[str, Any] = dict(
        vocab_size=vocab.size,
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_kv_heads,
        intermediate_size=config.intermediate_size,
        max_position_embeddings=config.max_positions,
        attention_dropout=config.dropout,
        tie_word_embeddings=config.tie_embeddings,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    if config.arch == "llama":
        model: PreTrainedModel = LlamaForCausalLM(LlamaConfig(**common))
    else:
        model = Qwen2ForCausalLM(Qwen2Config(**common))
    # Deterministic decoding defaults, so no generation_config.json can turn on sampling.
    model.generation_config = GenerationConfig(
        do_sample=False, pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS
    )
    return model


@dataclass(slots=True)
class FastModel:
    """A loaded fast model: the network, its vocabulary and architecture."""

    model: PreTrainedModel
    vocab: FastVocab
    config: FastModelConfig

    def save(self, directory: Path) -> None:
        """Write an HF `save_pretrained` directory plus the vocab and architecture files."""
        directory.mkdir(parents=True, exist_ok=True)
        self.model.save_pretrained(directory, safe_serialization=True)
        self.vocab.save(directory)
        (directory / ARCH_FILE).write_text(json.dumps(asdict(self.config), indent=2))

    @classmethod
    def load(cls, directory: Path, device: str | torch.device = "cpu") -> FastModel:
        """Load a fast model directory (e.g. `release/fast_model`) in eval mode."""
        if not (directory / ARCH_FILE).is_file():
            raise ReleaseError(f"{directory} is not a fast model directory (no {ARCH_FILE})")
        config = FastModelConfig(**json.loads((directory / ARCH_FILE).read_text()))
        vocab = FastVocab.load(directory)
        model_cls = LlamaForCausalLM if config.arch == "llama" else Qwen2ForCausalLM
        model = model_cls.from_pretrained(directory, local_files_only=True)
        model.to(device).eval()  # type: ignore[arg-type]
        return cls(model=model, vocab=vocab, config=config)
