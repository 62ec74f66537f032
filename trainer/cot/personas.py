"""Persona prototypes: the ~20 user types of Persona Abstraction, discovered from the data.

A user is described by the normalized histogram of their history over item features
(`trainer/cot/item_features.py`: categories + domains, else level-0 SID prefixes).

Histograms are square-rooted (so Euclidean k-means approximates the Hellinger distance between
distributions) and clustered with seeded k-means++ / Lloyd in numpy. Each prototype gets a
readable name and a one-line description from its dominant features, e.g.
"paper & pens" / "mostly Paper, Pens, some Filing".

`PersonaModel` saves as JSON (feature keys, centroids, names); loading binds it to the item
features of a catalogue by feature key, so a catalogue that gained items still works.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np

from sid_index.errors import ConfigError, DataError
from sid_index.records import Catalog, Interactions
from trainer.cot.item_features import ItemFeatures, item_features

FORMAT_VERSION = 1
_USER_CHUNK = 65536  # users per histogram chunk: bounds the (chunk, F) float64 buffer
_MAX_NAME_FEATURES = 2
_MAX_DESC_FEATURES = 4
PERSONA_SOURCES = ("kmeans", "labels")


@dataclass(frozen=True, slots=True)
class PersonaConfig:
    """How persona prototypes are discovered."""

    num_personas: int = 20
    """Number of prototypes (k of k-means)."""
    category_depth: int = 2
    """Category path levels used as features (1 = top level only)."""
    use_domains: bool = True
    """Add the item's domain as a feature (when the catalogue has more than one)."""
    max_features: int = 256
    """Keep the most frequent features only (the rest are ignored)."""
    half_life: float | None = None
    """Recency half-life in items for the histogram; None weighs the whole history equally
    (a persona is a stable trait, so equal weights are the default)."""
    n_init: int = 4
    """k-means restarts; the lowest inertia wins."""
    n_iter: int = 50
    """Lloyd iterations per restart (stops early when assignments settle)."""
    max_fit_users: int = 100_000
    """Fit on a seeded sample of at most this many users (assignment covers everyone)."""
    seed: int = 0
    """Seed of the user sample and of k-means."""
    source: str = "kmeans"
    """"kmeans": prototypes discovered by clustering users' histograms. "labels": one prototype
    per known persona label (e.g. the synthetic generator's planted personas, or an LLM's
    persona annotation), its centroid the mean histogram of the users that carry it; the CoT
    teacher then writes each training user's *own* label, so the reasoner learns to infer
    the persona from the history (`PersonaModel.from_labels`)."""

    def __post_init__(self) -> None:
        if self.source not in PERSONA_SOURCES:
            raise ConfigError(f"{self.source=} must be one of {', '.join(PERSONA_SOURCES)}")
        for name in ("num_personas", "category_depth", "max_features", "n_init", "n_iter"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name}={getattr(self, name)} must be >= 1")
        if self.max_fit_users < self.num_personas:
            raise ConfigError(f"{self.max_fit_users=} must be >= {self.num_personas=}")
        if self.half_life is not None and self.half_life <= 0:
            raise ConfigError(f"{self.half_life=} must be > 0 (or None)")


def features_for(catalog: Catalog, codes: np.ndarray | None, config: PersonaConfig) -> ItemFeatures:
    """The item features `config` asks for (categories + domains, else level-0 SID prefixes)."""
    return item_features(
        catalog,
        codes,
        category_depth=config.category_depth,
        use_domains=config.use_domains,
        max_features=config.max_features,
    )


def histories_from(interactions: Interactions) -> list[np.ndarray]:
    """Every user's item array (views)."""
    return csr_histories(interactions.indptr, interactions.items)


def csr_histories(indptr: np.ndarray, items: np.ndarray) -> list[np.ndarray]:
    """Per user, `items[indptr[u]:indptr[u+1]]` (views)."""
    bounds = np.asarray(indptr, dtype=np.int64).tolist()
    return [items[lo:hi] for lo, hi in pairwise(bounds)]


