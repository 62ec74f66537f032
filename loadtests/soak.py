"""Soak run: a steady request rate for minutes against `reasonrec serve`, with the server's
memory sampled throughout; fails on an SLO violation or on memory growth beyond a bound.

    .venv/bin/python -m loadtests.soak --release DIR --rate 20 --duration 600 --out out/soak
    .venv/bin/python -m loadtests.soak --url http://127.0.0.1:8000 --pid 1234 --rate 20 ...

With `--release`, a `reasonrec serve` process is started on loopback ports (micro-batching on
unless `--no-micro-batching`; Redis from `REDIS_URL`, else the server's embedded one) and
stopped with SIGTERM at the end (a non-zero exit is a failure). With `--url` (and
`--grpc-target`), a running server is used; `--pid` names its process for memory sampling.

Load: open loop at `--rate` req/s (loadtests.driver), `--grpc-share` of it over gRPC, the rest
over HTTP, with the request mix of loadtests.workload. Memory: the server process's resident
set size (psutil when installed, else /proc/<pid>/status VmRSS) before the load, at the end
of the warm-up (the baseline: allocator pools and caches fill during the first requests),
every `--sample-every` s, and after the load. Growth = after - baseline must stay within
`--max-rss-growth-mib`. Writes `soak.json` and `soak.md` into `--out`. Exit: 0 pass, 1 fail,
2 bad input.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.driver import Channel, LoadPlan, RequestFailed, drive, require_loopback
from loadtests.grpc_load import add_load_arguments, grpc_channel, slo_from_args
from loadtests.grpc_load import workload_from_args as _workload
from loadtests.memory import MemoryReport, RssSampler, rss_source
from loadtests.slo import LoadReport, build_report, now_iso, render_markdown
from loadtests.workload import Workload
from sid_index.errors import ConfigError, ReasonrecError

REPO = Path(__file__).resolve().parents[1]


# ---- the server -----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """A `reasonrec serve` subprocess on loopback ports."""

    def __init__(
        self, release: Path, log_path: Path, *, micro_batching: bool = True,
        num_threads: int | None = None, grpc: bool = True,
    ) -> None:  # fmt: skip
        if not (Path(release) / "manifest.json").is_file():
            raise ConfigError(f"{release} is not a release directory (no manifest.json)")
        self.http_port = _free_port()
        self.grpc_port = _free_port() if grpc else None
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        env.setdefault("REASONREC_LOG_LEVEL", "WARNING")
        if num_threads is not None:
            env["REASONREC_NUM_THREADS"] = str(num_threads)
        cmd = [
            sys.executable, "-m", "serving.cli", "serve", "--release", str(release),
            "--host", "127.0.0.1", "--port", str(self.http_port),
        ]  # fmt: skip
        cmd += ["--grpc-port", str(self.grpc_port)] if grpc else ["--no-grpc"]
        if not micro_batching:
            cmd.append("--no-micro-batching")
        self.command = cmd
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=self._log, stderr=self._log)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout_s: float = 180.0) -> None:
        """Until /readyz says 200; ConfigError if the process exits or never gets ready."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text(errors="replace")[-2000:]
                raise ConfigError(f"reasonrec serve exited with {self.proc.returncode}:\n{tail}")
            if ready(self.url):
                return
            time.sleep(0.25)
        raise ConfigError(f"reasonrec serve not ready after {timeout_s:g} s (log: {self.log_path})")

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM and wait; the exit code (a kill after `timeout_s` returns -9)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return int(self.proc.returncode)


def ready(url: str) -> bool:
    """`GET /readyz` answers 200."""
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
            return bool(r.status == 200)
    except OSError:
        return False


# ---- load -----------------------------------------------------------------------------------


async def http_channel(
    url: str, workload: Workload, *, seed: int, api_key: str | None, connections: int
) -> tuple[Channel, Any]:
    """A driver channel posting calls from `workload` to `url`/v1/recommend, and its closer."""
    import httpx

    rng = np.random.default_rng(seed)
    bodies = [c.json_bytes() for c in workload.calls]
    order = rng.integers(len(bodies), size=1 << 16)
    headers = {"content-type": "application/json", **({"x-api-key": api_key} if api_key else {})}
    client = httpx.AsyncClient(
        base_url=url, headers=headers, timeout=None,  # the driver owns the deadline
        limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
    )  # fmt: skip

    async def send(i: int) -> None:
        resp = await client.post("/v1/recommend", content=bodies[int(order[i & 0xFFFF])])
        if resp.status_code != 200:
            raise RequestFailed(f"http_{resp.status_code}")

    return Channel("http", send), client.aclose


