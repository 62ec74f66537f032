"""The reasoner's tokenizer: byte-level BPE for `scratch:*` models, plus the added vocabulary
of the CoT format (section markers, persona tokens, one token per SID code per level).

Every added token is an `AddedToken(normalized=False)` so it is never split, and is *not* a
"special" token (as Qwen3 does for `<think>`): decoding with `skip_special_tokens=True` — the
default of vLLM's detokenizer — keeps SID and marker tokens in the text the parser reads.

SID tokens are added level-major and code-ascending, so the id of `sid_token(level, code)` is
`sid_offsets[level] + code`: the constrained decoder addresses a level's tokens as one slice.
`ReasonerVocab` records that layout (and which ids are new, for the alignment warm-up) in
`reasoner_vocab.json` next to the tokenizer files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from sid_index.codes import sid_token
from sid_index.errors import ConfigError, DataError, ReleaseError
from slow_path import cot_format

VOCAB_FILE = "reasoner_vocab.json"
PAD_TOKEN, BOS_TOKEN, EOS_TOKEN = "<|pad|>", "<|bos|>", "<|eos|>"


_FORMAT_TOKEN_RE = re.compile(r"</?[a-z]+(?:_\d+)?>")


def token_ids(tokenizer: PreTrainedTokenizerBase, tokens: Sequence[str]) -> list[int]:
    """Ids of whole tokens (DataError for a token the tokenizer does not have)."""
    ids = tokenizer.convert_tokens_to_ids(list(tokens))
    ids = [ids] if isinstance(ids, int) else list(ids)
    missing = [t for t, i in zip(tokens, ids, strict=True) if i is None]
    if missing or len(ids) != len(tokens):
        raise DataError(f"the tokenizer has no single tokens for {missing[:5]}")
    return [int(i) for i in ids]


def decode(tokenizer: PreTrainedTokenizerBase, ids: Sequence[int], *, skip_special: bool) -> str:
    """Text of one id sequence (spaces kept as they are)."""
    return str(tokenizer.decode(list(ids), skip_special_tokens=skip_special))


def format_tokens(level_sizes: Sequence[int], num_personas: int) -> list[str]:
    """The added vocabulary, in id order: section markers, `<next_k>`, persona tokens, then SID
    tokens level-major (`slow_path.cot_format.special_tokens`)."""
    if not level_sizes or min(level_sizes) < 1:
        raise ConfigError(f"{level_sizes=} must be a non-empty sequence of sizes >= 1")
    if num_personas < 0:
        raise ConfigError(f"{num_personas=} must be >= 0")
    return cot_format.special_tokens(level_sizes, num_personas)


def train_bpe(
    texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer (no added vocabulary yet) on `texts`.

    The SID/marker spellings should not be in `texts` (strip them first): they are added whole
    afterwards and would only waste merges. Ids 0, 1, 2 are pad, bos, eos.
    """
    if vocab_size < 300:
        raise ConfigError(f"{vocab_size=} must be >= 300 (256 byte symbols + specials + merges)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[PAD_TOKEN, BOS_TOKEN, EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        clean_up_tokenization_spaces=False,
    )


def strip_format_tokens(text: str) -> str:
    """`text` without SID, persona and marker spellings (BPE training input)."""
    return _FORMAT_TOKEN_RE.sub(" ", text)


