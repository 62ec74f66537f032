"""Fixtures of the RL tests: a small synthetic catalogue with hand-made SIDs, its leave-one-out
split, RL prompts, and very small scratch reasoners (random weights) over its vocabulary."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from sid_index.codes import SemanticIDs
from sid_index.datasets.splits import LeaveOneOutSplit, leave_one_out
from sid_index.datasets.synthetic import SyntheticConfig, generate
from sid_index.records import Dataset
from sid_index.trie import SIDTrie
from trainer.reasoner.model import Reasoner, ScratchArch, prepare_reasoner
from trainer.rl.prompts import RLPrompt, build_prompts

LEVEL_SIZES = (8, 4, 8)
NUM_PERSONAS = 6
MICRO_ARCH = ScratchArch(
    num_layers=2,
    hidden_size=48,
    num_heads=2,
    num_kv_heads=2,
    intermediate_size=96,
    max_positions=512,
    bpe_vocab_size=360,
)


@dataclass(frozen=True)
class World:
    dataset: Dataset
    codes: np.ndarray
    trie: SIDTrie
    split: LeaveOneOutSplit
    prompts: list[RLPrompt]
    """Thinking train prompts (last 3 history items)."""


def _codes(categories: list[tuple[str, ...]], rng: np.random.Generator) -> np.ndarray:
    """Unique SIDs whose first level follows the category (as real SIDs roughly do)."""
    names = sorted(set(categories))
    cat = np.array([names.index(c) for c in categories]) % LEVEL_SIZES[0]
    pairs = [(b, c) for b in range(LEVEL_SIZES[1]) for c in range(LEVEL_SIZES[2])]
    codes = np.zeros((len(categories), 3), dtype=np.int32)
    for a in range(LEVEL_SIZES[0]):
        rows = np.flatnonzero(cat == a)
        picks = rng.permutation(len(pairs))[: len(rows)]
        codes[rows, 0] = a
        codes[rows, 1:] = np.asarray(pairs)[picks]
    return codes


@pytest.fixture(scope="session")
def world() -> World:
    data = generate(
        SyntheticConfig(
            num_users=30, num_items=48, num_categories=8, num_personas=NUM_PERSONAS,
            min_seq_len=4, max_seq_len=6, domains=("video", "ecommerce"), seed=3,
        )
    )  # fmt: skip
    codes = _codes(data.catalog.categories, np.random.default_rng(0))
    trie = SIDTrie.build(SemanticIDs(codes, LEVEL_SIZES))
    split = leave_one_out(data.interactions)
    prompts = build_prompts(split, data.catalog, codes, part="train", max_history=3)
    return World(data, codes, trie, split, prompts)


@pytest.fixture(scope="session")
def make_reasoner(world: World) -> Callable[..., Reasoner]:
    """Factory of fresh very small scratch reasoners (random weights) over the world's vocab."""
    texts = [p.prompt for p in world.prompts] + world.dataset.catalog.texts

    def make(*, seed: int = 0) -> Reasoner:
        return prepare_reasoner(
            MICRO_ARCH, LEVEL_SIZES, NUM_PERSONAS, corpus_texts=texts, seed=seed
        )

    return make