async def soak(
    args: argparse.Namespace, workload: Workload, pid: int, url: str, grpc_target: str | None
) -> tuple[list[LoadReport], MemoryReport]:
    """Drive the plan over HTTP (and gRPC) while sampling RSS; the reports."""
    plan = LoadPlan(
        rate=args.rate, duration_s=args.duration, warmup_s=args.warmup,
        max_requests=args.max_requests, timeout_s=args.timeout,
        max_in_flight=args.max_in_flight,
    )  # fmt: skip
    slo = slo_from_args(args)
    channels: list[Channel] = []
    closers: list[Any] = []
    share = args.grpc_share if grpc_target else 0.0
    try:
        if share < 1.0:
            ch, close = await http_channel(
                url, workload, seed=args.seed, api_key=args.api_key,
                connections=args.max_in_flight,
            )  # fmt: skip
            channels.append(Channel(ch.name, ch.send, 1.0 - share))
            closers.append(close)
        if share > 0.0:
            assert grpc_target is not None
            ch, close = await grpc_channel(
                grpc_target, workload, seed=args.seed + 1, api_key=args.api_key
            )
            channels.append(Channel(ch.name, ch.send, share))
            closers.append(close)
        sampler = RssSampler(pid, args.sample_every)
        idle = sampler.take(0.0)
        sampler.samples.clear()
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        sampling = loop.create_task(sampler.run(t0, [args.warmup]))
        bar, tick = _progress(plan, not args.no_progress and sys.stderr.isatty(), sampler)
        started = now_iso()
        try:
            result = await drive(plan, channels, on_request=tick)
        finally:
            sampling.cancel()
            if bar is not None:
                bar.close()
        after = sampler.take(loop.time() - t0)
    finally:
        for close in closers:
            await close()
    total_weight = sum(c.weight for c in channels)
    reports = []
    for c in channels:
        report = build_report(
            result.recorders[c.name], tool="soak", protocol=c.name,
            target=url if c.name == "http" else str(grpc_target), mode="rate",
            offered=args.rate * c.weight / total_weight, window_s=result.window_s,
            slo=slo, started_at=started,
        )  # fmt: skip
        reports.append(report)
    baseline = next((m for t, m in sampler.samples if t >= args.warmup), after)
    measured = np.asarray([(t, m) for t, m in sampler.samples if t >= args.warmup])
    slope = 0.0
    if len(measured) >= 3 and np.ptp(measured[:, 0]) > 0:
        slope = float(np.polyfit(measured[:, 0] / 60.0, measured[:, 1], 1)[0])
    memory = MemoryReport(
        pid=pid, source=rss_source(), idle_mib=round(idle, 2), baseline_mib=round(baseline, 2),
        after_mib=round(after, 2), max_mib=round(max(m for _, m in sampler.samples), 2),
        growth_mib=round(after - baseline, 2), bound_mib=args.max_rss_growth_mib,
        slope_mib_per_min=round(slope, 3), samples=sampler.samples,
    )  # fmt: skip
    return reports, memory


def _progress(plan: LoadPlan, enabled: bool, sampler: RssSampler) -> tuple[Any, Any]:
    """A tqdm bar over the planned requests showing the latest RSS, and its per-request tick."""
    if not enabled:
        return None, None
    from tqdm import tqdm

    assert plan.rate is not None
    bar = tqdm(total=int(plan.rate * (plan.warmup_s + plan.duration_s)), unit="req", desc="soak")

    def tick() -> None:
        bar.update()
        if sampler.samples and bar.n % 50 == 0:
            bar.set_postfix(rss_mib=sampler.samples[-1][1])

    return bar, tick


# ---- reports and CLI ------------------------------------------------------------------------


