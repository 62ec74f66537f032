"""A/B experiments: file validation (typos fail with the key named), sticky salted-hash
assignment, split proportions over 10^4 users, traffic gating, and the formats the ops side
ships (chart default, compose inline config)."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import yaml

from serving.experiments import (
    BUCKETS,
    DEFAULT_VARIANT,
    Router,
    Variant,
    bucket,
    load_experiments,
    parse_experiments,
)
from sid_index.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
USERS = [f"user-{i}" for i in range(10_000)]

SPLIT = """
releases:
  b: /models/b
experiments:
  - name: thinking
    salt: s1
    variants:
      - {name: control, weight: 20, use_trace: false}
      - {name: think, weight: 30}
      - {name: think-b, weight: 50, release: b, num_beams: 32}
"""


def _binomial_ok(count: int, n: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_split_proportions_over_ten_thousand_users() -> None:
    router = Router(parse_experiments(yaml.safe_load(SPLIT)))
    counts = Counter(router.assign(u).name for u in USERS)
    assert set(counts) == {"control", "think", "think-b"}
    for name, p in (("control", 0.2), ("think", 0.3), ("think-b", 0.5)):
        assert _binomial_ok(counts[name], len(USERS), p), (name, counts)


def test_assignment_is_sticky_and_depends_on_the_salt() -> None:
    config = parse_experiments(yaml.safe_load(SPLIT))
    first = [Router(config).assign(u) for u in USERS[:2000]]
    again = [Router(config).assign(u) for u in USERS[:2000]]  # a new router: another process
    assert first == again
    resalted = parse_experiments(yaml.safe_load(SPLIT.replace("salt: s1", "salt: s2")))
    moved = sum(a != Router(resalted).assign(u) for a, u in zip(first, USERS[:2000], strict=True))
    assert moved > 500  # a new salt reshuffles users
    think_b = first[[v.name for v in first].index("think-b")]
    assert think_b == Variant("think-b", "b", True, 32, "thinking")


def test_buckets_are_uniform_and_independent() -> None:
    traffic, pick = zip(*(bucket("salt", u) for u in USERS), strict=True)
    assert min(traffic) >= 0 and max(traffic) < BUCKETS
    # Deciles of both numbers are near-uniform, and the two are not the same number.
    for values in (traffic, pick):
        deciles = Counter(v * 10 // BUCKETS for v in values)
        assert all(_binomial_ok(deciles[d], len(USERS), 0.1) for d in range(10)), deciles
    assert sum(t == p for t, p in zip(traffic, pick, strict=True)) < 10


def test_traffic_gates_users_without_moving_variants() -> None:
    half = SPLIT.replace("salt: s1", "salt: s1\n    traffic: 0.5")
    full_router = Router(parse_experiments(yaml.safe_load(SPLIT)))
    half_router = Router(parse_experiments(yaml.safe_load(half)))
    got = [half_router.assign(u) for u in USERS]
    inside = [v for v in got if v.experiment is not None]
    assert _binomial_ok(len(inside), len(USERS), 0.5)
    assert all(v.name == DEFAULT_VARIANT for v in got if v.experiment is None)
    # A user inside keeps the variant they have at 100% traffic.
    assert all(v == full_router.assign(u) for v, u in zip(got, USERS, strict=True) if v.experiment)


def test_first_matching_experiment_wins_and_disabled_ones_are_skipped() -> None:
    text = """
experiments:
  - {name: dormant, salt: a, enabled: false, variants: [{name: never, weight: 1}]}
  - {name: small, salt: b, traffic: 0.1, variants: [{name: small-v, weight: 1}]}
  - {name: rest, salt: c, variants: [{name: rest-v, weight: 1}]}
"""
    router = Router(parse_experiments(yaml.safe_load(text)))
    counts = Counter(router.assign(u).name for u in USERS)
    assert set(counts) == {"small-v", "rest-v"}
    assert _binomial_ok(counts["small-v"], len(USERS), 0.1)
    assert [v.name for v in router.variants()] == ["default", "small-v", "rest-v"]


def test_variant_decides_beams_and_thinking() -> None:
    think = Variant("t", "default", True, 32)
    plain = Variant("p", "default", False, None)
    assert think.beams(k=10, requested=8) == 32 and think.beams(k=40, requested=None) == 40
    assert plain.beams(k=5, requested=8) == 8 and plain.beams(k=5, requested=None) == 20
    assert think.thinking(None) and think.thinking(True) and not think.thinking(False)
    assert not plain.thinking(True)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("experiments: [{name: e, salt: s, variants: [{name: a, weight: 1, use_traces: true}]}]",
         "experiments.0.variants.0.use_traces: Extra inputs are not permitted"),
        ("experiment: []", "experiment: Extra inputs are not permitted"),
        ("experiments: [{name: e, salt: s, variants: [{name: a, weight: '50'}]}]",
         "experiments.0.variants.0.weight: Input should be a valid number"),
        ("experiments: [{name: e, salt: s, variants: [{name: a, weight: 0}]}]",
         "variant weights sum to 0"),
        ("experiments: [{name: e, salt: s, variants: [{name: default, weight: 1}]}]",
         "the name is reserved"),
        ("experiments: [{name: e, salt: s, variants: [{name: a, weight: 1, release: x}]}]",
         "release 'x' is not `default` nor a key of releases"),
        ("experiments: [{name: e, salt: s, variants: [{name: a, weight: 1}]},"
         " {name: f, salt: t, variants: [{name: a, weight: 1}]}]",
         "variant names must be unique"),
        ("releases: {default: /x}", "'default' is reserved"),
        ("experiments: [{name: e, salt: '', variants: [{name: a, weight: 1}]}]",
         "experiments.0.salt"),
        ("experiments: [{name: 'bad name', salt: s, variants: [{name: a, weight: 1}]}]",
         "experiments.0.name"),
        ("- just a list", "expected a mapping at the top"),
    ],
)  # fmt: skip
def test_invalid_files_fail_with_the_key_named(text: str, message: str) -> None:
    with pytest.raises(ConfigError, match="<experiments>") as info:
        parse_experiments(yaml.safe_load(text))
    assert message in str(info.value)


def test_files_of_the_ops_side_parse(tmp_path: Path) -> None:
    values = yaml.safe_load((ROOT / "k8s/reasonrec/values.yaml").read_text())
    chart = parse_experiments(yaml.safe_load(values["experiments"]["content"]))
    compose = yaml.safe_load((ROOT / "docker/compose.yaml").read_text())
    inline = parse_experiments(yaml.safe_load(compose["configs"]["experiments"]["content"]))
    for config in (chart, inline, parse_experiments(None)):
        assert Router(config).assign("anyone").name == DEFAULT_VARIANT


def test_load_resolves_relative_release_paths(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "experiments.yaml"
    path.parent.mkdir()
    path.write_text("releases: {b: ../releases/b, c: /abs/c}\n")
    config, raw = load_experiments(path)
    assert config.releases == {"b": str(path.parent / "../releases/b"), "c": "/abs/c"}
    assert raw == path.read_bytes()
    with pytest.raises(ConfigError, match="cannot read"):
        load_experiments(tmp_path / "missing.yaml")
    path.write_text("experiments: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_experiments(path)
