"""A small synthetic world for the CoT tests: planted personas, SID codes and a FAISS index.

Semantic IDs are made by hand from the categories (two categories per level-0 code, a random
level-1 code, a disambiguating level 2), so the tests need no text embedder."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from sid_index.datasets.splits import LeaveOneOutSplit, leave_one_out
from sid_index.datasets.synthetic import SyntheticConfig, generate
from sid_index.item_index import ItemIndex, ItemIndexConfig
from sid_index.records import Dataset
from trainer.cot.personas import PersonaConfig
from trainer.cot.rule_teacher import RuleTeacher


@dataclass(frozen=True)
class World:
    dataset: Dataset
    codes: np.ndarray
    """(N, 3) int64 SID codes."""
    level_sizes: tuple[int, ...]
    index: ItemIndex
    split: LeaveOneOutSplit


def make_world(users: int = 600, items: int = 400, seed: int = 0) -> World:
    ds = generate(SyntheticConfig(num_users=users, num_items=items, seed=seed))
    rng = np.random.default_rng(seed)
    paths = np.array([" > ".join(c) for c in ds.catalog.categories])
    _, cat = np.unique(paths, return_inverse=True)
    n = len(cat)
    codes = np.zeros((n, 3), dtype=np.int64)
    codes[:, 0] = cat // 2
    codes[:, 1] = rng.integers(0, 4, n)
    key = codes[:, 0] * 4 + codes[:, 1]
    order = np.argsort(key, kind="stable")
    _, first, counts = np.unique(key[order], return_index=True, return_counts=True)
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - np.repeat(first, counts)
    codes[:, 2] = rank
    level_sizes = tuple(int(m) + 1 for m in codes.max(axis=0))
    # Item vectors clustered by category: nearest neighbours share the category.
    centers = rng.normal(size=(int(cat.max()) + 1, 16))
    emb = centers[cat] + 0.3 * rng.normal(size=(n, 16))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    index = ItemIndex.build(emb.astype(np.float32), ItemIndexConfig(kind="flat"))
    return World(ds, codes, level_sizes, index, leave_one_out(ds.interactions))


@pytest.fixture(scope="session")
def world() -> World:
    return make_world()


@pytest.fixture(scope="session")
def rule_teacher(world: World) -> RuleTeacher:
    s = world.split
    return RuleTeacher.fit(
        world.dataset.catalog,
        world.codes,
        s.train_indptr,
        s.train_items,
        persona_config=PersonaConfig(num_personas=20, n_init=2),
        item_index=world.index,
    )
