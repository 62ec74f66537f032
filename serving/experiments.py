"""A/B experiments: the YAML file, its validation, and the sticky per-user router.

The file (`REASONREC_EXPERIMENTS_FILE`)::

    releases:                       # name -> release directory (relative: to this file)
      b: /models/release-b
    default:                        # the variant of users in no experiment (all optional)
      release: default              # `default` is the release given by --release
      use_trace: true
      num_beams: 20
    experiments:
      - name: thinking
        salt: thinking-2025-01      # change it to reshuffle users
        traffic: 1.0                # share of users in the experiment
        variants:
          - {name: control, weight: 50, use_trace: false}
          - {name: think, weight: 50, use_trace: true}
          - {name: think-b, weight: 0, release: b, num_beams: 32}

Assignment is a pure function of (salt, user id): sha256 of the salted id gives two
independent numbers in 10,000 buckets, one deciding whether the user is in the experiment
(`traffic`), the other the variant (by cumulative weight), so a user keeps their variant
across requests, processes and replicas, and changing `traffic` does not move users between
variants. Experiments are tried in file order; the first that includes the user wins.
Variant names label every metric, so they must be unique across the file, short, and neither
`default` nor `none` (reserved by docs/metrics.md). Every key is checked (`extra="forbid"`): a
typo such as `use_traces` fails the load with a message naming it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from sid_index.errors import ConfigError

BUCKETS = 10_000
"""Buckets a salted user id is hashed into (as GrowthBook, Optimizely and Statsig do)."""
DEFAULT_RELEASE = "default"
"""Name of the release given on the command line (`--release`, REASONREC_RELEASE_DIR)."""
DEFAULT_VARIANT = "default"
"""Variant of users in no experiment."""
RESERVED_VARIANTS = frozenset({DEFAULT_VARIANT, "none"})
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"

_STRICT = ConfigDict(extra="forbid", frozen=True, strict=True)


class VariantSpec(BaseModel):
    """One arm of an experiment."""

    model_config = _STRICT

    name: str = Field(pattern=_NAME)
    """Metric label and response field; unique across the file."""
    weight: float = Field(ge=0, allow_inf_nan=False)
    """Relative share of the experiment's users (weights need not sum to 100)."""
    release: str = DEFAULT_RELEASE
    """Release name (a key of `releases`, or `default`)."""
    use_trace: bool = True
    """Thinking on: use the slow path's cached trace; off: no-trace mode."""
    num_beams: int | None = Field(default=None, ge=1)
    """Beam width (None: the request's, else 20); raised to k when smaller."""


class DefaultSpec(BaseModel):
    """What users in no experiment get (the `default` variant)."""

    model_config = _STRICT

    release: str = DEFAULT_RELEASE
    use_trace: bool = True
    num_beams: int | None = Field(default=None, ge=1)