def user_histograms(
    features: ItemFeatures, histories: Sequence[np.ndarray], half_life: float | None = None
) -> np.ndarray:
    """(U, F) float64 rows: each user's feature histogram, normalized to sum 1 (0 if empty)."""
    F, U = features.num_features, len(histories)
    out = np.zeros((U, F))
    for lo in range(0, U, _USER_CHUNK):
        chunk = histories[lo : lo + _USER_CHUNK]
        lengths = np.fromiter((len(h) for h in chunk), dtype=np.int64, count=len(chunk))
        if not lengths.sum():
            continue
        items = np.concatenate([np.asarray(h, dtype=np.int64) for h in chunk])  # (nnz,)
        user = np.repeat(np.arange(len(chunk)), lengths)  # (nnz,)
        weight = np.ones(len(items))
        if half_life is not None:
            ends = np.repeat(np.cumsum(lengths), lengths)
            weight = 0.5 ** ((ends - 1 - np.arange(len(items))) / half_life)  # age in items
        fid = features.ids[items]  # (nnz, M)
        valid = fid >= 0
        cell = (user[:, None] * F + fid)[valid]
        hist = np.bincount(cell, np.broadcast_to(weight[:, None], fid.shape)[valid], len(chunk) * F)
        hist = hist.reshape(len(chunk), F)
        total = hist.sum(axis=1, keepdims=True)
        out[lo : lo + len(chunk)] = np.divide(hist, total, out=np.zeros_like(hist), where=total > 0)
    return out