@dataclass(frozen=True, slots=True)
class ReasonerVocab:
    """Where the CoT format's tokens live in a reasoner's vocabulary."""

    level_sizes: tuple[int, ...]
    """Codebook size per SID level."""
    num_personas: int
    """Number of persona tokens `<p_0>`..`<p_{P-1}>`."""
    sid_offsets: tuple[int, ...]
    """Token id of code 0 of each level; level l's codes are `sid_offsets[l] + code`."""
    new_token_ranges: tuple[tuple[int, int], ...]
    """Half-open id ranges of the tokens this vocabulary added to the base tokenizer (the rows
    the alignment warm-up trains); for `scratch:*` models, every format token."""
    vocab_size: int
    """len(tokenizer) after extension."""

    def __post_init__(self) -> None:
        if len(self.sid_offsets) != len(self.level_sizes):
            raise ConfigError(f"{self.sid_offsets=} does not match {self.level_sizes=}")

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    def new_token_mask(self, size: int) -> np.ndarray:
        """(size,) bool: rows of an embedding matrix of `size` rows that are new tokens."""
        mask = np.zeros(size, dtype=bool)
        for lo, hi in self.new_token_ranges:
            mask[lo:hi] = True
        return mask

    def sid_token_ids(self, codes: np.ndarray) -> np.ndarray:
        """(..., L) codes → (..., L) token ids."""
        return np.asarray(codes, dtype=np.int64) + np.asarray(self.sid_offsets, dtype=np.int64)

    def save(self, directory: Path) -> None:
        """Write `reasoner_vocab.json` into `directory`."""
        (directory / VOCAB_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, directory: Path) -> ReasonerVocab:
        """Read `reasoner_vocab.json` (ReleaseError when absent or malformed)."""
        path = directory / VOCAB_FILE
        if not path.is_file():
            raise ReleaseError(f"{directory} is not a reasoner directory (no {VOCAB_FILE})")
        try:
            raw = json.loads(path.read_text())
            return cls(
                level_sizes=tuple(int(s) for s in raw["level_sizes"]),
                num_personas=int(raw["num_personas"]),
                sid_offsets=tuple(int(o) for o in raw["sid_offsets"]),
                new_token_ranges=tuple((int(a), int(b)) for a, b in raw["new_token_ranges"]),
                vocab_size=int(raw["vocab_size"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise ReleaseError(f"{path}: malformed reasoner vocabulary ({exc})") from None


def extend_tokenizer(
    tokenizer: PreTrainedTokenizerBase, level_sizes: Sequence[int], num_personas: int
) -> ReasonerVocab:
    """Add the CoT format's tokens to `tokenizer` in place and describe where they landed.

    Tokens the tokenizer already has as single tokens (Qwen3's `<think>`) keep their ids and
    are not new. Raises DataError when a level's SID tokens do not get contiguous ids (the
    base tokenizer already spelled some of them differently).
    """
    tokens = format_tokens(level_sizes, num_personas)
    vocab = tokenizer.get_vocab()
    missing = [t for t in tokens if t not in vocab]
    first_new = len(tokenizer)
    tokenizer.add_tokens([AddedToken(t, normalized=False, special=False) for t in missing])
    if tokenizer.pad_token is None:
        # Base models without a pad token (Llama): pad with eos; padded positions are masked.
        tokenizer.pad_token = tokenizer.eos_token
    ids = token_ids(tokenizer, tokens)
    offsets: list[int] = []
    start = len(tokens) - sum(level_sizes)
    for level, size in enumerate(level_sizes):
        level_ids = np.asarray(ids[start : start + size], dtype=np.int64)
        if not (np.diff(level_ids) == 1).all():
            raise DataError(
                f"SID tokens of level {level} did not get contiguous ids in the tokenizer "
                f"(first {sid_token(level, 0)}={int(level_ids[0])})"
            )
        offsets.append(int(level_ids[0]))
        start += size
    for tok, tid in zip(tokens, ids, strict=True):
        if tokenizer.encode(tok, add_special_tokens=False) != [tid]:
            raise DataError(f"added token {tok!r} does not encode to its single id {tid}")
    ranges = ((first_new, len(tokenizer)),) if len(tokenizer) > first_new else ()
    return ReasonerVocab(
        level_sizes=tuple(int(s) for s in level_sizes),
        num_personas=int(num_personas),
        sid_offsets=tuple(offsets),
        new_token_ranges=ranges,
        vocab_size=len(tokenizer),
    )


def build_scratch_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    level_sizes: Sequence[int],
    num_personas: int,
) -> tuple[PreTrainedTokenizerFast, ReasonerVocab]:
    """Train BPE on `texts` (format tokens stripped) and add the CoT format's tokens."""
    tokenizer = train_bpe((strip_format_tokens(t) for t in texts), vocab_size)
    return tokenizer, extend_tokenizer(tokenizer, level_sizes, num_personas)


def save_tokenizer(
    directory: Path, tokenizer: PreTrainedTokenizerBase, vocab: ReasonerVocab
) -> None:
    """Write the HF tokenizer files and `reasoner_vocab.json` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(directory)
    vocab.save(directory)


def load_tokenizer(directory: Path) -> tuple[PreTrainedTokenizerBase, ReasonerVocab]:
    """Load a reasoner's tokenizer and vocabulary layout from `directory`."""
    vocab = ReasonerVocab.load(directory)
    tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
    if len(tokenizer) != vocab.vocab_size:
        raise ReleaseError(
            f"{directory}: tokenizer has {len(tokenizer)} tokens, {VOCAB_FILE} says "
            f"{vocab.vocab_size}"
        )
    return tokenizer, vocab


def tokenizer_files(tokenizer: PreTrainedTokenizerBase, vocab: ReasonerVocab) -> dict[str, str]:
    """The tokenizer's files as {name: text}, for `trainer.checkpoint.save_checkpoint`."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        save_tokenizer(Path(tmp), tokenizer, vocab)
        return {p.name: p.read_text(encoding="utf-8") for p in Path(tmp).iterdir() if p.is_file()}
