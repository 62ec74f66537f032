"""Locust load test of `POST /v1/recommend` with a realistic request mix and an SLO in code.

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 8 -r 8 -t 30s \\
        --host http://127.0.0.1:8000 --release /path/to/release \\
        --report-json out/locust.json --report-md out/locust.md

Requests come from `loadtests.workload` (the release's dataset or catalogue; `--dataset` to
name one; neither: history-less requests). Every request's latency is kept (not Locust's
rounded histogram), so p50/p95/p99 are exact nearest-rank values, judged on quit against the
SLO of `loadtests.slo.DEFAULT_SLO` (override with `--slo-p99-ms`, `--slo-p95-ms`,
`--slo-max-error-rate`). The process exits 0 when the SLO is met, 1 when it is violated, 2 on
bad input (e.g. a non-loopback host without `--allow-remote`).

Bounds: `-t` (Locust's run time) and `--max-requests` (this file's: the run stops once that
many requests completed). `--user-rate R` paces each user at R requests/s (Locust's
`constant_throughput`); the default 0 sends back to back (closed loop, capacity at `-u` users).
Distributed runs (`--master`/`--worker`): the master judges the SLO on Locust's aggregated
(rounded) statistics; the report says so in `latency_source`.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path
from typing import Any

# Locust puts only this file's folder on sys.path; the repo root holds the loadtests package.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

import gevent  # noqa: E402
import numpy as np  # noqa: E402
from locust import (  # noqa: E402
    HttpUser,
    constant_throughput,
    events,
    task,
)
from locust.env import Environment  # noqa: E402
from locust.exception import CatchResponseError  # noqa: E402
from locust.runners import MasterRunner, WorkerRunner  # noqa: E402

from loadtests.driver import require_loopback  # noqa: E402
from loadtests.slo import (  # noqa: E402
    DEFAULT_SLO,
    SLO,
    LatencyRecorder,
    LoadReport,
    build_report,
    now_iso,
    report_from_summary,
    write_reports,
)
from loadtests.workload import RequestMix, Workload  # noqa: E402
from sid_index.errors import ReasonrecError  # noqa: E402

log = logging.getLogger("loadtests.locust")
ENDPOINT = "/v1/recommend"


class _Run:
    """State of this process's run (Locust instantiates users, not a test object)."""

    def __init__(self) -> None:
        self.workload: Workload | None = None
        self.recorder = LatencyRecorder()
        self.started_at = now_iso()
        self.t_start: float | None = None
        self.t_stop: float | None = None
        self.stopping = False
        self.bad_input: str | None = None
        self.environment: Environment | None = None
        self.users_started = 0


RUN = _Run()


@events.init_command_line_parser.add_listener
def _add_arguments(parser: Any) -> None:
    g = parser.add_argument_group("reasonrec load test")
    g.add_argument("--release", default="", env_var="LOCUST_RELEASE",
                   help="release whose dataset/catalogue shapes the requests")  # fmt: skip
    g.add_argument("--dataset", default="", env_var="LOCUST_DATASET",
                   help="dataset spec for histories (wins over --release)")  # fmt: skip
    g.add_argument("--history-max", type=int, default=RequestMix().history_max)
    g.add_argument("--mix-seed", type=int, default=0, help="seed of the request pool")
    g.add_argument("--user-rate", type=float, default=0.0,
                   help="requests/s per user (0: back to back)")  # fmt: skip
    g.add_argument("--max-requests", type=int, default=0,
                   help="stop after this many requests (0: only -t bounds the run)")  # fmt: skip
    g.add_argument("--slo-p99-ms", type=float, default=DEFAULT_SLO.p99_ms)
    g.add_argument("--slo-p95-ms", type=float, default=DEFAULT_SLO.p95_ms)
    g.add_argument("--slo-max-error-rate", type=float, default=DEFAULT_SLO.max_error_rate)
    g.add_argument("--report-json", default="", help="write the JSON report here")
    g.add_argument("--report-md", default="", help="write the Markdown report here")
    g.add_argument("--allow-remote", action="store_true", help="allow a non-loopback --host")
    g.add_argument("--api-key", default="", env_var="LOCUST_API_KEY",
                   help="x-api-key header (when the server requires one)")  # fmt: skip


def _slo(options: Any) -> SLO:
    # Closed-loop users have no offered rate to fall short of.
    return SLO(
        p99_ms=options.slo_p99_ms, p95_ms=options.slo_p95_ms,
        max_error_rate=options.slo_max_error_rate, min_rate_fraction=None,
    )  # fmt: skip


def _refuse(environment: Environment, why: str) -> None:
    """Log why, stop the run, exit 2."""
    RUN.bad_input = why
    log.error("bad input: %s", why)
    environment.process_exit_code = 2
    if environment.runner is not None:
        gevent.spawn(environment.runner.quit)