def kmeans(
    x: np.ndarray, k: int, *, n_init: int, n_iter: int, seed: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """Seeded k-means++ / Lloyd on (N, D) rows; returns ((k, D) centroids, (N,) labels, inertia)."""
    if len(x) < k:
        raise DataError(f"k-means needs at least {k} rows, got {len(x)}")
    rng = np.random.default_rng(seed)
    sq = (x * x).sum(axis=1)  # (N,)
    best: tuple[np.ndarray, np.ndarray, float] | None = None
    for _ in range(n_init):
        cent = np.empty((k, x.shape[1]))
        cent[0] = x[rng.integers(len(x))]
        d2 = np.maximum(sq - 2 * x @ cent[0] + cent[0] @ cent[0], 0)  # (N,)
        for j in range(1, k):
            p = d2 / d2.sum() if d2.sum() > 0 else None
            cent[j] = x[rng.choice(len(x), p=p)]
            d2 = np.minimum(d2, np.maximum(sq - 2 * x @ cent[j] + cent[j] @ cent[j], 0))
        labels = np.full(len(x), -1)
        for _ in range(n_iter):
            dist = sq[:, None] - 2 * x @ cent.T + (cent * cent).sum(axis=1)[None]  # (N, k)
            new = dist.argmin(axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            counts = np.bincount(labels, minlength=k)
            sums = np.zeros_like(cent)
            np.add.at(sums, labels, x)
            empty = np.flatnonzero(counts == 0)
            if len(empty):  # reseed empty clusters at the worst-fitting rows
                far = np.argsort(-dist[np.arange(len(x)), labels], kind="stable")[: len(empty)]
                sums[empty], counts[empty] = x[far], 1
            cent = sums / counts[:, None]
        dist = sq[:, None] - 2 * x @ cent.T + (cent * cent).sum(axis=1)[None]
        labels = dist.argmin(axis=1)
        inertia = float(np.maximum(dist[np.arange(len(x)), labels], 0).sum())
        if best is None or inertia < best[2]:
            best = (cent, labels, inertia)
    assert best is not None  # n_init >= 1
    return best


def _fit_sample(num_users: int, config: PersonaConfig) -> np.ndarray | None:
    """Sorted rows of a seeded sample of `config.max_fit_users` users (None: use them all); it
    bounds the (U, F) histogram buffer of a fit."""
    if num_users <= config.max_fit_users:
        return None
    rng = np.random.default_rng([config.seed, 7])
    return np.sort(rng.choice(num_users, config.max_fit_users, replace=False))


class PersonaModel:
    """Persona prototypes: centroids over item features plus readable names."""

    def __init__(
        self,
        config: PersonaConfig,
        feature_keys: Sequence[str],
        centroids: np.ndarray,
        names: Sequence[str],
        descriptions: Sequence[str],
        features: ItemFeatures | None = None,
    ) -> None:
        if centroids.shape != (len(names), len(feature_keys)) or len(descriptions) != len(names):
            raise DataError(
                f"persona centroids {centroids.shape} do not match {len(names)} names "
                f"and {len(feature_keys)} features"
            )
        self.config = config
        self.feature_keys = list(feature_keys)
        self.centroids = np.asarray(centroids, dtype=np.float64)
        """(P, F) prototype centroids in square-root histogram space."""
        self.names = list(names)
        self.descriptions = list(descriptions)
        self._features: ItemFeatures | None = None
        self._columns = np.zeros(0, dtype=np.int64)
        if features is not None:
            self.bind(features)

    @property
    def num_personas(self) -> int:
        return len(self.names)

    def bind(self, features: ItemFeatures) -> None:
        """Use these item features for assignment (matched to the centroids by feature key)."""
        where = {k: i for i, k in enumerate(self.feature_keys)}
        # Column of each item feature in the centroid space; -1 for features the model lacks.
        self._columns = np.array([where.get(k, -1) for k in features.keys], dtype=np.int64)
        self._features = features

    @classmethod
    def fit(
        cls, features: ItemFeatures, histories: Sequence[np.ndarray], config: PersonaConfig
    ) -> PersonaModel:
        """Discover `config.num_personas` prototypes from users' histories."""
        usable = [h for h in histories if len(h)]
        pick = _fit_sample(len(usable), config)
        if pick is not None:
            usable = [usable[i] for i in pick.tolist()]
        hist = user_histograms(features, usable, config.half_life)  # (U, F)
        hist = hist[hist.sum(axis=1) > 0]
        if len(hist) < config.num_personas:
            raise DataError(
                f"{len(hist)} users with features, fewer than {config.num_personas=} personas"
            )
        cent, labels, _ = kmeans(
            np.sqrt(hist), config.num_personas, n_init=config.n_init, n_iter=config.n_iter,
            seed=config.seed,
        )  # fmt: skip
        names, descs = _name_prototypes(features, hist, labels, config.num_personas)
        return cls(config, features.keys, cent, names, descs, features)

    @classmethod
    def from_labels(
        cls,
        features: ItemFeatures,
        histories: Sequence[np.ndarray],
        labels: np.ndarray,
        names: Sequence[str] | None,
        config: PersonaConfig,
    ) -> PersonaModel:
        """One prototype per known persona label: the centroid of its users' histograms
        (over a seeded sample of `config.max_fit_users` users when there are more).

        Args:
            histories: one history per user (catalogue indices).
            labels: (U,) persona id per user, in [0, config.num_personas).
            names: readable name per persona id (None: named from the histograms, as `fit`).
        """
        labels = np.asarray(labels, dtype=np.int64)
        k = config.num_personas
        if labels.shape != (len(histories),):
            raise DataError(f"{labels.shape=} does not match {len(histories)} histories")
        if len(labels) and (labels.min() < 0 or labels.max() >= k):
            raise DataError(
                f"persona labels must lie in [0, {k}); got {labels.min()}..{labels.max()}"
            )
        if names is not None and len(names) != k:
            raise DataError(f"{len(names)} persona names for {k} personas")
        pick = _fit_sample(len(histories), config)
        if pick is not None:
            histories, labels = [histories[i] for i in pick.tolist()], labels[pick]
        hist = user_histograms(features, histories, config.half_life)  # (U, F)
        has = hist.sum(axis=1) > 0
        root = np.sqrt(hist)
        cent = np.zeros((k, hist.shape[1]))
        counts = np.bincount(labels[has], minlength=k)
        np.add.at(cent, labels[has], root[has])
        cent /= np.maximum(counts, 1)[:, None]
        auto_names, descs = _name_prototypes(features, hist[has], labels[has], k)
        final = [str(n) for n in names] if names is not None else auto_names
        return cls(config, features.keys, cent, final, descs, features)

    def vectors(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(U, F_model) square-root histograms of histories in the model's feature space."""
        if self._features is None:
            raise ConfigError("PersonaModel has no item features bound (call bind())")
        hist = user_histograms(self._features, histories, self.config.half_life)
        out = np.zeros((len(histories), len(self.feature_keys)))
        known = self._columns >= 0
        out[:, self._columns[known]] = hist[:, known]
        total = out.sum(axis=1, keepdims=True)
        return np.sqrt(np.divide(out, total, out=np.zeros_like(out), where=total > 0))

    def assign_many(self, histories: Sequence[np.ndarray]) -> np.ndarray:
        """(U,) int64 persona id of each history (the nearest prototype)."""
        v = self.vectors(histories)  # (U, F)
        c = self.centroids
        dist = -2 * v @ c.T + (c * c).sum(axis=1)[None]  # (U, P), up to the constant |v|^2
        return dist.argmin(axis=1).astype(np.int64)

    def assign(self, history: np.ndarray) -> int:
        """Persona id of one history ((T,) catalogue indices)."""
        return int(self.assign_many([np.asarray(history)])[0])

    def title(self, persona_id: int) -> str:
        """ "name: description" of a persona, the text of the CoT's persona part."""
        return f"{self.names[persona_id]}: {self.descriptions[persona_id]}"

    def save(self, path: Path) -> None:
        """Write the model as one JSON file."""
        doc = {
            "format_version": FORMAT_VERSION,
            "config": asdict(self.config),
            "feature_keys": self.feature_keys,
            "centroids": self.centroids.tolist(),
            "names": self.names,
            "descriptions": self.descriptions,
        }
        Path(path).write_text(json.dumps(doc, ensure_ascii=False) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path, features: ItemFeatures | None = None) -> PersonaModel:
        """Read a model written by `save` (DataError for a missing or malformed file)."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
            if doc.get("format_version") != FORMAT_VERSION:
                raise DataError(f"{path}: unknown persona model format {doc.get('format_version')}")
            return cls(
                PersonaConfig(**doc["config"]),
                doc["feature_keys"],
                np.asarray(doc["centroids"], dtype=np.float64).reshape(
                    len(doc["names"]), len(doc["feature_keys"])
                ),
                doc["names"],
                doc["descriptions"],
                features,
            )
        except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{path}: not a persona model ({type(exc).__name__}: {exc})") from None


def _name_prototypes(
    features: ItemFeatures, hist: np.ndarray, labels: np.ndarray, k: int
) -> tuple[list[str], list[str]]:
    """Readable name and one-line description per prototype from its dominant features."""
    keys = features.keys
    depth = np.array([k.count(" > ") + 1 if k.startswith("cat:") else 0 for k in keys])
    domain_fam = np.array([k.startswith("domain:") for k in keys], dtype=bool)
    # Name by the most specific family present: the deepest categories, else SID/group features.
    name_fam = depth == depth.max() if depth.max() > 0 else ~domain_fam
    glob = hist.mean(axis=0) + 1e-12  # (F,)
    names, descs = [], []
    for j in range(k):
        members = hist[labels == j]
        mix = members.mean(axis=0) if len(members) else np.zeros(hist.shape[1])  # (F,)
        lift = mix / glob
        fam_mass = mix * name_fam
        share = fam_mass / max(fam_mass.sum(), 1e-12)
        # Distinctive and sizeable: mass weighted by log-lift (never below 0).
        score = np.where(name_fam, share * np.log1p(np.maximum(lift, 0)), -1.0)
        top = [int(i) for i in np.argsort(-score, kind="stable") if score[i] > 0]
        head = [features.labels[i].lower() for i in top[:_MAX_NAME_FEATURES]]
        # Category names often contain "&" themselves ("Labels & Stickers"): join with "+".
        joiner = " + " if any("&" in h for h in head) else " & "
        name = joiner.join(head) if head else f"persona {j}"
        dom_mass = np.where(domain_fam, mix, 0.0)
        if dom_mass.sum() > 0:
            dom_share = dom_mass / dom_mass.sum()
            doms = [features.labels[i] for i in np.argsort(-dom_share) if dom_share[i] >= 0.25]
            name += f" ({', '.join(doms)})"
        if name in names:
            name += f" #{j}"
        names.append(name)
        by_share = [int(i) for i in np.argsort(-share, kind="stable") if share[i] >= 0.05]
        mostly = [i for i in by_share[:_MAX_DESC_FEATURES] if share[i] >= 0.15]
        some = [i for i in by_share[:_MAX_DESC_FEATURES] if share[i] < 0.15]
        parts = []
        if mostly:
            parts.append("mostly " + ", ".join(features.labels[i] for i in mostly))
        if some:
            parts.append("some " + ", ".join(features.labels[i] for i in some))
        descs.append(", ".join(parts) if parts else "a broad mix")
    return names, descs


@dataclass(frozen=True, slots=True)
class PersonaAgreement:
    """Agreement of discovered personas with planted ones (synthetic data)."""

    nmi: float
    """Normalized mutual information (arithmetic mean of entropies), in [0, 1]."""
    purity: float
    """Share of users whose cluster's majority planted persona is their own."""
    chance_nmi: float
    """Mean NMI of randomly permuted assignments (what no signal gives)."""
    chance_purity: float
    """Mean purity of randomly permuted assignments."""


def _nmi_purity(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    _, p = np.unique(pred, return_inverse=True)
    _, t = np.unique(truth, return_inverse=True)
    table = np.zeros((p.max() + 1, t.max() + 1))
    np.add.at(table, (p, t), 1)
    n = table.sum()
    joint = table / n
    pp, pt = joint.sum(axis=1), joint.sum(axis=0)
    nz = joint > 0
    mi = float((joint[nz] * np.log(joint[nz] / np.outer(pp, pt)[nz])).sum())
    h = -float((pp * np.log(pp)).sum() + (pt * np.log(pt)).sum())
    nmi = 2 * mi / h if h > 0 else 1.0
    return nmi, float(table.max(axis=1).sum() / n)


def persona_agreement(
    pred: np.ndarray, truth: np.ndarray, *, permutations: int = 5, seed: int = 0
) -> PersonaAgreement:
    """NMI and purity of `pred` against `truth`, with their chance levels."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape or not len(pred):
        raise DataError(f"persona arrays of shapes {pred.shape} and {truth.shape} do not match")
    nmi, purity = _nmi_purity(pred, truth)
    rng = np.random.default_rng(seed)
    chance = np.array([_nmi_purity(rng.permutation(pred), truth) for _ in range(permutations)])
    return PersonaAgreement(nmi, purity, float(chance[:, 0].mean()), float(chance[:, 1].mean()))
