"""Serving latency: p50/p99 and throughput of `reasonrec serve` over HTTP and gRPC at several
concurrency levels, with and without micro-batching (by hand).

    .venv/bin/python -m benchmarks.serving_latency                    # full grid, writes RESULTS.md
    .venv/bin/python -m benchmarks.serving_latency --duration 2 --concurrency 1 8 --no-write

Setup: a release built here (synthetic catalogue of `--items` items, hashing-embedder Semantic
IDs, an untrained fast model of the default production size: Llama, 4 layers, d=256), served
by a real `reasonrec serve` process (uvicorn + grpc.aio on one event loop, one torch thread)
on loopback with an embedded valkey server (or `REDIS_URL`). Half of the users have a fresh
trace in Redis (a trace hit puts 3 + 5·L more tokens in the prompt), half miss. Requests:
k=10, 20 beams, an 8-item history in the request.

Load: closed loop — `c` concurrent clients, each sending its next request when the previous
answer arrived, for `--duration` s after a 1 s warm-up. HTTP clients are minimal keep-alive
HTTP/1.1 connections (one per client, raw asyncio streams: a heavy client library would eat
the CPU the server needs); gRPC clients share one grpc.aio channel. The load generator runs
on the same 2 cores as the server, so these are the numbers of a box saturated by both.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.results_file import replace_section

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTION = "## Serving latency"
HISTORY_LEN = 8


@dataclass(frozen=True, slots=True)
class Cell:
    """One measured (batching, protocol, concurrency) point."""

    batching: bool
    protocol: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    mean_batch: float
    """Mean requests per micro-batch during the cell (from /metrics)."""
    server_cpu_ms: float
    """Server process CPU time per request (robust to other jobs on a shared box)."""

    @property
    def rps(self) -> float:
        return self.requests / self.seconds


# ---- setup ----------------------------------------------------------------------------------


def build_release(out: Path, items: int, users: int) -> tuple[Path, list[list[str]]]:
    """A release with a production-size untrained fast model; returns it and user histories."""
    import torch

    from fast_path.fast_model import FastModel, FastModelConfig, build_model
    from fast_path.vocab import FastVocab
    from sid_index.datasets.synthetic import SyntheticConfig, generate
    from sid_index.embedder import make_embedder
    from sid_index.item_index import ItemIndexConfig
    from sid_index.release import ReleaseWriter
    from sid_index.rq_kmeans import RQKMeansConfig
    from sid_index.sid_builder import SIDBuildConfig
    from sid_index.sid_index import SIDIndex, SIDIndexConfig

    dataset = generate(SyntheticConfig(num_users=users, num_items=items, seed=11))
    config = SIDIndexConfig(
        sids=SIDBuildConfig(rq=RQKMeansConfig(levels=(32, 32), niter=10, seed=0)),
        index=ItemIndexConfig(kind="flat"),
    )
    index = SIDIndex.build(dataset, config, make_embedder("hashing", dim=64))
    torch.manual_seed(0)
    vocab = FastVocab(index.sids.level_sizes, num_personas=8)
    arch = FastModelConfig(dropout=0.0)
    fast = FastModel(build_model(vocab, arch).eval(), vocab, arch)
    with ReleaseWriter(out, version="bench-serving") as writer:
        index.save(writer.part_dir("sid_index"))
        writer.set_config("sid_index", config.to_dict())
        fast.save(writer.part_dir("fast_model"))
        writer.set_config("fast_model", {"max_items": 20})
    ids = dataset.catalog.item_ids
    histories = []
    for u in range(users):
        seq = dataset.interactions.sequence(u).items[:HISTORY_LEN]
        if len(seq) == HISTORY_LEN:
            histories.append([ids[int(i)] for i in seq])
    return out, histories


def put_traces(redis_url: str, histories: list[list[str]]) -> None:
    """A fresh trace for every even user."""
    import redis

    from slow_path.trace import Interest, Persona, Trace, Transition, history_fingerprint
    from slow_path.trace_store import RedisTraceStore

    client = redis.Redis.from_url(redis_url)
    store = RedisTraceStore(client, ttl_s=3600.0)
    store.put_many(
        [
            Trace(
                user_id=f"user-{u}", persona=Persona(id=u % 8, name="p"),
                interests=[Interest((u % 32,), 0.6, "a"), Interest(((u + 1) % 32, 3), 0.4, "b")],
                transition=Transition(text="t", next_interest=1), candidates=[], text="",
                model_version="bench", history_fingerprint=history_fingerprint(h),
                created_at=time.time(),
            )
            for u, h in enumerate(histories) if u % 2 == 0
        ]
    )  # fmt: skip
    client.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A `reasonrec serve` subprocess."""

    def __init__(
        self, release: Path, redis_url: str, batching: bool, log: Path, decoder: str
    ) -> None:
        self.http_port, self.grpc_port = free_port(), free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("REASONREC_")}
        env.update(
            REDIS_URL=redis_url, HF_HUB_OFFLINE="1", REASONREC_NUM_THREADS="1",
            REASONREC_LOG_LEVEL="WARNING", REASONREC_VERIFY_RELEASE="false",
            REASONREC_REFRESH_ON_EVENTS="false", REASONREC_DECODER=decoder,
        )  # fmt: skip
        cmd = [
            sys.executable, "-m", "serving.cli", "serve", "--release", str(release),
            "--host", "127.0.0.1", "--port", str(self.http_port),
            "--grpc-port", str(self.grpc_port),
        ]  # fmt: skip
        if not batching:
            cmd.append("--no-micro-batching")
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT
        )

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"serve exited with {self.proc.returncode}")
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{self.http_port}/readyz", timeout=2
                ) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        raise TimeoutError("server not ready")

    def batch_totals(self) -> tuple[float, float]:
        """(sum, count) of reasonrec_batch_size so far."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as r:
            text = r.read().decode()
        got = {}
        for line in text.splitlines():
            for name in ("reasonrec_batch_size_sum", "reasonrec_batch_size_count"):
                if line.startswith(name + " "):
                    got[name] = float(line.split()[1])
        return got.get("reasonrec_batch_size_sum", 0.0), got.get("reasonrec_batch_size_count", 0.0)

    def cpu_seconds(self) -> float:
        """utime + stime of the server process so far (from /proc, 10 ms resolution)."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(60)
        self._log.close()
        return code


