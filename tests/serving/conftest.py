"""Fixtures of the serving tests: two tiny real releases (synthetic catalogue, hashing-embedder
Semantic IDs, untrained tiny Llama fast models that differ in their weights) written with
`ReleaseWriter`, and a real server (uvicorn + gRPC on loopback ports, one event loop on a
background thread) over them with the session's Redis."""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from fast_path.fast_model import FastModel, FastModelConfig, build_model
from fast_path.settings import RecommenderSettings
from fast_path.vocab import FastVocab
from serving.runtime import ServingRuntime
from serving.server import ThreadedServer
from serving.settings import ServingSettings
from sid_index.datasets.synthetic import SyntheticConfig, generate
from sid_index.embedder import make_embedder
from sid_index.item_index import ItemIndexConfig
from sid_index.records import Dataset
from sid_index.release import ReleaseWriter, load_release
from sid_index.rq_kmeans import RQKMeansConfig
from sid_index.sid_builder import SIDBuildConfig
from sid_index.sid_index import SIDIndex, SIDIndexConfig
from slow_path.settings import RedisSettings, StoreSettings, load_settings
from slow_path.worker_settings import WorkerSettings

VERSION_A = "serving-test-a"
VERSION_B = "serving-test-b"
WINDOW = 12


@dataclass(frozen=True)
class Releases:
    """Two releases over one catalogue (B's fast model has other weights)."""

    a: Path
    b: Path
    dataset: Dataset

    def history(self, user: int) -> list[str]:
        """A synthetic user's sequence as external item ids, oldest first."""
        items = self.dataset.interactions.sequence(user).items
        return [self.dataset.catalog.item_ids[int(i)] for i in items]

    @property
    def item_ids(self) -> list[str]:
        return list(self.dataset.catalog.item_ids)


def _fast_model(index: SIDIndex, seed: int) -> FastModel:
    torch.manual_seed(seed)
    vocab = FastVocab(index.sids.level_sizes, num_personas=4)
    arch = FastModelConfig(
        hidden_size=32, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=64,
        max_positions=256, dropout=0.0,
    )  # fmt: skip
    model = build_model(vocab, arch)
    with torch.no_grad():
        # Wider than the default init: well-separated scores, so rankings are not float noise.
        for p in model.parameters():
            if p.ndim >= 2:
                p.normal_(0.0, 0.3)
    return FastModel(model.eval(), vocab, arch)


@pytest.fixture(scope="session")
def releases(tmp_path_factory: pytest.TempPathFactory) -> Releases:
    """Release A and release B (B carries A's sid_index/ and has its own fast_model/)."""
    dataset = generate(
        SyntheticConfig(num_users=60, num_items=240, num_personas=4, num_categories=8, seed=3)
    )
    config = SIDIndexConfig(
        sids=SIDBuildConfig(rq=RQKMeansConfig(levels=(6, 6), niter=5, seed=0)),
        index=ItemIndexConfig(kind="flat"),
    )
    index = SIDIndex.build(dataset, config, make_embedder("hashing", dim=64))
    root = tmp_path_factory.mktemp("releases")
    with ReleaseWriter(root / "a", version=VERSION_A) as writer:
        index.save(writer.part_dir("sid_index"))
        writer.set_config("sid_index", config.to_dict())
        _fast_model(index, seed=0).save(writer.part_dir("fast_model"))
        writer.set_config("fast_model", {"max_items": WINDOW})
    with ReleaseWriter(root / "b", version=VERSION_B, base=load_release(root / "a")) as writer:
        _fast_model(index, seed=1).save(writer.part_dir("fast_model"))
    return Releases(root / "a", root / "b", dataset)


def recommender_settings(**overrides: Any) -> RecommenderSettings:
    """Test settings: one torch thread, no warm-up, budgets that tolerate a busy 2-core box."""
    base: dict[str, Any] = {
        "num_threads": 1, "warmup": False, "trace_budget_s": 0.2, "history_budget_s": 0.2,
        "verify_release": False,
    }  # fmt: skip
    return RecommenderSettings.load(**{**base, **overrides})


def serving_settings(release: Path, redis_url: str, **overrides: Any) -> ServingSettings:
    """Loopback, ephemeral ports, fast polling."""
    base: dict[str, Any] = {
        "release_dir": release, "redis_url": redis_url, "host": "127.0.0.1", "port": 0,
        "grpc_port": 0, "experiments_poll_s": 0.1, "release_poll_s": 0.2,
        "shutdown_timeout_s": 5.0, "drain_timeout_s": 5.0,
    }  # fmt: skip
    return ServingSettings.load(**{**base, **overrides})


def make_runtime(
    settings: ServingSettings, *, refresh_delay_s: float = 0.0, **rec: Any
) -> ServingRuntime:
    """A runtime with explicit settings for every package (nothing read from the env)."""
    return ServingRuntime(
        settings,
        recommender_settings=recommender_settings(**rec),
        redis_settings=load_settings(RedisSettings, redis_url=settings.redis_url),
        store_settings=load_settings(
            StoreSettings, refresh_min_new_events=3, refresh_min_interval_s=60.0
        ),
        worker_settings=load_settings(WorkerSettings, event_refresh_delay_s=refresh_delay_s),
    )


StartServer = Callable[..., ThreadedServer]


@pytest.fixture(scope="module")
def shared_server(releases: Releases, redis_url: str) -> Iterator[ThreadedServer]:
    """One default server for a whole test module (tests that only read)."""
    settings = serving_settings(releases.a, redis_url)
    with ThreadedServer(settings, make_runtime(settings)) as server:
        server.wait_loaded()
        yield server


@pytest.fixture
def start_server(releases: Releases, redis_url: str) -> Iterator[StartServer]:
    """Factory: start a real server (models loaded) with settings overrides; stopped after."""
    started: list[ThreadedServer] = []

    def start(
        *, wait: bool = True, redis: str | None = None, rec: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> ThreadedServer:  # fmt: skip
        settings = serving_settings(releases.a, redis or redis_url, **overrides)
        server = ThreadedServer(settings, make_runtime(settings, **(rec or {})))
        started.append(server)
        server.start()
        if wait:
            server.wait_loaded()
        return server

    yield start
    for server in started:
        server.stop()


def _http(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    """(status, parsed JSON or text) of one request; never raises for HTTP errors."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, method=method,
        headers={"content-type": "application/json", **(headers or {})},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    text = raw.decode()
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def _wait_for(check: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition") -> None:
    """Poll `check` until it is true."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@dataclass(frozen=True)
class Tools:
    """Helpers shared by the serving tests (test modules cannot import conftest)."""

    http: Callable[..., tuple[int, Any]] = _http
    wait_for: Callable[..., None] = _wait_for
    settings: Callable[..., ServingSettings] = serving_settings
    runtime: Callable[..., ServingRuntime] = make_runtime
    recommender_settings: Callable[..., RecommenderSettings] = recommender_settings


@pytest.fixture(scope="session")
def tools() -> Tools:
    """`tools.http(port, method, path, body)`, `tools.wait_for(check)`, settings factories."""
    return Tools()
