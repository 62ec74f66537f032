"""`reasonrec demo`: the whole system on the embedded default, end to end, on one machine.

Every step runs the same `reasonrec` command an operator would run (printed before it runs),
so the demo doubles as a walkthrough:

    data → Semantic IDs → reasoner (alignment + CoT SFT) → fast model → embedded Redis →
    Celery worker (reasoner) → trace backfill → API (HTTP + gRPC) → sample requests →
    thinking vs non-thinking table

Everything the demo starts (Redis, worker, API) is stopped at the end, on error and on
Ctrl-C. Artifacts stay in `--work-dir` (default `./demo-run`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sid_index.errors import ReasonrecError


@dataclass(frozen=True)
class DemoSize:
    """How big the demo is: minutes on a 2-core CPU."""

    users: int = 1500
    items: int = 600
    levels: str = "32,32"
    fast_epochs: int = 12
    align_steps: int = 250
    """Alignment steps after the embedding warm-up (a fraction of an epoch: a demo, not a model)."""
    sft_epochs: int = 1
    reasoner_eval_users: int = 100
    backfill: int = 300
    """Users whose traces the worker computes (the rest are served in no-trace mode)."""
    eval_users: int = 500


SMALL = DemoSize()


class DemoError(ReasonrecError):
    """A demo step failed (names the step and the command)."""


def register(subparsers: Any) -> None:
    """Add the `demo` command."""
    p = subparsers.add_parser(
        "demo",
        help="run the whole system end to end on synthetic data (minutes on a CPU)",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    p.add_argument("--work-dir", type=Path, default=Path("demo-run"))
    p.add_argument("--users", type=int, default=SMALL.users)
    p.add_argument("--items", type=int, default=SMALL.items)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fast-epochs", type=int, default=SMALL.fast_epochs)
    p.add_argument(
        "--no-reasoner",
        action="store_true",
        help="skip the reasoner; the worker uses the rule-based reference backend",
    )
    p.add_argument("--keep", action="store_true", help="keep an earlier --work-dir's release")
    p.set_defaults(handler=run_demo)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Steps:
    """Numbered progress display of the demo's steps."""

    def __init__(self, total: int) -> None:
        self.total, self.done, self.t0 = total, 0, time.perf_counter()

    def start(self, title: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.t0
        print(f"\n\033[1m[{self.done}/{self.total}] {title}\033[0m  (t={elapsed:.0f}s)", flush=True)


def _run(cmd: Sequence[str], env: dict[str, str], step: str) -> None:
    print("  $ " + " ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd), flush=True)
    code = subprocess.call(list(cmd), env=env)
    if code != 0:
        raise DemoError(f"step '{step}' failed (exit {code}): {' '.join(cmd)}")


def _run_json(cmd: Sequence[str], env: dict[str, str], step: str) -> dict[str, Any]:
    """Run a command that ends by printing one JSON object; echo its output, return the object."""
    print("  $ " + " ".join(cmd[2:]), flush=True)
    proc = subprocess.run(list(cmd), env=env, stdout=subprocess.PIPE, text=True, check=False)
    print(proc.stdout, end="", flush=True)
    if proc.returncode != 0:
        raise DemoError(f"step '{step}' failed (exit {proc.returncode}): {' '.join(cmd)}")
    for line in reversed(proc.stdout.strip().splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    raise DemoError(f"step '{step}' printed no summary")


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "serving.cli", *args]


@contextmanager
def _background(
    cmd: Sequence[str], env: dict[str, str], log: Path
) -> Iterator[subprocess.Popen[bytes]]:
    """Start a long-running process; terminate it (then kill) on exit."""
    print("  $ " + " ".join(cmd[2:]) + f"   (background, log: {log})", flush=True)
    fh = log.open("wb")
    proc = subprocess.Popen(
        list(cmd), env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        fh.close()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoError(f"the API exited early (code {proc.returncode}); see {log}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise DemoError(f"the API was not ready within {timeout_s:.0f}s; see {log}")


def _sample_users(spec: str, n: int, seed: int) -> list[tuple[str, list[str]]]:
    """(user id, full history as item ids) of `n` users of the dataset."""
    import numpy as np

    from sid_index.datasets.registry import load_dataset

    data = load_dataset(spec)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(data.interactions), size=min(n, len(data.interactions)), replace=False)
    ids = data.catalog.item_ids
    return [
        (data.interactions.user_ids[r], [ids[int(i)] for i in data.interactions.sequence(r).items])
        for r in rows.tolist()
    ]


def _show_recommendations(
    api: str, users: list[tuple[str, list[str]]], titles: dict[str, str]
) -> None:
    import httpx

    for user_id, history in users:
        body = {"user_id": user_id, "history": history[-50:], "k": 5, "explain": True}
        r = httpx.post(f"{api}/v1/recommend", json=body, timeout=30.0)
        if r.status_code != 200:
            raise DemoError(f"POST /v1/recommend for user {user_id}: {r.status_code} {r.text}")
        rec = r.json()
        recent = "; ".join(titles.get(i, i)[:40] for i in history[-3:])
        print(
            f"\n  user {user_id}  (trace: {rec['trace_status']}, variant: {rec['variant']}, "
            f"{1000 * rec['timings'].get('total', 0):.0f} ms)"
        )
        print(f"    recent: {recent}")
        exp = rec.get("explanation")
        if exp:
            print(f"    persona: {exp['persona']}")
            print(f"    interests: {', '.join(exp['interests'])}")
            print(f"    transition: {exp['transition']}")
        for i, item in enumerate(rec["items"], 1):
            why = f"  ← {item['interest']}" if item.get("interest") else ""
            print(f"    {i}. {item['title'][:60]:<60} {item['sid']}{why}")


def run_demo(args: argparse.Namespace) -> int:
    """Run every step; returns 0 when the whole system answered with explanations."""
    from slow_path.redis_conn import EmbeddedRedis

    # SIGTERM (e.g. `kill`, a CI timeout) must unwind like Ctrl-C so the background worker,
    # API and Redis are stopped by the ExitStack below instead of being orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    work: Path = args.work_dir.resolve()
    if work.exists() and not args.keep:
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    release = work / "release"
    spec = f"synthetic:users={args.users},items={args.items},seed={args.seed}"
    env = dict(os.environ)
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    steps = _Steps(total=9 if not args.no_reasoner else 7)
    t0 = time.perf_counter()

    steps.start("Semantic IDs: embed item text (all-MiniLM-L6-v2), residual k-means, trie")
    if not (release / "manifest.json").exists():
        _run(
            _cli(
                "index",
                "build",
                "--dataset",
                spec,
                "--out",
                str(release),
                "--levels",
                SMALL.levels,
            ),
            env,
            "index build",
        )
    if not args.no_reasoner:
        steps.start("Reasoner: itemic alignment pre-training (scratch:tiny, on this CPU)")
        _run(
            _cli(
                "train",
                "reasoner-align",
                "--release",
                str(release),
                "--base-model",
                "scratch:tiny",
                "--max-steps",
                str(SMALL.align_steps),
            ),
            env,
            "reasoner-align",
        )
        steps.start("Reasoner: three-part chain-of-thought SFT (persona → interests → transition)")
        _run(
            _cli(
                "train",
                "reasoner-sft",
                "--release",
                str(release),
                "--epochs",
                str(SMALL.sft_epochs),
                "--eval-users",
                str(SMALL.reasoner_eval_users),
            ),
            env,
            "reasoner-sft",
        )
    steps.start("Fast model: small SID decoder with trace dropout")
    _run(
        _cli(
            "train",
            "fast",
            "--release",
            str(release),
            "--teacher",
            "rule",
            "--epochs",
            str(args.fast_epochs),
            "--hidden-size",
            "64",
            "--eval-users",
            "300",
        ),
        env,
        "train fast",
    )

    with ExitStack() as stack:
        steps.start(
            "Redis: "
            + (
                "REDIS_URL"
                if os.environ.get("REDIS_URL")
                else "embedded valkey server (REDIS_URL unset)"
            )
        )
        if not os.environ.get("REDIS_URL"):
            redis = stack.enter_context(EmbeddedRedis())
            env["REDIS_URL"] = redis.url
        print(f"  redis at {env['REDIS_URL']}")

        steps.start("Slow path: Celery worker reasons offline and caches traces in Redis")
        users = _sample_users(spec, SMALL.backfill, args.seed)
        user_ids = ",".join(u for u, _ in users)
        backends = ["rule"] if args.no_reasoner else ["transformers", "rule"]
        for backend in backends:
            with _background(
                _cli(
                    "slow-path",
                    "worker",
                    "--release",
                    str(release),
                    "--backend",
                    backend,
                    "--metrics-port",
                    "0",
                    "--hostname",
                    f"demo-{backend}@%h",
                ),
                env,
                work / f"worker-{backend}.log",
            ) as worker:
                summary = _run_json(
                    _cli(
                        "slow-path",
                        "enqueue",
                        "--users",
                        user_ids,
                        "--release",
                        str(release),
                        "--timeout",
                        "600",
                    ),
                    env,
                    "enqueue",
                )
                if worker.poll() is not None:
                    raise DemoError(f"the {backend} worker exited (code {worker.returncode})")
            written = int(summary.get("written", 0)) + int(summary.get("refused", 0))
            print(f"  {backend} backend: traces for {written}/{len(users)} users")
            if written >= len(users) // 2:
                break
            # A demo-size reasoner (minutes of CPU training) may not yet write parseable
            # thoughts; say so and let the rule-based reference backend fill the cache.
            print(
                "  the demo-size reasoner wrote too few parseable traces; backfilling with "
                "the rule-based reference backend (same CoT format and parser)"
            )

        steps.start("Fast path: FastAPI + gRPC server")
        http_port, grpc_port = _free_port(), _free_port()
        api_proc = stack.enter_context(
            _background(
                _cli(
                    "serve",
                    "--release",
                    str(release),
                    "--port",
                    str(http_port),
                    "--grpc-port",
                    str(grpc_port),
                ),
                env,
                work / "api.log",
            )
        )
        api = f"http://127.0.0.1:{http_port}"
        _wait_ready(f"{api}/readyz", api_proc, 180.0, work / "api.log")
        print(f"  HTTP {api}  (OpenAPI: {api}/docs)   gRPC 127.0.0.1:{grpc_port}")

        steps.start("Sample requests: recommendations with explanations from the cached traces")
        from sid_index.datasets.registry import load_dataset

        catalog = load_dataset(spec).catalog
        titles = dict(zip(catalog.item_ids, catalog.titles, strict=True))
        _show_recommendations(api, users[:3], titles)

    steps.start("Thinking vs non-thinking: leave-one-out test, full catalogue")
    teachers = "none,rule" if args.no_reasoner else "none,rule,reasoner"
    out = work / "eval.json"
    _run(
        _cli(
            "eval",
            "--release",
            str(release),
            "--teachers",
            teachers,
            "--limit",
            str(SMALL.eval_users),
            "--out",
            str(out),
        ),
        env,
        "eval",
    )
    report = json.loads(out.read_text())
    print(f"\nDone in {time.perf_counter() - t0:.0f}s on {report.get('machine', 'this machine')}.")
    runs = release.parent / f"{release.name}.runs"
    print(f"  release:   {release}  (manifest.json lists every file with its sha256)")
    print(f"  curves:    {runs}/*/curves.png   logs: {runs}/*/metrics.jsonl")
    print(f"  results:   {out} and {out.with_suffix('.md')}")
    print(f"  processes: worker-*.log, api.log in {work}")
    return 0
