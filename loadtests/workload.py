"""Request mixes for the load tools: which users ask, with which histories, for how many items.

A `Workload` is a pool of pre-built `Call`s drawn at random during a run, so building requests
costs nothing while the clock runs. Where the histories come from, best first:

1. a dataset (`--dataset SPEC`, or the spec a release recorded in its manifest when it can be
   loaded here): histories are real prefixes of real user sequences (the newest
   `history_max` items before a random cut point), users drawn in proportion to their
   activity, so item popularity and co-occurrence are the data's own;
2. a release's catalogue only (`sid_index/items.jsonl`): popularity-skewed (Zipf) histories
   that mostly stay in one category, as browsing sessions do;
3. neither (a remote server whose catalogue is unknown): requests without a history, served
   from the user's stored history or as a cold start.

In every mix a share of requests omits the history (stored history / cold start), a share
asks for an explanation, and k varies.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sid_index.errors import ConfigError, DataError, ReasonrecError, ReleaseError


@dataclass(frozen=True, slots=True)
class RequestMix:
    """Shape of the request stream."""

    history_fraction: float = 0.85
    """Share of requests that carry a history; the rest omit it (stored history or cold start)."""
    history_max: int = 20
    """Most items in a request's history (the newest ones before the cut point)."""
    explain_fraction: float = 0.1
    """Share of requests with `explain: true`."""
    k_values: tuple[int, ...] = (5, 10, 20)
    """Values of k the stream uses (each at most the server's default beam width, 20)."""
    k_weights: tuple[float, ...] = (0.2, 0.7, 0.1)
    """Probability of each of `k_values`."""
    pool_size: int = 2000
    """Pre-built calls drawn at random during a run."""
    catalog_users: int = 1000
    """Distinct user ids when the histories are synthesized from a catalogue."""
    category_focus: float = 0.7
    """Catalogue mix: share of a history drawn from its session's category."""
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("history_fraction", "explain_fraction", "category_focus"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"RequestMix.{name}={value} must be in [0, 1]")
        if self.history_max < 1:
            raise ConfigError(f"{self.history_max=} must be >= 1")
        if not self.k_values or any(k < 1 for k in self.k_values):
            raise ConfigError(f"{self.k_values=} must be non-empty and >= 1")
        if len(self.k_weights) != len(self.k_values) or any(w < 0 for w in self.k_weights):
            raise ConfigError(f"{self.k_weights=} must be {len(self.k_values)} weights >= 0")
        if sum(self.k_weights) <= 0:
            raise ConfigError(f"{self.k_weights=} must not sum to 0")
        if self.pool_size < 1 or self.catalog_users < 1:
            raise ConfigError(f"{self.pool_size=} and {self.catalog_users=} must be >= 1")


@dataclass(frozen=True, slots=True)
class Call:
    """One recommendation request, protocol-neutral."""

    user_id: str
    history: tuple[str, ...] | None
    k: int
    explain: bool

    def json_body(self) -> dict[str, Any]:
        """The `POST /v1/recommend` body."""
        body: dict[str, Any] = {"user_id": self.user_id, "k": self.k, "explain": self.explain}
        if self.history is not None:
            body["history"] = list(self.history)
        return body

    def json_bytes(self) -> bytes:
        return json.dumps(self.json_body(), separators=(",", ":")).encode()

    def grpc_request(self) -> Any:
        """The `reasonrec.v1.RecommendRequest` message."""
        from serving.proto.gen.reasonrec.v1 import recommend_pb2 as pb

        req = pb.RecommendRequest(user_id=self.user_id, k=self.k, explain=self.explain)
        if self.history is not None:
            req.history.item_ids.extend(self.history)
        return req


class Workload:
    """A pool of calls and where they came from."""

    def __init__(self, calls: list[Call], source: str) -> None:
        if not calls:
            raise ConfigError(f"workload from {source} has no calls")
        self.calls = calls
        self.source = source

    def __len__(self) -> int:
        return len(self.calls)

    def pick(self, rng: np.random.Generator) -> Call:
        """A call drawn uniformly from the pool."""
        return self.calls[int(rng.integers(len(self.calls)))]

    # ---- builders ----------------------------------------------------------------------------

    @classmethod
    def from_args(cls, *, release: Path | None, dataset: str | None, mix: RequestMix) -> Workload:
        """`--dataset` wins, then `--release`, else history-less calls."""
        if dataset:
            return cls.from_dataset(dataset, mix)
        if release is not None:
            return cls.from_release(release, mix)
        return cls.cold(mix)

    @classmethod
    def from_dataset(cls, spec: str, mix: RequestMix) -> Workload:
        """Histories from a dataset's real sequences (ConfigError/DataError for a bad spec)."""
        from sid_index.datasets.registry import load_dataset

        ds = load_dataset(spec)
        ids = ds.catalog.item_ids
        seqs = [np.asarray(s.items) for s in ds.interactions]
        users = list(ds.interactions.user_ids)
        return cls(_calls_from_sequences(users, seqs, ids, mix), f"dataset {spec}")

    @classmethod
    def from_release(cls, release: Path, mix: RequestMix) -> Workload:
        """The dataset the release recorded when it loads here and matches the catalogue;
        else histories synthesized from the release's catalogue."""
        release = Path(release)
        items_path = release / "sid_index" / "items.jsonl"
        item_ids, categories = _read_catalog(items_path)
        spec = _recorded_dataset(release)
        why = "no dataset recorded in the manifest"
        if spec is not None:
            try:
                wl = cls.from_dataset(spec, mix)
            except ReasonrecError as exc:
                why = f"recorded dataset {spec!r} does not load here ({exc})"
            else:
                known = set(item_ids)
                used = {i for c in wl.calls for i in (c.history or ())}
                if used <= known:
                    wl.source = f"release {release} (dataset {spec})"
                    return wl
                why = f"recorded dataset {spec!r} names items outside the release catalogue"
        calls = _calls_from_catalog(item_ids, categories, mix)
        return cls(calls, f"release {release} catalogue ({why})")

    @classmethod
    def cold(cls, mix: RequestMix) -> Workload:
        """History-less calls (stored history or cold start) for a server of unknown catalogue."""
        rng = np.random.default_rng(mix.seed)
        ks, explain = _ks_and_explain(rng, mix)
        users = rng.integers(mix.catalog_users, size=mix.pool_size)
        calls = [
            Call(f"lt-user-{int(u)}", None, int(k), bool(e))
            for u, k, e in zip(users, ks, explain, strict=True)
        ]
        return cls(calls, "no catalogue: history-less requests only")


