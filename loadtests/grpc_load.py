"""asyncio gRPC load generator for `reasonrec.v1.RecommendService/Recommend`.

    .venv/bin/python -m loadtests.grpc_load --target 127.0.0.1:50051 --release DIR \\
        --rate 20 --duration 30                       # open loop, 20 req/s for 30 s
    .venv/bin/python -m loadtests.grpc_load --target 127.0.0.1:50051 --release DIR \\
        --concurrency 8 --duration 10 --max-requests 5000   # closed loop, 8 clients

Prints QPS and p50/p95/p99, writes JSON/Markdown reports on request, and exits 0 when the
SLO (loadtests.slo.DEFAULT_SLO unless overridden by the --slo-* flags) is met, 1 when it is
violated, 2 on bad input (an unreachable server, a bad release, a non-loopback target).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtests.driver import Channel, LoadPlan, RequestFailed, drive, require_loopback
from loadtests.slo import DEFAULT_SLO, SLO, LoadReport, build_report, now_iso, write_reports
from loadtests.workload import RequestMix, Workload
from sid_index.errors import ConfigError, ReasonrecError


async def grpc_channel(
    target: str, workload: Workload, *, seed: int = 0, api_key: str | None = None,
    ready_timeout_s: float = 10.0, name: str = "grpc",
) -> tuple[Channel, Callable[[], Any]]:  # fmt: skip
    """A driver channel sending Recommend calls drawn from `workload`, and its async closer.

    Raises:
        ConfigError: nothing answers at `target` within `ready_timeout_s`.
    """
    import grpc

    from serving.proto.gen.reasonrec.v1 import recommend_pb2_grpc as pb_grpc

    channel = grpc.aio.insecure_channel(target)
    try:
        await asyncio.wait_for(channel.channel_ready(), ready_timeout_s)
    except TimeoutError:
        await channel.close()
        raise ConfigError(
            f"no gRPC server answers at {target} within {ready_timeout_s:g} s"
        ) from None
    stub = pb_grpc.RecommendServiceStub(channel)
    rng = np.random.default_rng(seed)
    # Messages are built once: serializing them is the client's only per-request work.
    messages = [c.grpc_request() for c in workload.calls]
    order = rng.integers(len(messages), size=1 << 16)
    metadata = None if not api_key else (("x-api-key", api_key),)

    async def send(i: int) -> None:
        try:
            await stub.Recommend(messages[int(order[i & 0xFFFF])], metadata=metadata)
        except grpc.aio.AioRpcError as exc:
            raise RequestFailed(f"grpc_{exc.code().name}") from None

    return Channel(name, send), channel.close


async def run(
    target: str, workload: Workload, plan: LoadPlan, slo: SLO, *, seed: int = 0,
    api_key: str | None = None, progress: bool = False, ready_timeout_s: float = 10.0,
) -> LoadReport:  # fmt: skip
    """One load run against a gRPC target, judged against `slo`."""
    started = now_iso()
    channel, close = await grpc_channel(
        target, workload, seed=seed, api_key=api_key, ready_timeout_s=ready_timeout_s
    )
    bar = _progress_bar(plan, progress)
    try:
        result = await drive(plan, [channel], on_request=None if bar is None else bar.update)
    finally:
        await close()
        if bar is not None:
            bar.close()
    return build_report(
        result.recorders[channel.name], tool="grpc_load", protocol="grpc", target=target,
        mode=plan.mode, offered=plan.offered, window_s=result.window_s, slo=slo,
        started_at=started,
    )  # fmt: skip


def _progress_bar(plan: LoadPlan, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    expected = None
    if plan.rate is not None:
        expected = int(plan.rate * (plan.duration_s + plan.warmup_s))
    if plan.max_requests is not None:
        expected = min(expected or plan.max_requests, plan.max_requests)
    return tqdm(total=expected, unit="req", desc="grpc load", leave=False)


def add_load_arguments(p: argparse.ArgumentParser) -> None:
    """Flags shared by the gRPC generator and the soak run: workload, SLO, reports."""
    p.add_argument("--release", type=Path, help="release whose dataset/catalogue shapes requests")
    p.add_argument("--dataset", help="dataset spec for histories (wins over --release)")
    p.add_argument("--history-max", type=int, default=RequestMix().history_max)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=10.0, help="per-request deadline, s")
    p.add_argument("--slo-p99-ms", type=float, default=DEFAULT_SLO.p99_ms)
    p.add_argument("--slo-p95-ms", type=float, default=DEFAULT_SLO.p95_ms)
    p.add_argument("--slo-max-error-rate", type=float, default=DEFAULT_SLO.max_error_rate)
    p.add_argument(
        "--slo-min-rate-fraction", type=float, default=DEFAULT_SLO.min_rate_fraction,
        help="fixed-rate runs: achieved/offered QPS floor",
    )  # fmt: skip
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback target")
    p.add_argument("--api-key", help="x-api-key to send (when the server requires one)")


def slo_from_args(args: argparse.Namespace) -> SLO:
    return SLO(
        p99_ms=args.slo_p99_ms, p95_ms=args.slo_p95_ms, max_error_rate=args.slo_max_error_rate,
        min_rate_fraction=args.slo_min_rate_fraction,
    )  # fmt: skip


def workload_from_args(args: argparse.Namespace) -> Workload:
    mix = RequestMix(history_max=args.history_max, seed=args.seed)
    return Workload.from_args(release=args.release, dataset=args.dataset, mix=mix)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m loadtests.grpc_load", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--target", default="127.0.0.1:50051", help="host:port of the gRPC server")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--rate", type=float, help="fixed arrival rate, requests/s (open loop)")
    mode.add_argument("--concurrency", type=int, help="concurrent clients (closed loop)")
    p.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    p.add_argument("--max-requests", type=int, help="stop after this many requests")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    p.add_argument("--max-in-flight", type=int, default=256, help="open loop: outstanding cap")
    p.add_argument("--report-json", type=Path, help="write the JSON report here")
    p.add_argument("--report-md", type=Path, help="write the Markdown report here")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--ready-timeout", type=float, default=10.0, help="wait for the server, s")
    add_load_arguments(p)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """0: SLO met; 1: SLO violated; 2: bad input."""
    args = build_parser().parse_args(argv)
    try:
        require_loopback(args.target, allow_remote=args.allow_remote)
        slo = slo_from_args(args)
        plan = LoadPlan(
            rate=args.rate, concurrency=args.concurrency, duration_s=args.duration,
            max_requests=args.max_requests, warmup_s=args.warmup,
            max_in_flight=args.max_in_flight, timeout_s=args.timeout,
        )  # fmt: skip
        workload = workload_from_args(args)
        print(f"workload: {len(workload)} calls from {workload.source}", file=sys.stderr)
        report = asyncio.run(
            run(
                args.target, workload, plan, slo, seed=args.seed, api_key=args.api_key,
                progress=not args.no_progress and sys.stderr.isatty(),
                ready_timeout_s=args.ready_timeout,
            )
        )  # fmt: skip
    except ReasonrecError as exc:
        print(f"grpc_load: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(report.summary())
    write_reports(
        [report], json_path=args.report_json, md_path=args.report_md, title="gRPC load test"
    )
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