# ---- load -----------------------------------------------------------------------------------


def _http_request(port: int, body: bytes) -> bytes:
    head = (
        f"POST /v1/recommend HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _http_worker(
    port: int, payloads: list[bytes], stop_at: float, record_from: float, out: list[float],
    errors: list[int], seed: int,
) -> None:  # fmt: skip
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    rng = np.random.default_rng(seed)
    loop = asyncio.get_running_loop()
    try:
        while (now := loop.time()) < stop_at:
            writer.write(payloads[int(rng.integers(len(payloads)))])
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line[:15].lower() == b"content-length:":
                    length = int(line[15:])
            await reader.readexactly(length)
            if now >= record_from:
                if not head.startswith(b"HTTP/1.1 200"):
                    errors.append(1)
                out.append(loop.time() - now)
    finally:
        writer.close()


async def _grpc_worker(
    stub: object, requests: Sequence[object], stop_at: float, record_from: float, out: list[float],
    errors: list[int], seed: int,
) -> None:  # fmt: skip
    import grpc

    rng = np.random.default_rng(seed)
    loop = asyncio.get_running_loop()
    while (now := loop.time()) < stop_at:
        try:
            await stub.Recommend(requests[int(rng.integers(len(requests)))], timeout=60)  # type: ignore[attr-defined]
        except grpc.RpcError:
            errors.append(1)
        if now >= record_from:
            out.append(loop.time() - now)


async def run_cell(
    server: Server, protocol: str, concurrency: int, duration: float, histories: list[list[str]]
) -> tuple[list[float], int, float]:
    """Latencies (s) of the recorded requests, errors, and the recording window (s)."""
    loop = asyncio.get_running_loop()
    record_from = loop.time() + 1.0  # warm-up: connections, first batches
    stop_at = record_from + duration
    out: list[float] = []
    errors: list[int] = []
    users = [(f"user-{u}", h) for u, h in enumerate(histories)]
    if protocol == "http":
        payloads = [
            _http_request(
                server.http_port, json.dumps({"user_id": u, "history": h, "k": 10}).encode()
            )
            for u, h in users
        ]
        await asyncio.gather(
            *(
                _http_worker(server.http_port, payloads, stop_at, record_from, out, errors, i)
                for i in range(concurrency)
            )
        )
    else:
        import grpc

        from serving.proto.gen.reasonrec.v1 import recommend_pb2 as pb
        from serving.proto.gen.reasonrec.v1 import recommend_pb2_grpc as pb_grpc

        requests = [
            pb.RecommendRequest(user_id=u, history=pb.History(item_ids=h), k=10) for u, h in users
        ]
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
            stub = pb_grpc.RecommendServiceStub(channel)
            await asyncio.gather(
                *(
                    _grpc_worker(stub, requests, stop_at, record_from, out, errors, i)
                    for i in range(concurrency)
                )
            )
    window = loop.time() - record_from
    return out, len(errors), window


