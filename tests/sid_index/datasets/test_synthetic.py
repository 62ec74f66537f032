"""Synthetic generator: determinism, shapes, planted structure (persona signal, text clusters)."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import numpy as np
import pytest

from sid_index.datasets.synthetic import (
    SyntheticConfig,
    build_world,
    generate,
    generate_catalog_codes,
)
from sid_index.errors import ConfigError
from sid_index.records import Dataset


def _category_index(ds: Dataset) -> np.ndarray:
    """(N,) category id of every item, from the catalogue's category paths."""
    paths = sorted(set(ds.catalog.categories))
    index = {p: i for i, p in enumerate(paths)}
    return np.array([index[p] for p in ds.catalog.categories])


def test_deterministic_and_seed_sensitive() -> None:
    config = SyntheticConfig(num_users=300, num_items=150, seed=7)
    a, b = generate(config), generate(config)
    c = generate(dataclasses.replace(config, seed=8))
    assert a.catalog.texts == b.catalog.texts
    assert a.persona_names == b.persona_names
    for name in ("indptr", "items", "timestamps"):
        np.testing.assert_array_equal(getattr(a.interactions, name), getattr(b.interactions, name))
    assert a.personas is not None and b.personas is not None
    np.testing.assert_array_equal(a.personas, b.personas)
    assert a.catalog.texts != c.catalog.texts
    assert not np.array_equal(a.interactions.items[:50], c.interactions.items[:50])


def test_shapes_and_ranges() -> None:
    config = SyntheticConfig(num_users=500, num_items=200, num_personas=7, min_seq_len=3)
    ds = generate(config)
    inter, cat = ds.interactions, ds.catalog
    assert ds.name == "synthetic-u500-i200-s0"
    assert len(inter) == 500 and len(cat) == 200
    assert cat.item_ids == [str(i) for i in range(200)]
    lengths = inter.lengths()
    assert lengths.min() >= 3 and lengths.max() <= config.max_seq_len
    assert inter.items.min() >= 0 and inter.items.max() < 200
    assert ds.personas is not None and ds.personas.shape == (500,)
    assert set(ds.personas.tolist()) <= set(range(7))
    assert ds.persona_names is not None and len(set(ds.persona_names)) == 7
    assert set(cat.domains) == set(config.domains)
    assert all(path[0] == dom for path, dom in zip(cat.categories, cat.domains, strict=True))
    # Every category has at least one item.
    assert len(set(cat.categories)) == config.num_categories
    # Timestamps increase within every sequence.
    assert inter.timestamps is not None
    steps = np.diff(inter.timestamps)
    within = np.ones(len(steps), dtype=bool)
    within[inter.indptr[1:-1] - 1] = False
    assert (steps[within] > 0).all()


def test_world_is_well_formed() -> None:
    config = SyntheticConfig(num_personas=20)
    world = build_world(config)
    np.testing.assert_allclose(world.persona_mixtures.sum(axis=1), 1.0)
    np.testing.assert_allclose(world.transitions.sum(axis=1), 1.0)
    assert (np.diag(world.transitions) == 0).all()
    support = (world.persona_mixtures > 0).sum(axis=1)
    assert support.min() >= config.max_interests
    for p, row in enumerate(world.persona_mixtures):  # 1-3 domains per persona
        assert 1 <= len(set(world.category_domain[row > 0].tolist())) <= 3, p
    # The primary complement of "Cooking videos" is "Cooking products" (same theme, next domain).
    c = world.category_names.index("Cooking videos")
    assert world.category_names[int(world.transitions[c].argmax())] == "Cooking products"
    assert all(
        d.startswith(n)
        for n, d in zip(world.persona_names, world.persona_descriptions, strict=True)
    )


