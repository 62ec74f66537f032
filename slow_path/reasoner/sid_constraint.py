"""The SID-constrained answer as a batched logits mask, for decoders that sample token by token.

After `<answer>` a completion holds exactly one full SID that names a catalogue item, then
`</answer>`. `AnswerConstraint` enforces that reading only each row's last `L + 1` tokens
(L = SID levels), so it holds however a decoder reorders or reslots its rows between steps:

- after `<answer>` and k < L codes: only the trie's valid children of the SID so far (read
  back from the window and walked down the trie);
- after L codes: only `</answer>`;
- a SID so far that names no trie node (written before the constraint applied) may only be
  closed; the parser then reports the bad SID;
- rows without an open `<answer>` in their window are not touched.

`plan()` runs on the CPU over small (rows, L + 1) tensors and returns, per constrained row,
the few allowed token ids; `apply_plan()` masks a logits tensor on any device with one
gather/scatter. The vLLM backend calls it from vLLM's batch-level logits processor; the
transformers backend decodes answers with the trie beam search of `fast_path` instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch

from sid_index.codes import sid_token
from sid_index.errors import ConfigError, DataError
from sid_index.trie import DEAD, SIDTrie
from slow_path.cot_format import ANSWER, ANSWER_END, THINK_END


@dataclass(frozen=True, slots=True)
class AnswerTokens:
    """Token ids of the completion tail in a reasoner's vocabulary."""

    sid_offsets: tuple[int, ...]
    """(L,) id of code 0 of each SID level; level l's code c is `sid_offsets[l] + c`."""
    think_end: int
    """Id of `</think>`."""
    answer: int
    """Id of `<answer>`."""
    answer_end: int
    """Id of `</answer>`."""

    @classmethod
    def from_vocab(cls, vocab: Mapping[str, int], level_sizes: Sequence[int]) -> AnswerTokens:
        """Look the tokens up in a token → id mapping (e.g. `tokenizer.get_vocab()`).

        Raises:
            DataError: a token is missing or a level's SID tokens are not contiguous ids.
        """
        missing = [t for t in (THINK_END, ANSWER, ANSWER_END) if t not in vocab]
        offsets = []
        for level, size in enumerate(level_sizes):
            names = [sid_token(level, c) for c in range(size)]
            missing += [t for t in names if t not in vocab]
            if missing:
                break
            ids = torch.tensor([vocab[t] for t in names])
            if bool((ids.diff() != 1).any()):
                raise DataError(
                    f"SID tokens of level {level} do not have contiguous ids in the vocabulary"
                )
            offsets.append(int(ids[0]))
        if missing:
            raise DataError(
                f"the reasoner's vocabulary lacks {len(missing)} format token(s), e.g. "
                f"{missing[:3]}: not a reasoner tokenizer for SID levels {tuple(level_sizes)}"
            )
        return cls(tuple(offsets), vocab[THINK_END], vocab[ANSWER], vocab[ANSWER_END])


@dataclass(frozen=True, slots=True)
class ConstraintPlan:
    """The allowed tokens of the constrained rows of one decoding step."""

    rows: torch.Tensor
    """(n,) int64 rows of the batch that are constrained (the others are left untouched)."""
    tokens: torch.Tensor
    """(n, K) int64 allowed token ids per constrained row (padded by repeating column 0)."""

    def dense(self, batch: int, vocab: int) -> torch.Tensor:
        """(batch, vocab) bool: allowed tokens, all True on unconstrained rows (for tests)."""
        mask = torch.ones(batch, vocab, dtype=torch.bool)
        if self.rows.numel():
            sub = torch.zeros(self.rows.numel(), vocab, dtype=torch.bool)
            sub.scatter_(1, self.tokens, True)
            mask[self.rows] = sub
        return mask