# ---- report ---------------------------------------------------------------------------------


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def render(cells: list[Cell], args: argparse.Namespace, load: tuple[float, float]) -> str:
    lines = [
        SECTION,
        "",
        f"Machine: {os.cpu_count()} cores ({_cpu_name()}), Python {platform.python_version()}, "
        f"shared with other jobs (load average {load[0]:.1f} before, {load[1]:.1f} after the "
        f"run). Date: {dt.date.today().isoformat()}. Command: `.venv/bin/python -m "
        f"benchmarks.serving_latency --duration {args.duration:g} --concurrency "
        f"{' '.join(map(str, args.concurrency))} --decoder {args.decoder}`.",
        "",
        f"A real `reasonrec serve` process (uvicorn + grpc.aio on one event loop, 1 torch "
        f"thread, decoder `{args.decoder}`), an untrained fast model of production size "
        f"(Llama, 4 layers, d=256) over "
        f"{args.items} synthetic items (SIDs 32×32 + disambiguation), k=10, 20 beams, an "
        f"{HISTORY_LEN}-item history per request, half the users with a fresh trace in Redis "
        "(embedded valkey). Closed loop: `c` clients each send the next request when the last "
        f"answer arrives, {args.duration:g} s measured after 1 s of warm-up; the load generator "
        "shares the 2 cores. `batch`: mean requests per micro-batch; `server CPU ms/req`: the "
        "server process's CPU time per request (warm-up included), which other jobs on the box "
        "do not inflate the way they inflate wall-clock latency.",
        "",
        "| micro-batching | protocol | c | req/s | p50 ms | p99 ms | batch | server CPU ms/req "
        "| errors |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for c in cells:
        lines.append(
            f"| {'on' if c.batching else 'off'} | {c.protocol} | {c.concurrency} | "
            f"{c.rps:.0f} | {c.p50_ms:.1f} | {c.p99_ms:.1f} | {c.mean_batch:.1f} | "
            f"{c.server_cpu_ms:.1f} | {c.errors} |"
        )
    lines.append("")
    return "\n".join(lines)


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace (or append) this benchmark's section of RESULTS.md, leaving others alone."""
    replace_section(SECTION, text, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per cell")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument(
        "--protocols", nargs="+", choices=["http", "grpc"], default=["http", "grpc"]
    )
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--users", type=int, default=400)
    parser.add_argument(
        "--decoder", choices=["hf", "auto", "shared_prefix"], default="hf",
        help="REASONREC_DECODER of the server (hf: the fast path's default)",
    )  # fmt: skip
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    load_before = os.getloadavg()[0]

    from slow_path.redis_conn import EmbeddedRedis

    cells: list[Cell] = []
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        release, histories = build_release(Path(tmp) / "release", args.items, args.users)
        embedded = None if os.environ.get("REDIS_URL") else EmbeddedRedis().start()
        redis_url = os.environ.get("REDIS_URL") or embedded.url  # type: ignore[union-attr]
        try:
            put_traces(redis_url, histories)
            for batching in (True, False):
                log = Path(tmp) / f"serve-{batching}.log"
                server = Server(release, redis_url, batching, log, args.decoder)
                try:
                    server.wait_ready()
                    for protocol in args.protocols:
                        for c in args.concurrency:
                            s0, n0 = server.batch_totals()
                            cpu0 = server.cpu_seconds()
                            lat, errors, window = asyncio.run(
                                run_cell(server, protocol, c, args.duration, histories)
                            )
                            cpu1 = server.cpu_seconds()
                            s1, n1 = server.batch_totals()
                            ms = np.asarray(lat) * 1000
                            cell = Cell(
                                batching, protocol, c, len(lat), errors, window,
                                float(np.percentile(ms, 50)), float(np.percentile(ms, 99)),
                                (s1 - s0) / max(n1 - n0, 1),
                                # warm-up requests are served too: divide by all of them
                                (cpu1 - cpu0) * 1000 / max(s1 - s0, 1),
                            )  # fmt: skip
                            cells.append(cell)
                            print(
                                f"batching={'on' if batching else 'off'} {protocol:4s} c={c:3d} "
                                f"{cell.rps:7.1f} req/s p50 {cell.p50_ms:7.1f} ms p99 "
                                f"{cell.p99_ms:7.1f} ms batch {cell.mean_batch:5.1f} "
                                f"cpu {cell.server_cpu_ms:5.1f} ms/req "
                                f"errors {errors}",
                                flush=True,
                            )
                finally:
                    code = server.stop()
                    if code != 0:
                        print(f"serve exited with {code}", file=sys.stderr)
        finally:
            if embedded is not None:
                embedded.stop()
    text = render(cells, args, (load_before, os.getloadavg()[0]))
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
