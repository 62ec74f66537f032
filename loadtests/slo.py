"""The serving SLO, the latency recorder every load tool fills, and the report they all write.

One definition for the Locust file, the gRPC generator and the soak run, so "p99" and "error
rate" mean the same thing in every report:

* latency percentiles are nearest-rank (`numpy.percentile(method="inverted_cdf")`): p99 is a
  latency some request really had, never an interpolation below it;
* percentiles are over successful requests (a fast 503 must not make p99 look better); failed
  requests count against the error rate instead;
* QPS is completed requests (successes and failures) over the measured window.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
from array import array
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from sid_index.errors import ConfigError

PERCENTILES = (50.0, 95.0, 99.0)


@dataclass(frozen=True, slots=True)
class SLO:
    """What a load run must meet. The defaults are the API's serving objective."""

    p99_ms: float = 250.0
    """Bound on the 99th-percentile latency of successful requests, in milliseconds."""
    max_error_rate: float = 0.001
    """Largest allowed fraction of failed requests (non-200, RPC errors, timeouts)."""
    p95_ms: float | None = None
    """Optional bound on the 95th percentile, in milliseconds (None: not checked)."""
    min_rate_fraction: float | None = 0.95
    """Fixed-rate runs only: achieved QPS must reach this fraction of the offered rate, or the
    server did not keep up (None: not checked; closed-loop runs have no offered rate)."""
    min_requests: int = 1
    """A run with fewer completed requests proves nothing and fails."""

    def __post_init__(self) -> None:
        if not self.p99_ms > 0:
            raise ConfigError(f"{self.p99_ms=} must be > 0")
        if self.p95_ms is not None and not self.p95_ms > 0:
            raise ConfigError(f"{self.p95_ms=} must be > 0")
        if not 0.0 <= self.max_error_rate <= 1.0:
            raise ConfigError(f"{self.max_error_rate=} must be in [0, 1]")
        if self.min_rate_fraction is not None and not 0.0 < self.min_rate_fraction <= 1.0:
            raise ConfigError(f"{self.min_rate_fraction=} must be in (0, 1]")
        if self.min_requests < 1:
            raise ConfigError(f"{self.min_requests=} must be >= 1")


DEFAULT_SLO = SLO()


def percentiles_ms(latencies_s: np.ndarray, qs: tuple[float, ...] = PERCENTILES) -> list[float]:
    """Nearest-rank percentiles of latencies given in seconds, in milliseconds (NaN if empty)."""
    if latencies_s.size == 0:
        return [float("nan")] * len(qs)
    got = np.percentile(latencies_s * 1000.0, qs, method="inverted_cdf")
    return [float(v) for v in got]


class LatencyRecorder:
    """Latencies of successful requests and counts of failures, by kind.

    Appends are O(1) into a flat float array (8 bytes a request), so a 10-minute soak at
    100 req/s holds 480 KB, not a list of Python floats.
    """

    def __init__(self) -> None:
        self._ok = array("d")
        self.failures: Counter[str] = Counter()

    def ok(self, seconds: float) -> None:
        """Record one successful request."""
        self._ok.append(seconds)

    def fail(self, kind: str) -> None:
        """Record one failed request (`kind` e.g. `http_503`, `grpc_UNAVAILABLE`, `timeout`)."""
        self.failures[kind] += 1

    @property
    def successes(self) -> int:
        return len(self._ok)

    @property
    def errors(self) -> int:
        return sum(self.failures.values())

    @property
    def requests(self) -> int:
        return self.successes + self.errors

    def latencies_s(self) -> np.ndarray:
        """(N,) float64 latencies of the successful requests, in seconds."""
        return np.frombuffer(self._ok, dtype=np.float64).copy()


