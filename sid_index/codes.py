"""`SemanticIDs`: the Semantic ID assignment of a catalogue, and the SID token spelling.

Level `l` has its own code space `0 .. level_sizes[l]-1`; a code is spelled as a token
`<{letter}_{code}>` with letters a, b, c, d, ... per level, e.g. `<a_12><b_7><c_201><d_0>`.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import numpy as np

from sid_index.errors import DataError

LEVEL_LETTERS = string.ascii_lowercase
_TOKEN_RE = re.compile(r"<([a-z])_(\d+)>")


def sid_token(level: int, code: int) -> str:
    """Spell one SID token, e.g. `sid_token(0, 12) == "<a_12>"`."""
    return f"<{LEVEL_LETTERS[level]}_{code}>"


def format_sid(codes: np.ndarray | list[int] | tuple[int, ...]) -> str:
    """Spell a whole SID (or a prefix of one) as concatenated tokens."""
    return "".join(sid_token(lvl, int(c)) for lvl, c in enumerate(codes))


def parse_sid(text: str) -> tuple[int, ...]:
    """Parse concatenated SID tokens into codes; levels must appear in order a, b, c, ...

    Raises DataError on anything else (so callers can count and drop a bad SID)."""
    out: list[int] = []
    pos = 0
    for m in _TOKEN_RE.finditer(text):
        if text[pos : m.start()].strip():
            raise DataError(f"unexpected text {text[pos : m.start()]!r} in SID {text!r}")
        if LEVEL_LETTERS.index(m.group(1)) != len(out):
            raise DataError(f"SID level {m.group(1)!r} out of order in {text!r}")
        out.append(int(m.group(2)))
        pos = m.end()
    if text[pos:].strip() or not out:
        raise DataError(f"not a SID: {text!r}")
    return tuple(out)


@dataclass(frozen=True, slots=True)
class SemanticIDs:
    """Codes for every catalogue row; row `i` is catalogue item `i`."""

    codes: np.ndarray
    """(N, L) int32 codes; column `l` lies in [0, level_sizes[l])."""
    level_sizes: tuple[int, ...]
    """Codebook size per level (the last level is the disambiguation level when built here)."""

    def __post_init__(self) -> None:
        if self.codes.ndim != 2 or self.codes.shape[1] != len(self.level_sizes):
            raise DataError(
                f"codes shape {self.codes.shape} does not match {len(self.level_sizes)} levels"
            )
        if len(self.codes) and (
            (self.codes < 0).any() or (self.codes >= np.asarray(self.level_sizes)).any()
        ):
            raise DataError("a SID code lies outside its level's codebook")

    @property
    def num_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def num_levels(self) -> int:
        return len(self.level_sizes)

    def sid_text(self, i: int) -> str:
        """The SID of catalogue row `i`, spelled as tokens."""
        return format_sid(self.codes[i])

    def is_unique(self) -> bool:
        """True when no two items share a full SID."""
        return len(np.unique(self.codes, axis=0)) == self.num_items
