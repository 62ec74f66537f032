"""Hot reload under concurrent HTTP and gRPC traffic: the experiments file swapped the way
Kubernetes swaps a ConfigMap (a `..data` symlink flip), a variant pointed at a second release,
a release rewritten in place, a broken file, and back to no experiments — with zero failed
requests. Also: A/B assignment through the API matches the pure router and is sticky."""

from __future__ import annotations

import os
import random
import shutil
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import yaml

from serving.experiments import Router, parse_experiments
from serving.proto.gen.reasonrec.v1 import recommend_pb2 as pb
from serving.proto.gen.reasonrec.v1 import recommend_pb2_grpc as pb_grpc
from sid_index.release import ReleaseWriter, load_release

EXPERIMENT = """
releases: {releases}
experiments:
  - name: reload
    salt: r1
    variants:
      - {{name: va, weight: 50}}
      - {{name: vb, weight: 50, release: {vb_release}, use_trace: false}}
"""


class ConfigMapDir:
    """A directory laid out like a mounted ConfigMap: `<file> -> ..data/<file>`, `..data` ->
    a timestamped directory; `write` flips `..data` atomically."""

    def __init__(self, root: Path, name: str = "experiments.yaml") -> None:
        self.root, self.name, self.n = root, name, 0
        root.mkdir(parents=True)
        (root / name).symlink_to(Path("..data") / name)

    @property
    def path(self) -> Path:
        return self.root / self.name

    def write(self, text: str) -> None:
        self.n += 1
        version = self.root / f"..v{self.n}"
        version.mkdir()
        (version / self.name).write_text(text)
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(version.name)
        os.replace(tmp, self.root / "..data")


