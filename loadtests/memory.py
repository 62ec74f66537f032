"""Resident-memory sampling of a server process, for soak runs.

RSS comes from psutil when it is installed (it is, as a Locust dependency) and otherwise from
`/proc/<pid>/status` (`VmRSS`, Linux). Samples are taken on the event loop at fixed times;
the verdict compares the end of the run with the end of the warm-up, not with the idle
server, because allocator pools, torch caches and connection buffers fill during the first
requests and never shrink back.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sid_index.errors import ConfigError

MIB = 1024 * 1024


def rss_bytes(pid: int) -> int:
    """Resident set size of one process (psutil if installed, else /proc/<pid>/status)."""
    try:
        import psutil
    except ImportError:
        psutil = None
    if psutil is not None:
        try:
            return int(psutil.Process(pid).memory_info().rss)
        except psutil.Error as exc:
            raise ConfigError(f"cannot read the memory of process {pid} ({exc})") from None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024  # reported in kB
    except OSError as exc:
        raise ConfigError(f"cannot read /proc/{pid}/status ({exc})") from None
    raise ConfigError(f"/proc/{pid}/status has no VmRSS line")


def rss_source() -> str:
    try:
        import psutil  # noqa: F401
    except ImportError:
        return "/proc/<pid>/status VmRSS"
    return "psutil"


@dataclass(frozen=True, slots=True)
class MemoryReport:
    """Server RSS over the soak (MiB) and the growth verdict."""

    pid: int
    source: str
    idle_mib: float
    """Before any load (server ready)."""
    baseline_mib: float
    """At the end of the warm-up."""
    after_mib: float
    """After the last request was answered."""
    max_mib: float
    growth_mib: float
    """after - baseline."""
    bound_mib: float
    slope_mib_per_min: float
    """Least-squares trend of RSS over the measured window (a leak shows as a steady slope)."""
    samples: list[tuple[float, float]]
    """(seconds since load start, MiB)."""

    @property
    def passed(self) -> bool:
        return self.growth_mib <= self.bound_mib


class RssSampler:
    """Samples a process's RSS at fixed times on the event loop."""

    def __init__(self, pid: int, every_s: float) -> None:
        self.pid = pid
        self.every_s = every_s
        self.samples: list[tuple[float, float]] = []

    def take(self, t: float) -> float:
        mib = rss_bytes(self.pid) / MIB
        self.samples.append((round(t, 3), round(mib, 2)))
        return mib

    async def run(self, t0: float, marks: Sequence[float]) -> None:
        """Sample at every `marks` time and every `every_s` until cancelled."""
        loop = asyncio.get_running_loop()
        extra = sorted(marks)
        k = 1
        while True:
            nxt = k * self.every_s
            if extra and extra[0] <= nxt:
                mark = extra.pop(0)
                k += mark == nxt  # a mark on a periodic time is one sample, not two
                nxt = mark
            else:
                k += 1
            await asyncio.sleep(max(0.0, t0 + nxt - loop.time()))
            self.take(loop.time() - t0)
