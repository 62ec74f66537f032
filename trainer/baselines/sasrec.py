"""SASRec (Kang & McAuley, 2018): a self-attentive sequential recommender over item ids.

The architecture follows the paper: item embeddings scaled by sqrt(d) plus learned positional
embeddings, dropout, `num_layers` causal self-attention blocks — each sub-layer as in the
paper's eq. `x + Dropout(f(LayerNorm(x)))` (pre-LN; `norm_first=False` gives the post-LN
`LayerNorm(x + Dropout(f(x)))` of the original Transformer) — a final LayerNorm, and scores
as dot products with the same item embedding table (tied). Unlike the paper, it is trained
with full-softmax cross-entropy over the whole catalogue (see `train_sasrec.py`), which is
a much stronger baseline than BCE with one sampled negative.

Item ids are shifted by one inside the model: token 0 is padding, token `i + 1` is catalogue
item `i`. Public inputs and outputs use catalogue indices; `encode_items` does the shift.
Persistence is safetensors + a JSON config (no pickle).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from sid_index.errors import ConfigError, DataError

PAD = 0
"""Token of an empty (left-padding) position."""
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


@dataclass(frozen=True, slots=True)
class SASRecConfig:
    """Architecture of a SASRec model (the catalogue size is passed separately)."""

    hidden_size: int = 64
    """Width d of embeddings and every block."""
    num_layers: int = 2
    """Number of self-attention blocks."""
    num_heads: int = 1
    """Attention heads per block (the paper uses 1); must divide hidden_size."""
    max_len: int = 50
    """Longest history the model reads; longer histories keep their most recent items."""
    dropout: float = 0.2
    """Dropout on embeddings, attention weights and every residual branch."""
    ffn_mult: int = 1
    """Feed-forward inner width = ffn_mult × hidden_size (the paper uses 1)."""
    norm_first: bool = True
    """Pre-LN residual blocks as in the paper's eq.; False gives post-LN blocks."""

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "max_len", "ffn_mult"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"{self.hidden_size=} must be divisible by {self.num_heads=}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{self.dropout=} must be in [0, 1)")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention where a position sees itself and earlier non-pad positions."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.proj = nn.Linear(config.hidden_size, config.hidden_size)
        self.attn_dropout = config.dropout

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d); allowed: (B, 1, T, T) bool, True where a query may attend a key."""
        B, T, d = x.shape
        q, k, v = self.qkv(x).split(d, dim=2)
        # (B, nh, T, hs)
        q = q.view(B, T, self.num_heads, d // self.num_heads).transpose(1, 2)
        k = k.view(B, T, self.num_heads, d // self.num_heads).transpose(1, 2)
        v = v.view(B, T, self.num_heads, d // self.num_heads).transpose(1, 2)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, dropout_p=self.attn_dropout if self.training else 0.0
        )  # (B, nh, T, hs)
        return self.proj(y.transpose(1, 2).reshape(B, T, d))


class FeedForward(nn.Module):
    """Position-wise two-layer MLP (the paper's point-wise FFN; GELU instead of ReLU)."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        inner = config.ffn_mult * config.hidden_size
        self.fc = nn.Linear(config.hidden_size, inner)
        self.out = nn.Linear(inner, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(F.gelu(self.fc(x))))


class Block(nn.Module):
    """Attention + feed-forward sub-layers, each with a residual, dropout and LayerNorm."""

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.norm_first = config.norm_first
        self.ln1 = nn.LayerNorm(config.hidden_size)
        self.attn = CausalSelfAttention(config)
        self.ln2 = nn.LayerNorm(config.hidden_size)
        self.ffn = FeedForward(config)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """x: (B, T, d) → (B, T, d)."""
        if self.norm_first:
            x = x + self.dropout(self.attn(self.ln1(x), allowed))
            return x + self.dropout(self.ffn(self.ln2(x)))
        x = self.ln1(x + self.dropout(self.attn(x, allowed)))
        return self.ln2(x + self.dropout(self.ffn(x)))


class SASRec(nn.Module):
    """Causal transformer over item tokens with tied input/output item embeddings."""

    def __init__(self, config: SASRecConfig, num_items: int) -> None:
        super().__init__()
        if num_items < 1:
            raise ConfigError(f"{num_items=} must be >= 1")
        self.config = config
        self.num_items = num_items
        d = config.hidden_size
        self.item_emb = nn.Embedding(num_items + 1, d, padding_idx=PAD)
        self.pos_emb = nn.Embedding(config.max_len, d)
        self.emb_dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        # Pre-LN blocks leave the residual stream un-normalized: normalize once at the end.
        self.ln_f = nn.LayerNorm(d) if config.norm_first else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states of every position.

        Args:
            tokens: (B, T) int64 shifted item tokens (0 = pad), left-padded, T <= max_len.
        Returns:
            (B, T, d); position t summarizes tokens[:, : t + 1].
        """
        length = tokens.shape[1]  # T
        if length > self.config.max_len:
            raise DataError(f"sequence length {length} exceeds max_len={self.config.max_len}")
        # Positions count back from the most recent item so the last position always has the
        # same embedding, whatever the padding.
        pos = torch.arange(self.config.max_len - length, self.config.max_len, device=tokens.device)
        x = self.item_emb(tokens) * math.sqrt(self.config.hidden_size) + self.pos_emb(pos)
        keep = (tokens != PAD).unsqueeze(-1)  # (B, T, 1)
        x = self.emb_dropout(x) * keep
        # A query sees earlier non-pad keys and always itself, so pad rows never go all -inf
        # (their outputs are garbage but are never scored or trained on).
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        eye = torch.eye(length, dtype=torch.bool, device=tokens.device)
        allowed = (causal & (tokens != PAD)[:, None, :]) | eye  # (B, T, T)
        allowed = allowed.unsqueeze(1)  # (B, 1, T, T), broadcast over heads
        for block in self.blocks:
            x = block(x, allowed) * keep
        return self.ln_f(x)

    def item_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Scores of every catalogue item: (..., d) → (..., num_items), column i = item i."""
        return hidden @ self.item_emb.weight[1:].T

    @torch.no_grad()
    def recommend(
        self, tokens: torch.Tensor, k: int, *, exclude_seen: bool = False
    ) -> torch.Tensor:
        """Top-k catalogue items after each history, ranked over the full catalogue.

        Args:
            tokens: (B, T) int64 shifted tokens, left-padded (the last column is the most
                recent item).
            k: list length (<= num_items).
            exclude_seen: drop items already in the history from the ranking.
        Returns:
            (B, k) int64 catalogue indices, best first.
        """
        if not 1 <= k <= self.num_items:
            raise ConfigError(f"{k=} must be in [1, {self.num_items=}]")
        scores = self.item_logits(self.forward(tokens)[:, -1])  # (B, N)
        if exclude_seen:
            # Scatter -inf over (B, N + 1) so pad tokens land in a dropped column 0.
            padded = F.pad(scores, (1, 0))
            padded.scatter_(1, tokens, float("-inf"))
            scores = padded[:, 1:]
        return scores.topk(k, dim=1).indices


def encode_items(
    items: np.ndarray, starts: np.ndarray, ends: np.ndarray, max_len: int
) -> np.ndarray:
    """Left-padded, left-truncated token matrix of item ranges (vectorized, no row loop).

    Args:
        items: (nnz,) int64 catalogue indices.
        starts: (R,) int64 first offset into `items` of each row's history.
        ends: (R,) int64 exclusive end offset of each row's history.
        max_len: width T of the output; a longer history keeps its last T items.
    Returns:
        (R, T) int64 tokens (item + 1; 0 = pad), most recent item in the last column.
    """
    starts = np.asarray(starts, dtype=np.int64)
    ends = np.asarray(ends, dtype=np.int64)
    idx = ends[:, None] - max_len + np.arange(max_len)[None, :]  # (R, T) offsets into items
    valid = idx >= starts[:, None]
    if not len(items):
        return np.zeros((len(starts), max_len), dtype=np.int64)
    tokens = np.where(valid, items[np.clip(idx, 0, len(items) - 1)] + 1, PAD)
    return tokens.astype(np.int64, copy=False)


def save_sasrec(model: SASRec, out_dir: Path | str) -> Path:
    """Write `model.safetensors` and `config.json` into `out_dir`; returns the directory."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out / WEIGHTS_NAME))
    meta = {"model_type": "sasrec", "num_items": model.num_items, **asdict(model.config)}
    (out / CONFIG_NAME).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return out


def load_sasrec(model_dir: Path | str) -> SASRec:
    """Load a model written by `save_sasrec` (in eval mode, on CPU)."""
    root = Path(model_dir)
    cfg_path, weights = root / CONFIG_NAME, root / WEIGHTS_NAME
    for path in (cfg_path, weights):
        if not path.is_file():
            raise DataError(f"SASRec checkpoint is missing {path}")
    try:
        meta = json.loads(cfg_path.read_text(encoding="utf-8"))
        if meta.pop("model_type", None) != "sasrec":
            raise DataError(f"{cfg_path}: model_type is not 'sasrec'")
        num_items = int(meta.pop("num_items"))
        config = SASRecConfig(**meta)
    except (ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{cfg_path}: bad SASRec config ({exc})") from None
    model = SASRec(config, num_items)
    try:
        model.load_state_dict(load_file(str(weights)))
    except RuntimeError as exc:
        raise DataError(f"{weights}: weights do not match {cfg_path} ({exc})") from None
    return model.eval()