def _ks_and_explain(rng: np.random.Generator, mix: RequestMix) -> tuple[np.ndarray, np.ndarray]:
    w = np.asarray(mix.k_weights, dtype=np.float64)
    ks = rng.choice(np.asarray(mix.k_values), size=mix.pool_size, p=w / w.sum())
    explain = rng.random(mix.pool_size) < mix.explain_fraction
    return ks, explain


def _calls_from_sequences(
    users: list[str], seqs: list[np.ndarray], item_ids: list[str], mix: RequestMix
) -> list[Call]:
    """Prefixes of real sequences; a user is drawn in proportion to their activity."""
    lengths = np.asarray([len(s) for s in seqs], dtype=np.float64)
    if lengths.sum() == 0:
        raise DataError("the dataset has no interactions to build histories from")
    rng = np.random.default_rng(mix.seed)
    ks, explain = _ks_and_explain(rng, mix)
    picked = rng.choice(len(seqs), size=mix.pool_size, p=lengths / lengths.sum())
    with_history = rng.random(mix.pool_size) < mix.history_fraction
    calls = []
    for j, u in enumerate(picked):
        seq = seqs[int(u)]
        history: tuple[str, ...] | None = None
        if with_history[j]:
            cut = int(rng.integers(1, len(seq) + 1))  # at least one item
            window = seq[max(0, cut - mix.history_max) : cut]
            history = tuple(item_ids[int(i)] for i in window)
        calls.append(Call(users[int(u)], history, int(ks[j]), bool(explain[j])))
    return calls


def _calls_from_catalog(item_ids: list[str], categories: list[str], mix: RequestMix) -> list[Call]:
    """Sessions over a catalogue: Zipf item popularity, mostly within one category."""
    rng = np.random.default_rng(mix.seed)
    n = len(item_ids)
    # Zipf(1) popularity over a random order of the catalogue: a few hits, a long tail.
    popularity = np.empty(n)
    popularity[rng.permutation(n)] = 1.0 / np.arange(1, n + 1)
    popularity /= popularity.sum()
    by_category: dict[str, np.ndarray] = {}
    cat_arr = np.asarray(categories)
    for c in set(categories):
        by_category[c] = np.flatnonzero(cat_arr == c)
    ks, explain = _ks_and_explain(rng, mix)
    with_history = rng.random(mix.pool_size) < mix.history_fraction
    lengths = rng.integers(1, mix.history_max + 1, size=mix.pool_size)
    users = rng.integers(mix.catalog_users, size=mix.pool_size)
    calls = []
    for j in range(mix.pool_size):
        history: tuple[str, ...] | None = None
        if with_history[j]:
            seed_item = int(rng.choice(n, p=popularity))
            pool = by_category[categories[seed_item]]
            in_focus = rng.random(int(lengths[j])) < mix.category_focus
            rows = np.where(
                in_focus,
                rng.choice(pool, size=int(lengths[j])),
                rng.choice(n, size=int(lengths[j]), p=popularity),
            )
            rows[-1] = seed_item  # the session's newest item anchors its category
            history = tuple(item_ids[int(r)] for r in rows)
        calls.append(Call(f"lt-user-{int(users[j])}", history, int(ks[j]), bool(explain[j])))
    return calls


def _read_catalog(path: Path) -> tuple[list[str], list[str]]:
    """Item ids and leaf categories of a release catalogue (read as JSON lines, no FAISS)."""
    if not path.is_file():
        raise ReleaseError(f"{path} is missing: not a release with a sid_index part")
    ids: list[str] = []
    cats: list[str] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            try:
                row = json.loads(line)
                ids.append(str(row["item_id"]))
                cats.append("/".join(row.get("category") or ()) or "")
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ReleaseError(f"{path}:{lineno}: malformed item record ({exc!r})") from None
    if not ids:
        raise ReleaseError(f"{path} lists no items")
    return ids, cats


def _recorded_dataset(release: Path) -> str | None:
    """The dataset spec the release's sid_index part was built from, if recorded."""
    path = release / "manifest.json"
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ReleaseError(f"{path}: cannot read ({exc})") from None
    except json.JSONDecodeError as exc:
        raise ReleaseError(f"{path}: not valid JSON ({exc})") from None
    spec = manifest.get("configs", {}).get("sid_index", {}).get("dataset")
    return spec if isinstance(spec, str) and spec else None