@dataclass
class Traffic:
    """Concurrent clients recording every outcome until stopped."""

    http_port: int
    grpc_port: int
    history: list[str]
    tools: Any
    outcomes: list[tuple[str, int | str, str, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _record(self, proto: str, status: int | str, variant: str, version: str) -> None:
        with self.lock:
            self.outcomes.append((proto, status, variant, version))

    def _http(self, seed: int) -> None:
        rng = random.Random(seed)
        while not self.stop.is_set():
            body = {"user_id": f"u{rng.randrange(400)}", "history": self.history, "k": 3}
            status, got = self.tools.http(self.http_port, "POST", "/v1/recommend", body)
            ok = status == 200
            self._record(
                "http", status, got["variant"] if ok else "", got["release_version"] if ok else ""
            )

    def _grpc(self, seed: int) -> None:
        rng = random.Random(seed)
        with grpc.insecure_channel(f"127.0.0.1:{self.grpc_port}") as channel:
            stub = pb_grpc.RecommendServiceStub(channel)
            hist = pb.History(item_ids=self.history)
            while not self.stop.is_set():
                request = pb.RecommendRequest(user_id=f"u{rng.randrange(400)}", history=hist, k=3)
                try:
                    got = stub.Recommend(request, timeout=30)
                    self._record("grpc", "OK", got.variant, got.release_version)
                except grpc.RpcError as exc:
                    self._record("grpc", exc.code().name, "", "")

    def start(self, http_clients: int = 3, grpc_clients: int = 2) -> Traffic:
        for i in range(http_clients):
            self.threads.append(threading.Thread(target=self._http, args=(i,), daemon=True))
        for i in range(grpc_clients):
            self.threads.append(threading.Thread(target=self._grpc, args=(100 + i,), daemon=True))
        for t in self.threads:
            t.start()
        return self

    def join(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(60)

    def seen(self, variant: str, version: str, after: int = 0) -> bool:
        with self.lock:
            return any(v == variant and r == version for _, _, v, r in self.outcomes[after:])

    def count(self) -> int:
        with self.lock:
            return len(self.outcomes)


def test_hot_reload_under_traffic_fails_no_request(
    start_server: Any, releases: Any, tools: Any, tmp_path: Path
) -> None:
    a, b = tmp_path / "rel-a", tmp_path / "rel-b"
    shutil.copytree(releases.a, a)
    shutil.copytree(releases.b, b)
    config = ConfigMapDir(tmp_path / "experiments")
    config.write(EXPERIMENT.format(releases="{}", vb_release="default"))
    server = start_server(release_dir=a, experiments_file=config.path)
    registry = server.runtime.registry
    traffic = Traffic(server.http_port, server.grpc_port, releases.history(2)[:5], tools).start()
    try:
        tools.wait_for(lambda: traffic.seen("vb", "serving-test-a"), what="traffic on vb")

        # 1. A variant moves to a second release (a ConfigMap-style symlink flip).
        mark = traffic.count()
        config.write(EXPERIMENT.format(releases=f"{{b: {b}}}", vb_release="b"))
        tools.wait_for(lambda: traffic.seen("vb", "serving-test-b", mark), what="vb on b")
        assert registry.reloads == 1

        # 2. The default release is rewritten in place (a new version of the same path).
        mark = traffic.count()
        with ReleaseWriter(
            a, version="serving-test-a2", overwrite=True, base=load_release(a)
        ) as writer:
            writer.set_config("serving", {"note": "rewritten"})
        tools.wait_for(lambda: traffic.seen("va", "serving-test-a2", mark), what="va on a2")
        assert registry.reloads == 2

        # 3. A broken file keeps the current snapshot serving, and says why.
        config.write("experiments: [{name: broken, salt: s, variants: [{name: x, wieght: 1}]}]")
        tools.wait_for(lambda: registry.last_error is not None, what="the failed reload")
        assert "wieght" in registry.last_error
        status, ready = tools.http(server.http_port, "GET", "/readyz")
        assert status == 200 and "wieght" in ready["error"]
        mark = traffic.count()
        tools.wait_for(lambda: traffic.count() > mark + 20, what="traffic after a failed reload")
        assert registry.reloads == 2

        # 4. No experiments any more: everyone is back on `default`, release b is retired.
        mark = traffic.count()
        config.write("experiments: []\n")
        tools.wait_for(lambda: traffic.seen("default", "serving-test-a2", mark), what="default")
        assert registry.reloads == 3
        mark = traffic.count()
        tools.wait_for(lambda: traffic.count() > mark + 20, what="traffic after the last reload")
    finally:
        traffic.join()
    statuses = Counter(status for _, status, _, _ in traffic.outcomes)
    assert set(statuses) <= {200, "OK"}, statuses  # zero failed requests
    assert statuses[200] > 50 and statuses["OK"] > 30, statuses
    assert set(registry.snapshot.releases) == {"default"}
    status, text = tools.http(server.http_port, "GET", "/metrics")
    info = [ln for ln in text.splitlines() if ln.startswith("reasonrec_release_info{")]
    assert any('variant="default"' in ln and "serving-test-a2" in ln for ln in info)
    assert not any('variant="default"' in ln and '"serving-test-a"' in ln for ln in info)


def test_ab_assignment_through_the_api_is_sticky_and_matches_the_router(
    start_server: Any, releases: Any, tools: Any, tmp_path: Path
) -> None:
    text = EXPERIMENT.format(releases="{}", vb_release="default").replace("50}}", "25}}", 1)
    path = tmp_path / "experiments.yaml"
    path.write_text(text)
    server = start_server(experiments_file=path)
    router = Router(parse_experiments(yaml.safe_load(text)))
    history = releases.history(4)[:3]
    got: Counter[str] = Counter()
    for i in range(120):
        user = f"sample-{i}"
        answers = {
            tools.http(
                server.http_port, "POST", "/v1/recommend", {"user_id": user, "history": history}
            )[1]["variant"]
            for _ in range(2)
        }
        assert answers == {router.assign(user).name}, user  # sticky, and the router's choice
        got[answers.pop()] += 1
    assert set(got) == {"va", "vb"}
    # vb has thinking off: its requests never read a trace.
    vb_user = next(u for u in (f"sample-{i}" for i in range(120)) if router.assign(u).name == "vb")
    status, body = tools.http(
        server.http_port, "POST", "/v1/recommend", {"user_id": vb_user, "history": history}
    )
    assert status == 200 and body["trace_status"] == "disabled" and body["experiment"] == "reload"
    # Every variant labels the metrics, and each exports the release it serves.
    status, text = tools.http(server.http_port, "GET", "/metrics")
    for variant in ("va", "vb"):
        assert f'endpoint="recommend",protocol="http",variant="{variant}"' in text, variant
        assert (
            f'reasonrec_release_info{{release_version="serving-test-a",variant="{variant}"}} 1.0'
            in text
        )
