"""Fixtures of the fast-path tests: a tiny real release (synthetic catalogue, hashing-embedder
Semantic IDs, an untrained tiny Llama fast model) written with `ReleaseWriter`, and Redis
stores on the session's real server."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from fast_path.fast_model import FastModel, FastModelConfig, build_model
from fast_path.recommender import Recommender
from fast_path.settings import RecommenderSettings
from fast_path.vocab import FastVocab
from sid_index.datasets.synthetic import SyntheticConfig, generate
from sid_index.embedder import make_embedder
from sid_index.item_index import ItemIndexConfig
from sid_index.records import Dataset
from sid_index.release import ReleaseWriter
from sid_index.rq_kmeans import RQKMeansConfig
from sid_index.sid_builder import SIDBuildConfig
from sid_index.sid_index import SIDIndex, SIDIndexConfig
from slow_path.history_store import RedisHistoryStore
from slow_path.trace_store import RedisTraceStore

RELEASE_VERSION = "test-release-1"
TRAINED_WINDOW = 12
"""`configs.fast_model.max_items` written into the test release's manifest."""


@dataclass(frozen=True)
class TinyRelease:
    """The test release on disk and its loaded parts (shared by the whole session)."""

    path: Path
    dataset: Dataset
    index: SIDIndex
    fast_model: FastModel

    def history(self, user: int) -> tuple[str, ...]:
        """A synthetic user's sequence as external item ids, oldest first."""
        items = self.dataset.interactions.sequence(user).items
        return tuple(self.dataset.catalog.item_ids[int(i)] for i in items)


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The test box has 2 cores shared with other jobs: multi-threaded GEMMs of a tiny model
    # spend milliseconds in thread barriers, one thread runs them in microseconds.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_release(tmp_path_factory: pytest.TempPathFactory) -> TinyRelease:
    """A release with `sid_index/` and `fast_model/` parts over 240 synthetic items."""
    dataset = generate(
        SyntheticConfig(num_users=60, num_items=240, num_personas=4, num_categories=8, seed=3)
    )
    config = SIDIndexConfig(
        sids=SIDBuildConfig(rq=RQKMeansConfig(levels=(6, 6), niter=5, seed=0)),
        index=ItemIndexConfig(kind="flat"),
    )
    index = SIDIndex.build(dataset, config, make_embedder("hashing", dim=64))
    torch.manual_seed(0)
    vocab = FastVocab(index.sids.level_sizes, num_personas=4)
    arch = FastModelConfig(
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        max_positions=256,
        dropout=0.0,
    )
    model = build_model(vocab, arch)
    with torch.no_grad():
        # Untrained weights at the default 0.02 scale give near-uniform next-token
        # distributions, where beam order is decided by float noise; a wider init makes scores
        # well separated, so batch-vs-single comparisons test the code and not rounding.
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    fast_model = FastModel(model.eval(), vocab, arch)
    path = tmp_path_factory.mktemp("release") / "release"
    with ReleaseWriter(path, version=RELEASE_VERSION) as writer:
        index.save(writer.part_dir("sid_index"))
        writer.set_config("sid_index", config.to_dict())
        fast_model.save(writer.part_dir("fast_model"))
        writer.set_config("fast_model", {"max_items": TRAINED_WINDOW})
    loaded = Recommender.from_release(
        path, trace_store=None, history_store=None, settings=_settings()
    )
    return TinyRelease(path, dataset, loaded.index, loaded.fast_model)


def _settings(**overrides: Any) -> RecommenderSettings:
    return RecommenderSettings.load(**{"num_threads": 1, "warmup": False, **overrides})


MakeRecommender = Callable[..., Recommender]


@pytest.fixture
def make_recommender(tiny_release: TinyRelease) -> MakeRecommender:
    """Factory: a Recommender over the session's loaded release with the given stores and
    settings overrides (cheap: the model and index are shared)."""

    def make(trace_store: Any = None, history_store: Any = None, **overrides: Any) -> Recommender:
        return Recommender(
            tiny_release.fast_model,
            tiny_release.index,
            release_version=RELEASE_VERSION,
            trace_store=trace_store,
            history_store=history_store,
            settings=_settings(**overrides),
            trained_window=TRAINED_WINDOW,
        )

    return make


@pytest.fixture
def trace_store(redis_client: Any) -> RedisTraceStore:
    """A trace store on the session's Redis (db flushed for the test)."""
    return RedisTraceStore(redis_client, ttl_s=600.0, read_budget_s=1.0)


@pytest.fixture
def history_store(redis_client: Any) -> RedisHistoryStore:
    """A history store on the session's Redis (db flushed for the test)."""
    return RedisHistoryStore(redis_client, read_budget_s=1.0)