class ExperimentSpec(BaseModel):
    """One experiment: a salt and weighted variants."""

    model_config = _STRICT

    name: str = Field(pattern=_NAME)
    salt: str = Field(min_length=1)
    traffic: float = Field(default=1.0, ge=0, le=1, allow_inf_nan=False)
    """Share of all users that enter the experiment."""
    enabled: bool = True
    """False: nobody enters (kept in the file for the record)."""
    variants: list[VariantSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_variants(self) -> ExperimentSpec:
        if sum(v.weight for v in self.variants) <= 0:
            raise ValueError(f"experiment {self.name!r}: variant weights sum to 0")
        return self


class ExperimentsConfig(BaseModel):
    """The whole experiments file."""

    model_config = _STRICT

    releases: dict[str, str] = Field(default_factory=dict)
    """Release name -> directory; `default` is reserved for the command line's release."""
    default: DefaultSpec = Field(default_factory=DefaultSpec)
    experiments: list[ExperimentSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_names(self) -> ExperimentsConfig:
        if DEFAULT_RELEASE in self.releases:
            raise ValueError(
                f"releases: {DEFAULT_RELEASE!r} is reserved for the --release directory "
                "(REASONREC_RELEASE_DIR); give this release another name"
            )
        known = {DEFAULT_RELEASE, *self.releases}
        if self.default.release not in known:
            raise ValueError(
                f"default.release {self.default.release!r} is not `default` nor a key of "
                f"releases ({sorted(self.releases)})"
            )
        seen_exp: set[str] = set()
        seen_var: set[str] = set()
        for exp in self.experiments:
            if exp.name in seen_exp:
                raise ValueError(f"experiment name {exp.name!r} appears twice")
            seen_exp.add(exp.name)
            for v in exp.variants:
                where = f"experiment {exp.name!r} variant {v.name!r}"
                if v.name in RESERVED_VARIANTS:
                    raise ValueError(f"{where}: the name is reserved ({sorted(RESERVED_VARIANTS)})")
                if v.name in seen_var:
                    raise ValueError(f"{where}: variant names must be unique across the file")
                seen_var.add(v.name)
                if v.release not in known:
                    raise ValueError(
                        f"{where}: release {v.release!r} is not `default` nor a key of "
                        f"releases ({sorted(self.releases)})"
                    )
        return self


@dataclass(frozen=True, slots=True)
class Variant:
    """What a user is served with."""

    name: str
    release: str
    use_trace: bool
    num_beams: int | None
    experiment: str | None = None
    """The experiment the user is in (None: the default variant)."""

    def beams(self, k: int, requested: int | None, fallback: int = 20) -> int:
        """Beam width of a request for k items: the variant's, else the request's, else
        `fallback`; never below k (a beam search cannot return more items than beams)."""
        chosen = self.num_beams or requested or fallback
        return max(chosen, k)

    def thinking(self, requested: bool | None) -> bool:
        """Trace use: on only when the variant has it on and the client did not opt out."""
        return self.use_trace and requested is not False


def bucket(salt: str, user_id: str) -> tuple[int, int]:
    """(traffic bucket, variant bucket) of a user, each in [0, BUCKETS), from one sha256."""
    digest = hashlib.sha256(f"{salt}\x00{user_id}".encode()).digest()
    return (
        int.from_bytes(digest[:8], "big") % BUCKETS,
        int.from_bytes(digest[8:16], "big") % BUCKETS,
    )


@dataclass(frozen=True, slots=True)
class _Arm:
    experiment: str
    salt: str
    traffic_buckets: int
    bounds: tuple[int, ...]
    """Exclusive upper bucket of each variant (cumulative weights scaled to BUCKETS)."""
    variants: tuple[Variant, ...]


class Router:
    """Assigns users to variants (pure and thread-safe; rebuilt on every reload)."""

    def __init__(self, config: ExperimentsConfig) -> None:
        self.config = config
        d = config.default
        self.default = Variant(DEFAULT_VARIANT, d.release, d.use_trace, d.num_beams)
        arms = []
        for exp in config.experiments:
            if not exp.enabled or exp.traffic == 0:
                continue
            total = sum(v.weight for v in exp.variants)
            cum, bounds = 0.0, []
            for v in exp.variants:
                cum += v.weight
                bounds.append(round(cum / total * BUCKETS))
            bounds[-1] = BUCKETS  # rounding never leaves a bucket unassigned
            arms.append(
                _Arm(
                    exp.name,
                    exp.salt,
                    round(exp.traffic * BUCKETS),
                    tuple(bounds),
                    tuple(
                        Variant(v.name, v.release, v.use_trace, v.num_beams, exp.name)
                        for v in exp.variants
                    ),
                )
            )
        self._arms = tuple(arms)

    def assign(self, user_id: str) -> Variant:
        """The user's variant (the first experiment that includes them, else `default`)."""
        for arm in self._arms:
            traffic, pick = bucket(arm.salt, user_id)
            if traffic >= arm.traffic_buckets:
                continue
            for bound, variant in zip(arm.bounds, arm.variants, strict=True):
                if pick < bound:
                    return variant
        return self.default

    def variants(self) -> tuple[Variant, ...]:
        """Every variant a user can get (default first; disabled experiments excluded)."""
        return (self.default, *(v for arm in self._arms for v in arm.variants))

    def releases_in_use(self) -> set[str]:
        """Release names some variant serves."""
        return {v.release for v in self.variants()}


def parse_experiments(data: Any, source: str = "<experiments>") -> ExperimentsConfig:
    """Validate an already-parsed YAML document (None, an empty file, means no experiments).

    Raises:
        ConfigError: a wrong type, an unknown key, a reserved or duplicate name (names them).
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: expected a mapping at the top, got {type(data).__name__}")
    try:
        return ExperimentsConfig.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<top>'}: {err['msg']}"
            for err in exc.errors()
        )
        raise ConfigError(f"{source}: {problems}") from None


def load_experiments(path: Path) -> tuple[ExperimentsConfig, bytes]:
    """Read, parse and validate the experiments file; relative release paths are resolved
    against the file's directory.

    Returns:
        The config and the raw bytes (to detect changes by content).

    Raises:
        ConfigError: the file is missing, not YAML, or invalid.
    """
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"experiments file {path}: cannot read: {exc}") from None
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"experiments file {path}: not valid YAML: {exc}") from None
    config = parse_experiments(data, f"experiments file {path}")
    base = path.parent
    resolved = {
        name: str(p if (p := Path(value)).is_absolute() else (base / p))
        for name, value in config.releases.items()
    }
    return config.model_copy(update={"releases": resolved}), raw