def render(reports: list[LoadReport], memory: MemoryReport, verdict: list[str]) -> str:
    """soak.md: the load table, the memory table and the verdict."""
    text = render_markdown("Soak run", reports)
    lines = [
        text.rstrip("\n"),
        "",
        f"Server RSS (pid {memory.pid}, {memory.source}), MiB: idle {memory.idle_mib:.1f}, "
        f"baseline after warm-up {memory.baseline_mib:.1f}, after {memory.after_mib:.1f}, "
        f"max {memory.max_mib:.1f}; growth {memory.growth_mib:+.1f} (bound "
        f"{memory.bound_mib:g}), trend {memory.slope_mib_per_min:+.2f} MiB/min over "
        f"{len(memory.samples)} samples.",
        "",
        "Verdict: " + ("PASS" if not verdict else "FAIL: " + "; ".join(verdict)),
    ]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.soak", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--url", help="a running server's HTTP base URL (instead of starting one)")
    p.add_argument("--grpc-target", help="a running server's gRPC host:port")
    p.add_argument("--pid", type=int, help="the running server's process id (memory sampling)")
    p.add_argument("--rate", type=float, default=20.0, help="requests/s, all protocols")
    p.add_argument("--duration", type=float, default=600.0, help="measured seconds (10 min)")
    p.add_argument("--warmup", type=float, default=30.0, help="load before the RSS baseline, s")
    p.add_argument("--max-requests", type=int, help="stop after this many requests")
    p.add_argument("--max-in-flight", type=int, default=64)
    p.add_argument("--grpc-share", type=float, default=0.0, help="share of requests over gRPC")
    p.add_argument("--sample-every", type=float, default=10.0, help="RSS sampling period, s")
    p.add_argument(
        "--max-rss-growth-mib", type=float, default=32.0,
        help="bound on server RSS growth from the end of the warm-up to the end, MiB",
    )  # fmt: skip
    p.add_argument("--no-micro-batching", action="store_true", help="started server only")
    p.add_argument("--num-threads", type=int, help="REASONREC_NUM_THREADS of a started server")
    p.add_argument("--out", type=Path, default=Path("soak-report"), help="report folder")
    p.add_argument("--no-progress", action="store_true")
    add_load_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """0: pass; 1: SLO violated, memory grew past the bound, or the server misbehaved; 2: bad
    input."""
    args = build_parser().parse_args(argv)
    server: ServeProcess | None = None
    try:
        if not 0.0 <= args.grpc_share <= 1.0:
            raise ConfigError(f"--grpc-share={args.grpc_share} must be in [0, 1]")
        if args.sample_every <= 0 or args.max_rss_growth_mib < 0:
            raise ConfigError("--sample-every must be > 0 and --max-rss-growth-mib >= 0")
        slo_from_args(args)
        workload = _workload(args)
        print(f"workload: {len(workload)} calls from {workload.source}", file=sys.stderr)
        if args.url:
            require_loopback(args.url, allow_remote=args.allow_remote)
            if args.grpc_target:
                require_loopback(args.grpc_target, allow_remote=args.allow_remote)
            if args.pid is None:
                raise ConfigError("--url needs --pid: the server process whose memory to sample")
            if args.grpc_share > 0 and not args.grpc_target:
                raise ConfigError(f"--grpc-share={args.grpc_share} needs --grpc-target")
            if not ready(args.url):
                raise ConfigError(f"{args.url}/readyz does not answer 200")
            url, grpc_target, pid = args.url, args.grpc_target, args.pid
        else:
            if args.release is None:
                raise ConfigError("give --release (start a server) or --url and --pid")
            server = ServeProcess(
                args.release, args.out / "serve.log", micro_batching=not args.no_micro_batching,
                num_threads=args.num_threads, grpc=args.grpc_share > 0,
            )  # fmt: skip
            print(f"starting: {' '.join(server.command)}", file=sys.stderr)
            server.wait_ready()
            url, pid = server.url, server.proc.pid
            grpc_target = None if server.grpc_port is None else f"127.0.0.1:{server.grpc_port}"
        reports, memory = asyncio.run(soak(args, workload, pid, url, grpc_target))
        verdict = [f"{r.protocol}: {v}" for r in reports for v in r.violations]
        if not memory.passed:
            verdict.append(
                f"server RSS grew {memory.growth_mib:.1f} MiB > bound {memory.bound_mib:g} MiB"
            )
        if not ready(url):
            verdict.append("server not ready after the soak")
        exit_code = None
        if server is not None:
            exit_code = server.stop()
            server = None
            if exit_code != 0:
                verdict.append(f"reasonrec serve exited with {exit_code} on SIGTERM")
    except ReasonrecError as exc:
        print(f"soak: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if server is not None:
            server.stop()
    args.out.mkdir(parents=True, exist_ok=True)
    doc = {
        "passed": not verdict, "violations": verdict, "reports": [r.to_dict() for r in reports],
        "memory": asdict(memory), "server_exit_code": exit_code,
        "plan": {
            "rate": args.rate, "duration_s": args.duration, "warmup_s": args.warmup,
            "grpc_share": args.grpc_share if grpc_target else 0.0,
            "micro_batching": not args.no_micro_batching, "workload": workload.source,
            "started_server": args.url is None,
        },
    }  # fmt: skip
    (args.out / "soak.json").write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    (args.out / "soak.md").write_text(render(reports, memory, verdict), encoding="utf-8")
    for r in reports:
        print(r.summary())
    print(
        f"RSS MiB: idle {memory.idle_mib:.1f} baseline {memory.baseline_mib:.1f} after "
        f"{memory.after_mib:.1f} max {memory.max_mib:.1f} growth {memory.growth_mib:+.1f} "
        f"(bound {memory.bound_mib:g}) -> {'PASS' if not verdict else 'FAIL'}"
    )
    return 0 if not verdict else 1


if __name__ == "__main__":
    sys.exit(main())
