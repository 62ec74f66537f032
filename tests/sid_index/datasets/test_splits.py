"""Leave-one-out split: the vectorized arrays against a plain per-user reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sid_index.datasets.splits import PAD, LeaveOneOutSplit, SequenceSamples, leave_one_out
from sid_index.errors import ConfigError
from sid_index.records import Interactions, UserSequence

Seqs = list[list[int]]


def _interactions(seqs: Seqs) -> Interactions:
    return Interactions.from_sequences(
        [UserSequence(f"u{i}", np.array(s, dtype=np.int64)) for i, s in enumerate(seqs)]
    )


def _as_lists(samples: SequenceSamples) -> list[tuple[int, list[int], int]]:
    return [
        (int(samples.users[j]), samples.history(j).tolist(), int(samples.targets[j]))
        for j in range(len(samples))
    ]


def _tail(xs: list[int], max_len: int | None) -> list[int]:
    return xs if max_len is None else xs[-max_len:]


sequences = st.lists(st.lists(st.integers(0, 50), max_size=12), max_size=25)
max_lens = st.one_of(st.none(), st.integers(1, 6))


@settings(max_examples=200, deadline=None)
@given(seqs=sequences, max_len=max_lens)
def test_split_matches_reference(seqs: Seqs, max_len: int | None) -> None:
    split = leave_one_out(_interactions(seqs))
    kept = [(i, s) for i, s in enumerate(seqs) if len(s) >= 3]
    assert split.num_dropped == len(seqs) - len(kept)
    assert split.user_ids == [f"u{i}" for i, _ in kept]
    assert split.user_index.tolist() == [i for i, _ in kept]
    assert split.valid_targets.tolist() == [s[-2] for _, s in kept]
    assert split.test_targets.tolist() == [s[-1] for _, s in kept]
    trains = [s[:-2] for _, s in kept]
    assert [
        split.train_items[a:b].tolist()
        for a, b in zip(split.train_indptr[:-1], split.train_indptr[1:], strict=True)
    ] == trains

    expected_train = [
        (u, _tail(t[:j], max_len), t[j]) for u, t in enumerate(trains) for j in range(1, len(t))
    ]
    assert _as_lists(split.train_samples(max_len)) == expected_train
    assert _as_lists(split.valid_inputs(max_len)) == [
        (u, _tail(t, max_len), s[-2])
        for u, (t, (_, s)) in enumerate(zip(trains, kept, strict=True))
    ]
    assert _as_lists(split.test_inputs(max_len)) == [
        (u, _tail(s[:-1], max_len), s[-1]) for u, (_, s) in enumerate(kept)
    ]


@settings(max_examples=100, deadline=None)
@given(seqs=sequences, width=st.integers(1, 8))
def test_padded_is_right_aligned(seqs: Seqs, width: int) -> None:
    samples = leave_one_out(_interactions(seqs)).train_samples()
    padded = samples.padded(width)
    assert padded.shape == (len(samples), width)
    for j in range(len(samples)):
        hist = samples.history(j).tolist()[-width:]
        assert padded[j].tolist() == [PAD] * (width - len(hist)) + hist
    full = samples.padded()
    assert full.shape[1] == (int(samples.lengths().max()) if len(samples) else 0)


def test_worked_example_and_errors() -> None:
    split = leave_one_out(_interactions([[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]))
    assert isinstance(split, LeaveOneOutSplit) and len(split) == 2 and split.num_dropped == 1
    np.testing.assert_array_equal(split.train_samples(2).padded(), [[PAD, 1], [1, 2]])
    np.testing.assert_array_equal(split.test_inputs(3).padded(), [[2, 3, 4], [PAD, 9, 10]])
    np.testing.assert_array_equal(split.valid_inputs().targets, [4, 10])
    with pytest.raises(ConfigError, match="min_length=2 must be >= 3"):
        leave_one_out(_interactions([[1, 2]]), min_length=2)
    with pytest.raises(ConfigError, match="max_len=0 must be >= 1"):
        split.train_samples(0)
    with pytest.raises(ConfigError, match="max_len=0 must be >= 1"):
        split.test_inputs(0)
    longer = leave_one_out(_interactions([[1, 2, 3, 4, 5], [9, 10, 11, 12]]), min_length=5)
    assert longer.user_ids == ["u0"] and longer.num_dropped == 1