class AnswerConstraint:
    """SID-constrained answer as a logits mask (see the module docstring)."""

    def __init__(self, trie: SIDTrie, tokens: AnswerTokens) -> None:
        """Args:
        trie: the catalogue's SID trie (CPU tensors).
        tokens: where the answer's tokens live in the vocabulary.
        """
        if len(tokens.sid_offsets) != trie.num_levels:
            raise ConfigError(
                f"{len(tokens.sid_offsets)} SID token offsets for a {trie.num_levels}-level trie"
            )
        self.trie = trie
        self.tokens = tokens
        self.offsets = torch.tensor(tokens.sid_offsets, dtype=torch.int64)  # (L,)
        self.sizes = torch.tensor(trie.level_sizes, dtype=torch.int64)  # (L,)

    @property
    def window(self) -> int:
        """Tokens of each row's tail that `plan` reads: L + 1."""
        return self.trie.num_levels + 1

    def plan(self, window: torch.Tensor) -> ConstraintPlan:
        """Allowed next tokens of every constrained row.

        Args:
            window: (R, L+1) int64 last tokens of each row (prompt + output), oldest first;
                -1 where a row is shorter.
        """
        num_levels = self.trie.num_levels
        rows_n, width = window.shape
        if width != num_levels + 1:
            raise DataError(f"window {tuple(window.shape)} must be (R, {num_levels + 1})")
        window = window.long()
        tok = self.tokens
        is_answer = window == tok.answer  # (R, W)
        k = torch.flip(is_answer, [1]).long().argmax(dim=1)  # tokens after the last <answer>
        start = width - 1 - k  # (R,) position of the last <answer>
        after = torch.arange(width)[None, :] > start[:, None]  # (R, W)
        closed = ((window == tok.answer_end) & after).any(dim=1)
        open_ = is_answer.any(dim=1) & ~closed  # (R,)

        # Walk the SID written so far down the trie (one vectorised step per level).
        states = self.trie.root_state(rows_n)
        for level in range(num_levels):
            active = open_ & (k > level)
            token = window.gather(1, (start + 1 + level).clamp(max=width - 1)[:, None])[:, 0]
            code = token - self.offsets[level]
            ok = (code >= 0) & (code < self.sizes[level])
            nxt = self.trie.advance(states, code.clamp(min=0))
            states = torch.where(active, torch.where(ok, nxt, DEAD), states)

        groups: list[tuple[torch.Tensor, torch.Tensor]] = []  # (rows, (n, K) allowed tokens)
        done = torch.nonzero(open_ & (k >= num_levels)).flatten()
        if done.numel():
            groups.append((done, torch.full((done.numel(), 1), tok.answer_end)))
        for level in range(num_levels):
            rows = torch.nonzero(open_ & (k == level)).flatten()
            if not rows.numel():
                continue
            kids = self.trie.children(states[rows], level)  # (n, W_l)
            ids = self.offsets[level] + kids.codes
            first_slot = kids.valid.long().argmax(dim=1, keepdim=True)  # (n, 1)
            # A dead prefix has no valid child: closing the answer is all that is left.
            first = torch.where(
                kids.valid.any(dim=1), ids.gather(1, first_slot)[:, 0], tok.answer_end
            )
            groups.append((rows, torch.where(kids.valid, ids, first[:, None])))
        return _merge(groups)


def _merge(groups: list[tuple[torch.Tensor, torch.Tensor]]) -> ConstraintPlan:
    if not groups:
        return ConstraintPlan(
            torch.zeros(0, dtype=torch.int64), torch.zeros(0, 1, dtype=torch.int64)
        )
    width = max(t.shape[1] for _, t in groups)
    padded = [
        torch.cat([t, t[:, :1].expand(-1, width - t.shape[1])], dim=1) if t.shape[1] < width else t
        for _, t in groups
    ]
    return ConstraintPlan(torch.cat([r for r, _ in groups]), torch.cat(padded).long())


def apply_plan(logits: torch.Tensor, plan: ConstraintPlan) -> torch.Tensor:
    """Mask `logits` (B, V) in place: constrained rows keep only their allowed tokens."""
    if not plan.rows.numel():
        return logits
    rows = plan.rows.to(logits.device)
    tokens = plan.tokens.to(logits.device)
    sub = logits.index_select(0, rows)  # (n, V)
    kept = sub.gather(1, tokens)  # (n, K)
    masked = torch.full_like(sub, float("-inf")).scatter_(1, tokens, kept)
    logits.index_copy_(0, rows, masked)
    return logits
