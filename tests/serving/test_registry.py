"""`Registry` swaps: a request in flight on a replaced release finishes there, new requests go
to the new snapshot at once, the old batcher stops only after the drain; a failed reload keeps
serving; releases shared by several names are loaded once."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fast_path.recommender import Recommendation, Recommender, RecommendRequest
from serving.errors import ApiError
from serving.experiments import Variant
from serving.registry import Registry


class Gated:
    """A Recommender whose batches wait for a gate (to hold a request in flight)."""

    def __init__(self, inner: Recommender, gate: threading.Event | None) -> None:
        self.inner = inner
        self.gate = gate
        self.settings = inner.settings
        self.release_version = inner.release_version

    def known_item(self, item_id: str) -> bool:
        return self.inner.known_item(item_id)

    def validate(self, request: RecommendRequest) -> None:
        self.inner.validate(request)

    def recommend_outcomes(self, requests: Sequence[RecommendRequest]) -> list[Any]:
        if self.gate is not None:
            assert self.gate.wait(30)
        return self.inner.recommend_outcomes(requests)


def _request(history: list[str]) -> Any:
    def make(variant: Variant) -> RecommendRequest:
        return RecommendRequest("r", history=tuple(history), k=3, num_beams=variant.beams(3, None))

    return make


def test_swap_drains_the_old_release(releases: Any, tools: Any, tmp_path: Path) -> None:
    gates = [threading.Event(), None]  # the first load is gated, reloads are not
    loads: list[Gated] = []

    def loader(path: Path) -> Any:
        inner = Recommender.from_release(
            path, trace_store=None, history_store=None, settings=tools.recommender_settings()
        )
        loads.append(Gated(inner, gates[min(len(loads), 1)]))
        return loads[-1]

    async def main() -> None:
        registry = Registry(loader, release_dir=releases.a, experiments_file=None)
        with pytest.raises(ApiError, match="not loaded yet"):
            registry.assign("r")
        await registry.load()
        old = registry.snapshot.releases["default"]
        history = releases.history(1)[:4]
        held = asyncio.ensure_future(registry.recommend("r", _request(history)))
        await asyncio.sleep(0.05)
        assert old.inflight == 1
        assert await registry.reload(force=True)
        new = registry.snapshot.releases["default"]
        assert new is not old and old.retired and old.batcher.running  # draining, not stopped
        _, fresh = await registry.recommend("r", _request(history))  # served by the new one
        assert isinstance(fresh, Recommendation) and not held.done()
        gates[0].set()  # type: ignore[union-attr]
        _, finished = await held
        assert [i.item_id for i in finished.items] == [i.item_id for i in fresh.items]
        for _ in range(100):
            if not old.batcher.running:
                break
            await asyncio.sleep(0.02)
        assert not old.batcher.running and new.batcher.running
        await registry.close()
        assert not new.batcher.running
        with pytest.raises(ApiError):
            await registry.recommend("r", _request(history))

    asyncio.run(main())
    assert len(loads) == 2


def test_failed_reload_keeps_serving_and_shared_releases_load_once(
    releases: Any, tools: Any, tmp_path: Path
) -> None:
    loaded: list[Path] = []

    def loader(path: Path) -> Any:
        loaded.append(path)
        return Recommender.from_release(
            path, trace_store=None, history_store=None, settings=tools.recommender_settings()
        )

    path = tmp_path / "experiments.yaml"
    # Two names for one directory: one Recommender serves both.
    path.write_text(
        f"releases: {{again: {releases.a}}}\n"
        "experiments: [{name: e, salt: s, variants: [{name: x, weight: 1, release: again}]}]\n"
    )

    async def main() -> None:
        registry = Registry(loader, release_dir=releases.a, experiments_file=path)
        await registry.load()
        snap = registry.snapshot
        assert snap.releases["again"] is snap.releases["default"]
        assert snap.versions() == {"default": "serving-test-a", "x": "serving-test-a"}
        assert not await registry.reload()  # nothing changed: no swap
        path.write_text("experiments: [{name: e, salt: s, variants: [{name: x}]}]\n")
        assert not await registry.reload()
        assert registry.last_error is not None and "weight: Field required" in registry.last_error
        assert registry.snapshot is snap
        path.write_text("releases: {gone: /nonexistent}\n"
                        "experiments: [{name: e, salt: s, variants: [{name: x, weight: 1, "
                        "release: gone}]}]\n")  # fmt: skip
        assert not await registry.reload()
        assert "manifest.json" in (registry.last_error or "") and registry.snapshot is snap
        _, rec = await registry.recommend("u", _request(releases.history(2)[:3]))
        assert rec.release_version == "serving-test-a"
        await registry.close()

    asyncio.run(main())
    assert loaded == [releases.a]
