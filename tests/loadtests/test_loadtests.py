"""Load tools: SLO arithmetic, request mixes and the driver on their own (fast), then short
bounded runs of Locust, the gRPC generator and the soak tool against a real `reasonrec serve`
subprocess on loopback over a tiny release (slow). The passing runs use a lenient p99 bound
(the 2-core box is shared); the failing runs use an impossible one (p99 <= 0.001 ms)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from loadtests.driver import Channel, LoadPlan, RequestFailed, drive, require_loopback
from loadtests.memory import rss_bytes
from loadtests.slo import SLO, LatencyRecorder, build_report, evaluate, percentiles_ms

ROOT = Path(__file__).resolve().parents[2]
from loadtests.workload import RequestMix, Workload  # noqa: E402
from sid_index.errors import ConfigError  # noqa: E402

SPEC = "synthetic:users=80,items=240,personas=4,categories=8,seed=3"
LENIENT = ["--slo-p99-ms", "5000", "--slo-max-error-rate", "0.01"]
IMPOSSIBLE = ["--slo-p99-ms", "0.001"]


# ---- SLO and report -------------------------------------------------------------------------


def test_percentiles_are_nearest_rank() -> None:
    lat = np.arange(1, 101, dtype=np.float64) / 1000.0  # 1..100 ms
    p50, p95, p99 = percentiles_ms(lat)
    assert (p50, p95, p99) == pytest.approx((50.0, 95.0, 99.0))
    assert all(np.isnan(percentiles_ms(np.zeros(0))))


def test_slo_validates_and_names_the_value() -> None:
    with pytest.raises(ConfigError, match="p99_ms"):
        SLO(p99_ms=0)
    with pytest.raises(ConfigError, match="max_error_rate"):
        SLO(max_error_rate=1.5)


def test_evaluate_names_each_broken_clause() -> None:
    slo = SLO(p99_ms=100, max_error_rate=0.01, p95_ms=50, min_rate_fraction=0.9)
    ok = evaluate(slo, requests=100, error_rate=0.0, qps=10, p95_ms=40, p99_ms=90,
                  offered_rate=10)  # fmt: skip
    assert ok == []
    bad = evaluate(slo, requests=100, error_rate=0.05, qps=5, p95_ms=60, p99_ms=150,
                   offered_rate=10)  # fmt: skip
    assert (
        len(bad) == 4 and any("p99 150" in v for v in bad) and any("5.00 req/s" in v for v in bad)
    )
    assert evaluate(slo, requests=0, error_rate=0, qps=0, p95_ms=np.nan, p99_ms=np.nan,
                    offered_rate=None)  # fmt: skip


def test_report_counts_failures_apart_from_latencies() -> None:
    rec = LatencyRecorder()
    for ms in (10, 20, 30):
        rec.ok(ms / 1000)
    rec.fail("http_503")
    report = build_report(rec, tool="t", protocol="http", target="x", mode="concurrency",
                          offered=1, window_s=2.0, slo=SLO(max_error_rate=0.5))  # fmt: skip
    d = report.to_dict()
    assert d["requests"] == 4 and d["errors"] == 1 and d["errors_by_kind"] == {"http_503": 1}
    assert d["qps"] == 2.0 and d["p99_ms"] == pytest.approx(30.0) and d["passed"]


# ---- request mixes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Tiny:
    release: Path
    item_ids: list[str]


def _build_release(out: Path, *, record_dataset: bool) -> Tiny:
    """A tiny real release: synthetic catalogue, hashing-embedder SIDs, an untrained tiny fast
    model (the serving tests' recipe), with the dataset spec recorded like `index build`."""
    import torch

    from fast_path.fast_model import FastModel, FastModelConfig, build_model
    from fast_path.vocab import FastVocab
    from sid_index.datasets.registry import load_dataset
    from sid_index.embedder import make_embedder
    from sid_index.item_index import ItemIndexConfig
    from sid_index.release import ReleaseWriter
    from sid_index.rq_kmeans import RQKMeansConfig
    from sid_index.sid_builder import SIDBuildConfig
    from sid_index.sid_index import SIDIndex, SIDIndexConfig

    dataset = load_dataset(SPEC)
    config = SIDIndexConfig(
        sids=SIDBuildConfig(rq=RQKMeansConfig(levels=(6, 6), niter=5, seed=0)),
        index=ItemIndexConfig(kind="flat"),
    )
    index = SIDIndex.build(dataset, config, make_embedder("hashing", dim=64))
    torch.manual_seed(0)
    vocab = FastVocab(index.sids.level_sizes, num_personas=4)
    arch = FastModelConfig(
        hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=2, intermediate_size=64,
        max_positions=256, dropout=0.0,
    )  # fmt: skip
    fast = FastModel(build_model(vocab, arch).eval(), vocab, arch)
    with ReleaseWriter(out, version="loadtest") as writer:
        index.save(writer.part_dir("sid_index"))
        extra = {"dataset": SPEC} if record_dataset else {}
        writer.set_config("sid_index", {**config.to_dict(), **extra})
        fast.save(writer.part_dir("fast_model"))
        writer.set_config("fast_model", {"max_items": 12})
    return Tiny(out, list(dataset.catalog.item_ids))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tiny:
    return _build_release(tmp_path_factory.mktemp("loadtest") / "release", record_dataset=True)


def test_workload_from_release_uses_the_recorded_dataset(tiny: Tiny) -> None:
    mix = RequestMix(pool_size=500, history_max=5, seed=1)
    wl = Workload.from_release(tiny.release, mix)
    assert "dataset synthetic" in wl.source and len(wl) == 500
    known = set(tiny.item_ids)
    histories = [c.history for c in wl.calls if c.history is not None]
    assert 0.7 < len(histories) / len(wl) < 0.97  # history_fraction 0.85
    assert all(1 <= len(h) <= 5 and set(h) <= known for h in histories)
    assert {c.k for c in wl.calls} == {5, 10, 20} and any(c.explain for c in wl.calls)
    body = json.loads(wl.calls[0].json_bytes())
    assert set(body) >= {"user_id", "k", "explain"}
    assert wl.calls[0].grpc_request().user_id == wl.calls[0].user_id


def test_workload_falls_back_to_the_catalogue(tiny: Tiny, tmp_path: Path) -> None:
    manifest = json.loads((tiny.release / "manifest.json").read_text())
    manifest["configs"]["sid_index"]["dataset"] = "movielens:/nonexistent"
    (tmp_path / "sid_index").mkdir()
    (tmp_path / "sid_index" / "items.jsonl").write_bytes(
        (tiny.release / "sid_index" / "items.jsonl").read_bytes()
    )
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    wl = Workload.from_release(tmp_path, RequestMix(pool_size=300))
    assert "catalogue" in wl.source and "does not load" in wl.source
    assert all(set(c.history or ()) <= set(tiny.item_ids) for c in wl.calls)
    assert all(c.history is None for c in Workload.cold(RequestMix(pool_size=10)).calls)


# ---- driver ---------------------------------------------------------------------------------


def test_plan_and_target_checks() -> None:
    with pytest.raises(ConfigError, match="exactly one"):
        LoadPlan(rate=1.0, concurrency=2)
    with pytest.raises(ConfigError, match="rate"):
        LoadPlan(rate=0.0)
    require_loopback("http://127.0.0.1:8000")
    require_loopback("localhost:50051")
    with pytest.raises(ConfigError, match="non-loopback"):
        require_loopback("http://192.0.2.1:80")
    require_loopback("http://192.0.2.1:80", allow_remote=True)


def test_fixed_rate_charges_queueing_to_latency() -> None:
    """At 100 req/s offered to a server with one 30 ms slot, requests queue; latency measured
    from the due time grows well past the 30 ms service time (no coordinated omission)."""
    lock = asyncio.Lock()

    async def slow(i: int) -> None:
        async with lock:
            await asyncio.sleep(0.03)
        if i % 10 == 9:
            raise RequestFailed("http_503")

    plan = LoadPlan(rate=100.0, duration_s=0.3, timeout_s=5.0)
    result = asyncio.run(drive(plan, [Channel("http", slow)]))
    rec = result.recorders["http"]
    assert result.sent == 30 and rec.requests == 30 and rec.failures["http_503"] == 3
    p50, _, p99 = percentiles_ms(rec.latencies_s())
    assert p99 > 300.0 and p50 > 100.0  # 30 requests x 30 ms served one at a time


def test_closed_loop_and_channel_shares() -> None:
    sent: dict[str, int] = {"a": 0, "b": 0}

    def make(name: str) -> Channel:
        async def send(i: int) -> None:
            sent[name] += 1
            await asyncio.sleep(0.001)

        return Channel(name, send, weight=0.75 if name == "a" else 0.25)

    plan = LoadPlan(concurrency=3, duration_s=5.0, max_requests=40)
    result = asyncio.run(drive(plan, [make("a"), make("b")]))
    assert result.sent == 40 and sent == {"a": 30, "b": 10}
    assert result.recorders["a"].requests == 30 and result.window_s > 0


def test_rss_fallback_reads_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    with_psutil = rss_bytes(os.getpid())
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    from_proc = rss_bytes(os.getpid())
    assert abs(from_proc - with_psutil) < 64 * 1024 * 1024 and from_proc > 1024 * 1024


# ---- real server ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env(redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("REASONREC_")}
    env.update(
        REDIS_URL=redis_url, HF_HUB_OFFLINE="1", REASONREC_NUM_THREADS="1",
        REASONREC_WARMUP="false", REASONREC_VERIFY_RELEASE="false",
        REASONREC_LOG_LEVEL="WARNING", REASONREC_REFRESH_ON_EVENTS="false",
    )  # fmt: skip
    return env


@dataclass(frozen=True)
class Served:
    http_port: int
    grpc_port: int
    pid: int
    env: dict[str, str]


@pytest.fixture(scope="module")
def served(
    tiny: Tiny, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Served]:
    """`reasonrec serve` over the tiny release, as a subprocess on loopback ports."""
    http_port, grpc_port = _free_port(), _free_port()
    env = _env(redis_url)
    log_path = tmp_path_factory.mktemp("serve") / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "serving.cli", "serve", "--release", str(tiny.release),
             "--host", "127.0.0.1", "--port", str(http_port), "--grpc-port", str(grpc_port)],
            env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + 120
            while True:
                assert proc.poll() is None, log_path.read_text()
                try:
                    with urllib.request.urlopen(
                        f"http://127.0.0.1:{http_port}/readyz", timeout=2
                    ) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "serve not ready: " + log_path.read_text()
                time.sleep(0.2)
            yield Served(http_port, grpc_port, proc.pid, env)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(60)


