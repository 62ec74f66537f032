"""Leave-one-out evaluation split, the protocol of the TIGER/P5 benchmarks.

For each user with at least `min_length` (3) interactions, in time order:

* the last item is the test target,
* the second-to-last item is the validation target,
* everything before is the train part; every prefix of the train part followed by its next
  item is a training sample (a user with train part `[a, b, c]` gives `[a] -> b` and
  `[a, b] -> c`).

Validation predicts the valid target from the train part; test predicts the test target from
the train part plus the valid target. Users with fewer interactions are dropped and counted.
Metrics are computed over the full catalogue (no sampled negatives) by the evaluator.

Everything is CSR arrays and built with vectorized numpy (no per-user Python loop).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sid_index.errors import ConfigError, DataError
from sid_index.records import Interactions

PAD = -1
"""Padding value of `SequenceSamples.padded` (never a catalogue index)."""


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of `arange(s, s + n)` for every (s, n), without a Python loop."""
    total = int(lengths.sum())
    offsets = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(lengths[:-1], out=offsets[1:])
    return np.repeat(starts - offsets, lengths) + np.arange(total, dtype=np.int64)


def _check_max_len(max_len: int | None) -> None:
    if max_len is not None and max_len < 1:
        raise ConfigError(f"{max_len=} must be >= 1")


def _indptr(lengths: np.ndarray) -> np.ndarray:
    out = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=out[1:])
    return out


@dataclass(frozen=True, slots=True)
class SequenceSamples:
    """(history, target) samples in CSR layout: sample `j` has history
    `items[indptr[j]:indptr[j+1]]` (catalogue indices, oldest first) and target `targets[j]`."""

    users: np.ndarray
    """(N,) int64 user of each sample, as a row of the split (`LeaveOneOutSplit.user_ids`)."""
    indptr: np.ndarray
    """(N+1,) int64 history offsets."""
    items: np.ndarray
    """(nnz,) int64 history items."""
    targets: np.ndarray
    """(N,) int64 target item of each sample."""

    def __len__(self) -> int:
        return len(self.targets)

    def lengths(self) -> np.ndarray:
        """(N,) history lengths."""
        return np.diff(self.indptr)

    def history(self, j: int) -> np.ndarray:
        """Sample `j`'s history (a view)."""
        return self.items[self.indptr[j] : self.indptr[j + 1]]

    def padded(self, max_len: int | None = None, pad: int = PAD) -> np.ndarray:
        """(N, L) histories, right-aligned (most recent item last), left-padded with `pad`.

        `L` is `max_len`, or the longest history when None; longer histories keep their most
        recent `L` items."""
        _check_max_len(max_len)
        lengths = self.lengths()
        width = int(lengths.max(initial=0)) if max_len is None else max_len
        out = np.full((len(self), width), pad, dtype=np.int64)
        keep = np.minimum(lengths, width)  # the most recent `keep` items of each history
        dest = np.arange(len(self), dtype=np.int64) * width + (width - keep)
        out.reshape(-1)[_ranges(dest, keep)] = self.items[_ranges(self.indptr[1:] - keep, keep)]
        return out


