"""Fixtures of the reasoner tests: a small synthetic catalogue with SIDs and hand-made samples
in the CoT format (rendered by slow_path.cot_format), and a very small scratch reasoner."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from sid_index.codes import SemanticIDs, format_sid
from sid_index.datasets.synthetic import SyntheticConfig, generate
from sid_index.records import Dataset
from sid_index.trie import SIDTrie
from slow_path.cot_format import (
    CoT,
    CoTInterest,
    PromptItem,
    render_answer,
    render_cot,
    render_prompt,
)
from trainer.reasoner.model import Reasoner, ScratchArch, prepare_reasoner

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
class Sample:
    """A hand-made prompt → completion sample (the shape of SFTSample / AlignSample)."""

    prompt: str
    completion: str
    thinking: bool = False


@dataclass(frozen=True)
class World:
    dataset: Dataset
    sids: SemanticIDs
    trie: SIDTrie
    align: list[Sample]
    sft: list[Sample]

    @property
    def codes(self) -> np.ndarray:
        return self.sids.codes

    def texts(self) -> list[str]:
        return [s.prompt + s.completion for s in self.align + self.sft]


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
            min_seq_len=4, max_seq_len=6, seed=3,
        )
    )  # fmt: skip
    rng = np.random.default_rng(0)
    cat = data.catalog
    codes = _codes(cat.categories, rng)
    sids = SemanticIDs(codes, LEVEL_SIZES)
    align = [
        Sample(f"{format_sid(codes[i])} category:", f" {' '.join(cat.categories[i])}")
        for i in range(len(cat))
    ]
    sft: list[Sample] = []
    for u, seq in enumerate(data.interactions):
        items = [PromptItem(tuple(int(c) for c in codes[i]), cat.titles[i]) for i in seq.items[:-1]]
        target = tuple(int(c) for c in codes[seq.items[-1]])
        persona = int(data.personas[u]) if data.personas is not None else 0
        cot = CoT(
            persona, f"persona {persona}", (CoTInterest(target[:1], 0.6, "recent theme"),), 0,
            "the next item follows the last one",
        )  # fmt: skip
        sft.append(
            Sample(
                render_prompt(items, thinking=True), render_cot(cot) + render_answer(target), True
            )
        )
        sft.append(Sample(render_prompt(items, thinking=False), render_answer(target)))
    return World(data, sids, SIDTrie.build(sids), align, sft)


@pytest.fixture(scope="session")
def make_reasoner(world: World) -> Callable[..., Reasoner]:
    """Factory of fresh very small scratch reasoners over the world's vocabulary."""

    def make(*, tie: bool = True, seed: int = 0) -> Reasoner:
        return prepare_reasoner(
            dataclasses.replace(MICRO_ARCH, tie_embeddings=tie), LEVEL_SIZES, NUM_PERSONAS,
            corpus_texts=world.texts() + world.dataset.catalog.texts, seed=seed,
        )  # fmt: skip

    return make