@dataclass(frozen=True, slots=True)
class LoadReport:
    """The outcome of one load run against one protocol, with the SLO verdict."""

    tool: str
    """`locust`, `grpc_load` or `soak`."""
    protocol: str
    """`http` or `grpc`."""
    target: str
    mode: str
    """`rate` (open loop, fixed arrival rate) or `concurrency` (closed loop)."""
    offered: float
    """Requests/s offered (`rate`) or concurrent clients (`concurrency`)."""
    window_s: float
    requests: int
    errors: int
    errors_by_kind: dict[str, int]
    error_rate: float
    qps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    mean_ms: float
    slo: dict[str, Any]
    violations: list[str]
    started_at: str
    machine: dict[str, Any] = field(default_factory=dict)
    latency_source: str = "exact"
    """`exact` (every latency kept) or `locust-stats` (Locust's rounded histogram, used by a
    distributed master that never sees the raw samples)."""

    @property
    def passed(self) -> bool:
        return not self.violations

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (NaN latencies of an empty run become null)."""
        d = asdict(self)
        for key, value in d.items():
            if isinstance(value, float) and not np.isfinite(value):
                d[key] = None
        d["passed"] = self.passed
        return d

    def summary(self) -> str:
        """One line for a console."""
        verdict = "SLO met" if self.passed else "SLO VIOLATED: " + "; ".join(self.violations)
        return (
            f"{self.tool} {self.protocol} {self.mode}={self.offered:g}: {self.requests} requests "
            f"in {self.window_s:.1f} s = {self.qps:.1f} req/s, p50 {self.p50_ms:.1f} ms, "
            f"p95 {self.p95_ms:.1f} ms, p99 {self.p99_ms:.1f} ms, errors {self.errors} "
            f"({self.error_rate:.2%}) -> {verdict}"
        )


def evaluate(
    slo: SLO, *, requests: int, error_rate: float, qps: float, p95_ms: float, p99_ms: float,
    offered_rate: float | None,
) -> list[str]:  # fmt: skip
    """The SLO clauses a run broke, each as a sentence naming the measured value; [] = met."""
    out: list[str] = []
    if requests < slo.min_requests:
        out.append(f"{requests} requests completed, fewer than min_requests={slo.min_requests}")
    if requests and error_rate > slo.max_error_rate:
        out.append(f"error rate {error_rate:.4f} > max_error_rate={slo.max_error_rate:g}")
    if not np.isfinite(p99_ms):
        if requests:
            out.append("no successful request, so no p99 to check")
    elif p99_ms > slo.p99_ms:
        out.append(f"p99 {p99_ms:.2f} ms > p99_ms={slo.p99_ms:g}")
    if slo.p95_ms is not None and np.isfinite(p95_ms) and p95_ms > slo.p95_ms:
        out.append(f"p95 {p95_ms:.2f} ms > p95_ms={slo.p95_ms:g}")
    if offered_rate is not None and slo.min_rate_fraction is not None:
        floor = slo.min_rate_fraction * offered_rate
        if qps < floor:
            out.append(
                f"achieved {qps:.2f} req/s < {slo.min_rate_fraction:g} x offered "
                f"{offered_rate:g} req/s"
            )
    return out


def build_report(
    recorder: LatencyRecorder, *, tool: str, protocol: str, target: str, mode: str,
    offered: float, window_s: float, slo: SLO, started_at: str | None = None,
) -> LoadReport:  # fmt: skip
    """Summarize a recorder over a measured window and judge it against `slo`."""
    lat = recorder.latencies_s()
    p50, p95, p99 = percentiles_ms(lat)
    return report_from_summary(
        tool=tool, protocol=protocol, target=target, mode=mode, offered=offered,
        window_s=window_s, slo=slo, started_at=started_at, successes=recorder.successes,
        failures=dict(recorder.failures), p50_ms=p50, p95_ms=p95, p99_ms=p99,
        max_ms=float(lat.max() * 1000) if lat.size else float("nan"),
        mean_ms=float(lat.mean() * 1000) if lat.size else float("nan"),
    )  # fmt: skip


def report_from_summary(
    *, tool: str, protocol: str, target: str, mode: str, offered: float, window_s: float,
    slo: SLO, successes: int, failures: dict[str, int], p50_ms: float, p95_ms: float,
    p99_ms: float, max_ms: float, mean_ms: float, started_at: str | None = None,
    latency_source: str = "exact",
) -> LoadReport:  # fmt: skip
    """A report from already-summarized numbers (latencies in ms), judged against `slo`."""
    errors = sum(failures.values())
    requests = successes + errors
    error_rate = errors / requests if requests else 0.0
    qps = requests / window_s if window_s > 0 else 0.0
    violations = evaluate(
        slo, requests=requests, error_rate=error_rate, qps=qps, p95_ms=p95_ms, p99_ms=p99_ms,
        offered_rate=offered if mode == "rate" else None,
    )  # fmt: skip
    return LoadReport(
        tool=tool, protocol=protocol, target=target, mode=mode, offered=offered,
        window_s=window_s, requests=requests, errors=errors, errors_by_kind=dict(failures),
        error_rate=error_rate, qps=qps, p50_ms=p50_ms, p95_ms=p95_ms, p99_ms=p99_ms,
        max_ms=max_ms, mean_ms=mean_ms, slo=asdict(slo), violations=violations,
        started_at=started_at or now_iso(), machine=machine_info(),
        latency_source=latency_source,
    )  # fmt: skip


def now_iso() -> str:
    """UTC now, ISO-8601, seconds."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def machine_info() -> dict[str, Any]:
    """Cores, CPU model, load average and Python of this machine (the load generator's)."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "python": platform.python_version(),
        "host": platform.node(),
    }


def markdown_table(reports: list[LoadReport]) -> str:
    """A Markdown table of reports, one row each."""
    lines = [
        "| tool | protocol | mode | offered | requests | QPS | p50 ms | p95 ms | p99 ms | "
        "max ms | errors | SLO |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for r in reports:
        lines.append(
            f"| {r.tool} | {r.protocol} | {r.mode} | {r.offered:g} | {r.requests} | "
            f"{r.qps:.1f} | {r.p50_ms:.1f} | {r.p95_ms:.1f} | {r.p99_ms:.1f} | {r.max_ms:.1f} | "
            f"{r.errors} ({r.error_rate:.2%}) | {'met' if r.passed else 'violated'} |"
        )
    return "\n".join(lines)


def render_markdown(title: str, reports: list[LoadReport]) -> str:
    """A short Markdown report: SLO, table, violations."""
    if not reports:
        return f"# {title}\n\nNo runs.\n"
    slo = reports[0].slo
    m = reports[0].machine
    lines = [
        f"# {title}",
        "",
        f"Started {reports[0].started_at}; load generator on {m.get('cpus')} cores "
        f"({m.get('cpu')}), load average {m.get('load_avg_1m')} at the end.",
        "",
        f"SLO: p99 <= {slo['p99_ms']:g} ms"
        + (f", p95 <= {slo['p95_ms']:g} ms" if slo.get("p95_ms") is not None else "")
        + f", error rate <= {slo['max_error_rate']:g}"
        + (
            f", achieved >= {slo['min_rate_fraction']:g} x offered rate (fixed-rate runs)"
            if slo.get("min_rate_fraction") is not None
            else ""
        )
        + ".",
        "",
        markdown_table(reports),
        "",
    ]
    for r in reports:
        for v in r.violations:
            lines.append(f"- {r.tool} {r.protocol}: {v}")
    return "\n".join(lines).rstrip("\n") + "\n"


def write_reports(
    reports: list[LoadReport], *, json_path: Path | None, md_path: Path | None, title: str,
    extra: dict[str, Any] | None = None,
) -> None:  # fmt: skip
    """Write the JSON (`{"reports": [...], **extra}`) and/or Markdown report files."""
    if json_path is not None:
        json_path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"reports": [r.to_dict() for r in reports], **(extra or {})}
        json_path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    if md_path is not None:
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(render_markdown(title, reports), encoding="utf-8")
