"""`reasonrec serve`: the HTTP + gRPC recommendation API in one process.

Flags override the environment (`REASONREC_*`, `REDIS_URL`; see serving.settings). Heavy
imports (torch, FastAPI, gRPC) happen inside the handler, so `reasonrec --help` stays instant.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(subparsers: Any) -> None:
    """Add the `serve` subcommand."""
    p = subparsers.add_parser(
        "serve",
        help="serve recommendations over HTTP and gRPC",
        description="Serve the fast path: FastAPI on --port (POST /v1/recommend, POST "
        "/v1/events, GET /v1/users/{id}/trace, /healthz, /readyz, /metrics) and gRPC on "
        "--grpc-port (reasonrec.v1.RecommendService, health, reflection), with A/B "
        "experiments from REASONREC_EXPERIMENTS_FILE, hot-reloaded. SIGTERM shuts down "
        "gracefully.",
    )
    p.add_argument(
        "--release", type=Path, help="release directory (default: $REASONREC_RELEASE_DIR)"
    )
    p.add_argument("--host", help="interface to bind (default 127.0.0.1; 0.0.0.0 in images)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--grpc-port", type=int, help="gRPC port (default 50051)")
    p.add_argument("--no-grpc", action="store_true", help="serve HTTP only")
    p.add_argument(
        "--experiments", type=Path, help="experiments YAML (default: $REASONREC_EXPERIMENTS_FILE)"
    )
    p.add_argument(
        "--no-micro-batching", action="store_true", help="decode every request on its own"
    )
    p.set_defaults(handler=serve)


def serve(args: argparse.Namespace) -> int:
    """Run the servers until SIGTERM/SIGINT; 0 after a graceful shutdown."""
    import asyncio
    import logging

    from serving.server import ServingProcess
    from serving.settings import ServingSettings

    overrides: dict[str, Any] = {
        "release_dir": args.release,
        "host": args.host,
        "port": args.port,
        "grpc_port": args.grpc_port,
        "experiments_file": args.experiments,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if args.no_grpc:
        overrides["grpc_port"] = None
    if args.no_micro_batching:
        overrides["micro_batching"] = False
    settings = ServingSettings.load(**overrides)
    if not getattr(args, "verbose", False):
        logging.getLogger().setLevel(settings.log_level_number)
    return asyncio.run(ServingProcess(settings).run())