@pytest.mark.parametrize("seed", [0, 1])
def test_knowing_the_persona_helps(seed: int) -> None:
    """Next-category top-1 accuracy on held-out users: (persona, last category) counts beat
    last-category counts, which beat global popularity, by clear margins."""
    ds = generate(SyntheticConfig(num_users=4000, num_items=400, seed=seed))
    assert ds.personas is not None
    inter = ds.interactions
    cats = _category_index(ds)[inter.items]
    C, P = int(cats.max()) + 1, int(ds.personas.max()) + 1
    user = np.repeat(np.arange(len(inter)), inter.lengths())
    has_prev = np.ones(len(cats), dtype=bool)
    has_prev[inter.indptr[:-1]] = False
    prev, nxt, persona = np.roll(cats, 1), cats, ds.personas[user]
    fit, held = has_prev & (user % 2 == 0), has_prev & (user % 2 == 1)

    by_last = np.zeros((C, C))
    np.add.at(by_last, (prev[fit], nxt[fit]), 1)
    by_persona = np.zeros((P, C, C))
    np.add.at(by_persona, (persona[fit], prev[fit], nxt[fit]), 1)
    popular = np.bincount(nxt[fit], minlength=C).argmax()

    acc_global = float(np.mean(nxt[held] == popular))
    acc_last = float(np.mean(nxt[held] == by_last.argmax(1)[prev[held]]))
    acc_persona = float(np.mean(nxt[held] == by_persona.argmax(2)[persona[held], prev[held]]))
    assert acc_last > 2.5 * acc_global, (acc_global, acc_last)
    assert acc_persona > 1.15 * acc_last and acc_persona - acc_last > 0.03, (acc_last, acc_persona)


def test_item_texts_cluster_by_category() -> None:
    """Word overlap (Jaccard) is much higher within a category than across categories."""
    ds = generate(SyntheticConfig(num_users=10, num_items=600, seed=2))
    words = [set(re.findall(r"[a-z]+", t.lower())) for t in ds.catalog.texts]
    cat = _category_index(ds)
    rng = np.random.default_rng(0)
    pairs = rng.integers(0, len(words), size=(4000, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    jac = np.array([len(words[a] & words[b]) / len(words[a] | words[b]) for a, b in pairs])
    same = cat[pairs[:, 0]] == cat[pairs[:, 1]]
    assert same.sum() > 20
    assert jac[same].mean() > 2 * jac[~same].mean()


def test_catalog_codes_render_lazily() -> None:
    config = SyntheticConfig(num_users=10, num_items=300, seed=4)
    world = build_world(config)
    codes = generate_catalog_codes(config, world)
    catalog = generate(config).catalog
    rows = np.array([5, 0, 299])
    assert codes.texts(rows) == [catalog.texts[i] for i in rows.tolist()]
    assert codes.titles(rows) == [catalog.titles[i] for i in rows.tolist()]
    assert codes.texts() == catalog.texts


def test_large_catalog_codes_are_cheap() -> None:
    config = SyntheticConfig(num_users=10, num_items=300_000, num_categories=96, seed=1)
    codes = generate_catalog_codes(config, build_world(config))
    assert codes.words.shape == (300_000, 7)
    assert np.bincount(codes.category, minlength=96).min() >= 1
    texts = codes.texts(np.arange(299_990, 300_000))
    assert len(texts) == 10 and all(t.endswith(".") for t in texts)


def test_custom_domains_and_tiny_configs() -> None:
    ds = generate(
        SyntheticConfig(num_users=20, num_items=5, num_categories=5, domains=("podcasts",))
    )
    assert ds.catalog.domain_names() == ["podcasts"]
    assert "podcasts" in ds.catalog.texts[0]
    one = generate(SyntheticConfig(num_users=5, num_items=1, num_categories=1, domains=("x",)))
    assert one.interactions.items.tolist() == [0] * one.interactions.num_interactions
    many = SyntheticConfig(num_users=50, num_items=2000, num_categories=200, seed=3)
    assert len(set(generate(many).catalog.categories)) == 200


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"num_users": 0}, "num_users=0 must be >= 1"),
        ({"num_items": 10}, "self.num_items=10 must be >= self.num_categories=48"),
        ({"num_categories": 2}, "must be >= len"),
        ({"domains": ()}, "must be non-empty and distinct"),
        ({"domains": ("a", "a")}, "must be non-empty and distinct"),
        ({"domains": ("a", " ")}, "contains an empty name"),
        ({"min_seq_len": 9, "max_seq_len": 4}, "self.max_seq_len=4 must be >= self.min_seq_len=9"),
        ({"min_interests": 0}, "min_interests=0"),
        ({"min_interests": 5, "max_interests": 3}, "min_interests=5"),
        ({"transition_strength": 1.5}, r"transition_strength=1\.5 must be in \[0, 1\]"),
        ({"interest_strength": -0.1}, "interest_strength=-0.1"),
        ({"zipf_exponent": -1.0}, "zipf_exponent=-1.0"),
        ({"brands_per_category": 0}, "brands_per_category=0"),
        ({"seed": -1}, "seed=-1"),
        ({"num_categories": 4000, "num_items": 4000}, r"num_categories=4000\^2 must be <="),
    ],
)
def test_config_validation(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SyntheticConfig(**changes)