@dataclass(frozen=True, slots=True)
class LeaveOneOutSplit:
    """Per kept user: the train part (CSR), the valid target and the test target."""

    user_ids: list[str]
    """(U,) external ids of the kept users."""
    user_index: np.ndarray
    """(U,) int64 row of each kept user in the source `Interactions` (e.g. for personas)."""
    train_indptr: np.ndarray
    """(U+1,) int64 offsets into `train_items`."""
    train_items: np.ndarray
    """(nnz,) int64 train parts, oldest first; every user has at least one train item."""
    valid_targets: np.ndarray
    """(U,) int64 second-to-last item of each user."""
    test_targets: np.ndarray
    """(U,) int64 last item of each user."""
    num_dropped: int
    """Users dropped for having fewer than `min_length` interactions."""

    def __post_init__(self) -> None:
        U = len(self.user_ids)
        for name in ("user_index", "valid_targets", "test_targets"):
            if getattr(self, name).shape != (U,):
                raise DataError(f"split column {name} has shape {getattr(self, name).shape}")
        if self.train_indptr.shape != (U + 1,) or self.train_indptr[-1] != len(self.train_items):
            raise DataError("split train_indptr does not match train_items")

    @classmethod
    def from_interactions(cls, interactions: Interactions, min_length: int = 3) -> LeaveOneOutSplit:
        """Split every user's sequence; users shorter than `min_length` (>= 3) are dropped."""
        if min_length < 3:
            raise ConfigError(f"{min_length=} must be >= 3 (one train, one valid, one test item)")
        lengths = interactions.lengths()
        kept = np.flatnonzero(lengths >= min_length)
        ends = interactions.indptr[kept + 1]  # exclusive end of each kept sequence
        train_len = lengths[kept] - 2
        return cls(
            user_ids=[interactions.user_ids[u] for u in kept.tolist()],
            user_index=kept.astype(np.int64),
            train_indptr=_indptr(train_len),
            train_items=interactions.items[_ranges(interactions.indptr[kept], train_len)],
            valid_targets=interactions.items[ends - 2].astype(np.int64),
            test_targets=interactions.items[ends - 1].astype(np.int64),
            num_dropped=int(len(lengths) - len(kept)),
        )

    def __len__(self) -> int:
        return len(self.user_ids)

    def train_lengths(self) -> np.ndarray:
        """(U,) train part lengths (>= 1)."""
        return np.diff(self.train_indptr)

    def train_samples(self, max_len: int | None = None) -> SequenceSamples:
        """Every prefix of every train part as a sample: `train[:j] -> train[j]` for j >= 1.

        A train part of length m gives m - 1 samples; histories keep their last `max_len`
        items (all of them when None — quadratic in the sequence length, so set it for long
        sequences)."""
        _check_max_len(max_len)
        lengths = self.train_lengths()
        starts = self.train_indptr[:-1]
        # Sample ends: every train position except each user's first.
        pos = _ranges(starts + 1, lengths - 1)  # (N,) index of the target in train_items
        users = np.repeat(np.arange(len(self)), lengths - 1)
        first = np.repeat(starts, lengths - 1)
        hist_start = first if max_len is None else np.maximum(first, pos - max_len)
        hist_len = pos - hist_start
        return SequenceSamples(
            users=users,
            indptr=_indptr(hist_len),
            items=self.train_items[_ranges(hist_start, hist_len)],
            targets=self.train_items[pos],
        )

    def valid_inputs(self, max_len: int | None = None) -> SequenceSamples:
        """One sample per user: train part (last `max_len` items) -> valid target."""
        _check_max_len(max_len)
        lengths = self.train_lengths()
        keep = lengths if max_len is None else np.minimum(lengths, max_len)
        start = self.train_indptr[1:] - keep
        return SequenceSamples(
            users=np.arange(len(self), dtype=np.int64),
            indptr=_indptr(keep),
            items=self.train_items[_ranges(start, keep)],
            targets=self.valid_targets,
        )

    def test_inputs(self, max_len: int | None = None) -> SequenceSamples:
        """One sample per user: train part + valid target (last `max_len` items) -> test target."""
        _check_max_len(max_len)
        lengths = self.train_lengths()
        from_train = lengths if max_len is None else np.minimum(lengths, max_len - 1)
        indptr = _indptr(from_train + 1)
        items = np.empty(int(indptr[-1]), dtype=np.int64)
        is_last = np.zeros(len(items), dtype=bool)
        is_last[indptr[1:] - 1] = True  # the valid target closes every history
        items[is_last] = self.valid_targets
        items[~is_last] = self.train_items[_ranges(self.train_indptr[1:] - from_train, from_train)]
        return SequenceSamples(
            users=np.arange(len(self), dtype=np.int64),
            indptr=indptr,
            items=items,
            targets=self.test_targets,
        )


def leave_one_out(interactions: Interactions, min_length: int = 3) -> LeaveOneOutSplit:
    """Leave-one-out split of `interactions` (see the module docstring for the protocol)."""
    return LeaveOneOutSplit.from_interactions(interactions, min_length)
