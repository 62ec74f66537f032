"""`FastVocab`: the token layout of the fast model, shared by the trainer and the fast path.

Layout (ids are contiguous, so the SID part can be addressed with per-level offsets)::

    0 PAD   1 BOS   2 EOS   3 TRACE   4 TRACE_END   5 INTEREST   6 PERSONA_UNK
    7 .. 7+P-1                         persona tokens <p_0> .. <p_{P-1}>
    sid_offsets[l] .. + level_sizes[l]  SID tokens of level l  (<a_*>, <b_*>, ...)
    item_offset .. + item_buckets        item tokens <i_0> .. (optional, input only)

A prompt is the user's history as SID tokens with the (optional) trace inserted right after
the items it was computed from; see `fast_path/prompt.py`. With `item_buckets > 0` every
history item is followed by an item token (catalogue index modulo `item_buckets`): an
item-specific embedding next to the shared SID codes, the way SASRec's item-id table
memorises item-to-item transitions. Item tokens are only read, never decoded.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sid_index.codes import sid_token
from sid_index.errors import ConfigError, ReleaseError

PAD, BOS, EOS, TRACE, TRACE_END, INTEREST, PERSONA_UNK = range(7)
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<trace>", "</trace>", "<interest>", "<p_unk>")
VOCAB_FILE = "fast_vocab.json"


@dataclass(frozen=True, slots=True)
class FastVocab:
    """Token layout of a fast model."""

    level_sizes: tuple[int, ...]
    """Codebook size per SID level (from the release's Semantic IDs)."""
    num_personas: int = 32
    """Number of persona tokens (persona ids 0..num_personas-1; others map to PERSONA_UNK)."""
    item_buckets: int = 0
    """Item tokens read after each history item's SID (0: none). Catalogue index i maps to
    token `i % item_buckets`: one token per item when it is the catalogue size at training
    time; fewer buckets hash items together (bounded embedding table at 10^7 items); items
    added after training share a token with an older one until the next retrain."""

    def __post_init__(self) -> None:
        if not self.level_sizes or min(self.level_sizes) < 1:
            raise ConfigError(f"{self.level_sizes=} must be a non-empty tuple of sizes >= 1")
        if self.num_personas < 0:
            raise ConfigError(f"{self.num_personas=} must be >= 0")
        if self.item_buckets < 0:
            raise ConfigError(f"{self.item_buckets=} must be >= 0")

    @property
    def persona_offset(self) -> int:
        return len(SPECIAL_TOKENS)

    @property
    def sid_offsets(self) -> np.ndarray:
        """(L,) int64 vocab id of code 0 of each level."""
        sizes = np.asarray(self.level_sizes, dtype=np.int64)
        start = self.persona_offset + self.num_personas
        return start + np.concatenate([[0], np.cumsum(sizes)[:-1]])

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    @property
    def item_offset(self) -> int:
        """Vocab id of item token 0 (= the number of decodable tokens before it)."""
        return self.persona_offset + self.num_personas + int(sum(self.level_sizes))

    @property
    def tokens_per_item(self) -> int:
        """Prompt tokens per history item: its SID, plus the item token when enabled."""
        return self.num_levels + (1 if self.item_buckets else 0)

    @property
    def size(self) -> int:
        return self.item_offset + self.item_buckets

    def persona_token(self, persona_id: int | None) -> int:
        """Token of a persona id; unknown or out-of-range ids map to PERSONA_UNK."""
        if persona_id is None or not 0 <= persona_id < self.num_personas:
            return PERSONA_UNK
        return self.persona_offset + persona_id

    def sid_tokens(self, codes: np.ndarray) -> np.ndarray:
        """Map codes (..., L') with L' <= L (a full SID or a prefix) to vocab ids."""
        codes = np.asarray(codes, dtype=np.int64)
        return codes + self.sid_offsets[: codes.shape[-1]]

    def item_tokens(self, items: np.ndarray) -> np.ndarray:
        """Item token ids of catalogue indices (requires `item_buckets > 0`)."""
        if not self.item_buckets:
            raise ConfigError("this fast vocabulary has no item tokens (item_buckets=0)")
        items = np.asarray(items, dtype=np.int64)
        if items.size and items.min() < 0:
            raise ConfigError("item tokens need catalogue indices >= 0")
        return self.item_offset + items % self.item_buckets

    def token_strings(self) -> list[str]:
        """Readable spelling of every token id (for debugging and tokenizer export)."""
        out = list(SPECIAL_TOKENS)
        out += [f"<p_{i}>" for i in range(self.num_personas)]
        for lvl, size in enumerate(self.level_sizes):
            out += [sid_token(lvl, c) for c in range(size)]
        out += [f"<i_{i}>" for i in range(self.item_buckets)]
        return out

    def save(self, directory: Path) -> None:
        payload = {
            "level_sizes": list(self.level_sizes),
            "num_personas": self.num_personas,
            "item_buckets": self.item_buckets,
        }
        (directory / VOCAB_FILE).write_text(json.dumps(payload, indent=2), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> FastVocab:
        path = directory / VOCAB_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
            return cls(
                tuple(int(s) for s in raw["level_sizes"]),
                int(raw["num_personas"]),
                int(raw.get("item_buckets", 0)),  # absent in models from before item tokens
            )
        except FileNotFoundError:
            raise ReleaseError(f"{path} is missing: not a fast model directory") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise ReleaseError(f"{path}: malformed fast vocabulary ({exc!r})") from None