def _run(cmd: list[str], env: dict[str, str], timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _locust(served: Served, tiny: Tiny, out: Path, seconds: int, *extra: str) -> int:
    cmd = [
        str(Path(sys.executable).with_name("locust")), "-f", "loadtests/locustfile.py",
        "--headless", "--only-summary", "-u", "4", "-r", "4", "-t", f"{seconds}s",
        "--host", f"http://127.0.0.1:{served.http_port}", "--release", str(tiny.release),
        "--report-json", str(out / "locust.json"), "--report-md", str(out / "locust.md"),
        *extra,
    ]  # fmt: skip
    got = _run(cmd, served.env)
    assert (out / "locust.json").is_file(), got.stderr[-3000:]
    return got.returncode


@pytest.mark.slow
def test_locust_reports_and_fails_an_impossible_slo(
    served: Served, tiny: Tiny, tmp_path: Path
) -> None:
    assert _locust(served, tiny, tmp_path, 5, *LENIENT) == 0
    report = json.loads((tmp_path / "locust.json").read_text())["reports"][0]
    assert report["tool"] == "locust" and report["protocol"] == "http" and report["passed"]
    assert report["requests"] > 20 and report["errors"] == 0 and report["qps"] > 0
    assert 0 < report["p50_ms"] <= report["p95_ms"] <= report["p99_ms"] <= report["max_ms"]
    assert "| locust | http |" in (tmp_path / "locust.md").read_text()

    assert _locust(served, tiny, tmp_path, 2, *IMPOSSIBLE) == 1
    report = json.loads((tmp_path / "locust.json").read_text())["reports"][0]
    assert not report["passed"] and "p99" in report["violations"][0]


@pytest.mark.slow
def test_grpc_load_reports_and_fails_an_impossible_slo(
    served: Served, tiny: Tiny, tmp_path: Path
) -> None:
    base = [sys.executable, "-m", "loadtests.grpc_load", "--target",
            f"127.0.0.1:{served.grpc_port}", "--release", str(tiny.release), "--warmup", "0.5",
            "--report-json", str(tmp_path / "g.json"), "--no-progress"]  # fmt: skip
    got = _run([*base, "--concurrency", "4", "--duration", "3", *LENIENT], served.env)
    assert got.returncode == 0, got.stdout + got.stderr
    report = json.loads((tmp_path / "g.json").read_text())["reports"][0]
    assert report["mode"] == "concurrency" and report["requests"] > 20 and report["passed"]
    assert report["errors"] == 0 and 0 < report["p50_ms"] <= report["p99_ms"]

    got = _run([*base, "--rate", "20", "--duration", "30", "--max-requests", "20",
                *IMPOSSIBLE], served.env)  # fmt: skip
    assert got.returncode == 1, got.stdout + got.stderr
    report = json.loads((tmp_path / "g.json").read_text())["reports"][0]
    assert report["mode"] == "rate" and report["requests"] <= 20 and not report["passed"]

    got = _run([*base[:3], "--target", "127.0.0.1:1", "--rate", "1", "--duration", "1",
                "--ready-timeout", "1"], served.env)  # fmt: skip
    assert got.returncode == 2 and "no gRPC server" in got.stderr


@pytest.mark.slow
def test_soak_starts_a_server_and_reports_memory(
    tiny: Tiny, redis_url: str, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "loadtests.soak", "--release", str(tiny.release), "--rate",
           "15", "--duration", "6", "--warmup", "2", "--sample-every", "2", "--grpc-share",
           "0.3", "--out", str(tmp_path), "--num-threads", "1", "--no-progress",
           *LENIENT]  # fmt: skip
    got = _run(cmd, _env(redis_url), timeout=150)
    assert got.returncode == 0, got.stdout + got.stderr
    doc = json.loads((tmp_path / "soak.json").read_text())
    assert doc["passed"] and doc["server_exit_code"] == 0 and doc["plan"]["started_server"]
    assert {r["protocol"] for r in doc["reports"]} == {"http", "grpc"}
    assert sum(r["requests"] for r in doc["reports"]) >= 80  # 15 req/s x 6 s measured
    mem = doc["memory"]
    assert len(mem["samples"]) >= 4 and mem["bound_mib"] == 32.0
    assert mem["idle_mib"] > 0 and mem["baseline_mib"] <= mem["max_mib"]
    assert mem["growth_mib"] == pytest.approx(mem["after_mib"] - mem["baseline_mib"], abs=0.02)
    assert "Server RSS" in (tmp_path / "soak.md").read_text()


@pytest.mark.slow
def test_soak_on_a_running_server_fails_an_impossible_slo(
    served: Served, tiny: Tiny, tmp_path: Path
) -> None:
    cmd = [sys.executable, "-m", "loadtests.soak", "--url",
           f"http://127.0.0.1:{served.http_port}", "--pid", str(served.pid), "--release",
           str(tiny.release), "--rate", "20", "--duration", "2", "--warmup", "0.5",
           "--sample-every", "1", "--out", str(tmp_path), "--no-progress", *IMPOSSIBLE]  # fmt: skip
    got = _run(cmd, served.env)
    assert got.returncode == 1, got.stdout + got.stderr
    doc = json.loads((tmp_path / "soak.json").read_text())
    assert not doc["passed"] and doc["server_exit_code"] is None
    assert any("p99" in v for v in doc["violations"])
    got = _run([*cmd[:3], "--url", f"http://127.0.0.1:{served.http_port}"], served.env)
    assert got.returncode == 2 and "--pid" in got.stderr