@events.init.add_listener
def _on_init(environment: Environment, **_: Any) -> None:
    RUN.environment = environment
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, MasterRunner):
        return  # the master sends no requests: it needs no workload
    try:
        _slo(options)
        if environment.host:
            require_loopback(environment.host, allow_remote=options.allow_remote)
        mix = RequestMix(history_max=options.history_max, seed=options.mix_seed)
        RUN.workload = Workload.from_args(
            release=Path(options.release) if options.release else None,
            dataset=options.dataset or None,
            mix=mix,
        )
    except ReasonrecError as exc:
        _refuse(environment, str(exc))
        return
    log.info("workload: %d calls from %s", len(RUN.workload), RUN.workload.source)


@events.test_start.add_listener
def _on_test_start(environment: Environment, **_: Any) -> None:
    RUN.t_start = time.monotonic()
    RUN.started_at = now_iso()


@events.test_stop.add_listener
def _on_test_stop(environment: Environment, **_: Any) -> None:
    RUN.t_stop = time.monotonic()


@events.request.add_listener
def _on_request(
    request_type: str, name: str, response_time: float, exception: BaseException | None,
    **kw: Any,
) -> None:  # fmt: skip
    if exception is None:
        RUN.recorder.ok(response_time / 1000.0)
    elif isinstance(exception, CatchResponseError):
        RUN.recorder.fail(str(exception))
    else:
        RUN.recorder.fail(type(exception).__name__)
    env = RUN.environment
    if env is None or env.parsed_options is None or env.runner is None:
        return
    limit = env.parsed_options.max_requests
    if limit and RUN.recorder.requests >= limit and not RUN.stopping:
        RUN.stopping = True
        log.info("%d requests done: stopping (--max-requests)", RUN.recorder.requests)
        # quit() kills the user greenlets, this one included: run it from another greenlet.
        gevent.spawn(env.runner.quit)


def _report(environment: Environment) -> LoadReport:
    options = environment.parsed_options
    slo = _slo(options)
    users = float(getattr(options, "num_users", 0) or 0)
    target = environment.host or ""
    end = RUN.t_stop or time.monotonic()
    window = end - RUN.t_start if RUN.t_start is not None else 0.0
    if isinstance(environment.runner, MasterRunner):
        total = environment.stats.total
        fails = {str(e.error): e.occurrences for e in environment.stats.errors.values()}
        return report_from_summary(
            tool="locust", protocol="http", target=target, mode="concurrency", offered=users,
            window_s=window, slo=slo, successes=total.num_requests - total.num_failures,
            failures=fails or ({"failure": total.num_failures} if total.num_failures else {}),
            p50_ms=float(total.get_response_time_percentile(0.5) or float("nan")),
            p95_ms=float(total.get_response_time_percentile(0.95) or float("nan")),
            p99_ms=float(total.get_response_time_percentile(0.99) or float("nan")),
            max_ms=float(total.max_response_time or float("nan")),
            mean_ms=float(total.avg_response_time or float("nan")),
            started_at=RUN.started_at, latency_source="locust-stats",
        )  # fmt: skip
    return build_report(
        RUN.recorder, tool="locust", protocol="http", target=target, mode="concurrency",
        offered=users, window_s=window, slo=slo, started_at=RUN.started_at,
    )  # fmt: skip


@events.quitting.add_listener
def _on_quitting(environment: Environment, **_: Any) -> None:
    if RUN.bad_input is not None:
        environment.process_exit_code = 2
        return
    options = environment.parsed_options
    if options is None or isinstance(environment.runner, WorkerRunner):
        return  # the master judges the whole run
    report = _report(environment)
    write_reports(
        [report], title="HTTP load test (Locust)",
        json_path=Path(options.report_json) if options.report_json else None,
        md_path=Path(options.report_md) if options.report_md else None,
    )  # fmt: skip
    print(report.summary(), file=sys.stderr, flush=True)
    environment.process_exit_code = 0 if report.passed else 1


class RecommendUser(HttpUser):
    """A product service asking for recommendations."""

    def on_start(self) -> None:
        options = self.environment.parsed_options
        rate = options.user_rate if options is not None else 0.0
        self._pace = constant_throughput(rate) if rate > 0 else None
        # Users draw different calls; (seed, start order) keeps the streams reproducible.
        RUN.users_started += 1
        self._rng = np.random.default_rng([options.mix_seed if options else 0, RUN.users_started])
        key = options.api_key if options is not None else ""
        self._headers = {"content-type": "application/json", **({"x-api-key": key} if key else {})}

    def wait_time(self) -> float:
        return float(self._pace(self)) if self._pace is not None else 0.0

    @task
    def recommend(self) -> None:
        if RUN.workload is None:
            return
        call = RUN.workload.pick(self._rng)
        with self.client.post(
            ENDPOINT, data=call.json_bytes(), headers=self._headers, name=ENDPOINT,
            catch_response=True,
        ) as resp:  # fmt: skip
            if resp.status_code != 200:
                resp.failure(f"http_{resp.status_code}")
                return
            try:
                items = resp.json()["items"]
            except (ValueError, KeyError, TypeError):
                resp.failure("bad_body")
                return
            if len(items) > call.k:
                resp.failure("too_many_items")
            else:
                resp.success()
