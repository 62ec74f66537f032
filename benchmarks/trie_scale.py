"""SIDTrie at catalogue scale: build time, memory, and mask/children latency per level.

Run from the repository root:

    .venv/bin/python -m benchmarks.trie_scale            # 10^6 and 10^7 items, writes RESULTS.md
    .venv/bin/python -m benchmarks.trie_scale --sizes 100000 --no-write

Codes have 3 levels of 256 plus a disambiguation level (rank among items that share the
first three codes), drawn uniformly ("random") or from a Zipf(s=0.5) law per level
("skewed", so popular prefixes collide and the disambiguation level grows). Memory is the
trie's own `nbytes` and the process RSS (retained after the build, and the peak while
building, sampled every 5 ms).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import gc
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch

from benchmarks.results_file import replace_section
from sid_index.codes import SemanticIDs
from sid_index.trie import Exclusion, SIDTrie

SECTION = "## SIDTrie memory and build time"
RESULTS = Path(__file__).with_name("RESULTS.md")
BATCH_STATES = 64 * 20  # 64 requests × 20 beams


def _rss_bytes() -> int:
    """Current resident set size (resident pages × page size)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc), so RSS deltas count live arrays only —
    otherwise the build reuses pages freed by the code generator and looks free."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class _PeakRSS:
    """Samples RSS in a thread while a block runs (the build's temporaries are transient)."""

    def __enter__(self) -> _PeakRSS:
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def make_codes(n: int, kind: str, seed: int = 0) -> SemanticIDs:
    """(n, 4) SIDs: 3 × 256 codes + a disambiguation level, made unique."""
    rng = np.random.default_rng(seed)
    if kind == "random":
        base = rng.integers(0, 256, size=(n, 3), dtype=np.int32)
    else:
        p = 1.0 / np.sqrt(np.arange(1, 257))
        p /= p.sum()
        base = np.stack(
            [rng.permutation(256)[rng.choice(256, size=n, p=p)] for _ in range(3)], axis=1
        ).astype(np.int32)
    key = (base[:, 0].astype(np.int64) << 16) | (base[:, 1] << 8) | base[:, 2]
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    opens = np.concatenate(([True], sorted_key[1:] != sorted_key[:-1]))
    group_start = np.flatnonzero(opens)
    rank = np.arange(n) - group_start[np.cumsum(opens) - 1]  # rank within its 3-level prefix
    disamb = np.empty(n, dtype=np.int32)
    disamb[order] = rank
    codes = np.concatenate([base, disamb[:, None]], axis=1)
    return SemanticIDs(codes, (256, 256, 256, int(disamb.max()) + 1))


def _best_ms(fn: Callable[[], object], reps: int) -> float:
    """Fastest of `reps` calls in ms: on a box shared with other jobs, the median of a
    sub-millisecond op mostly measures preemption, the minimum measures the op."""
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times) * 1e3


@dataclass(frozen=True, slots=True)
class Scale:
    """One catalogue size × code distribution."""

    n: int
    kind: str
    levels: tuple[int, ...]
    nodes: int
    build_s: float
    nbytes: int
    rss_retained: int
    rss_peak: int
    dense: list[bool]
    max_degree: tuple[int, ...]
    mask_ms: list[float]
    children_ms: list[float]
    mask_excl_ms: list[float]
    excl_build_ms: float


def measure(n: int, kind: str) -> Scale:
    """Build one trie and time its batch queries."""
    sids = make_codes(n, kind)
    gc.collect()
    _release_free_memory()
    before = _rss_bytes()
    with _PeakRSS() as peak:
        t0 = time.perf_counter()
        trie = SIDTrie.build(sids)
        build_s = time.perf_counter() - t0
    gc.collect()
    _release_free_memory()
    retained = _rss_bytes() - before
    rng = np.random.default_rng(1)
    items = torch.from_numpy(rng.integers(0, n, size=BATCH_STATES))
    paths = trie.item_path(items)  # (1280, L+1) states of real prefixes at every depth
    excl = Exclusion.build(trie, [rng.integers(0, n, size=100) for _ in range(64)])
    request = torch.arange(64).repeat_interleave(20)
    mask_ms, kids_ms, excl_ms = [], [], []
    for lvl in range(trie.num_levels):
        states = paths[:, lvl]
        trie.allowed_mask(states, lvl)  # warm-up
        mask_ms.append(_best_ms(partial(trie.allowed_mask, states, lvl), 30))
        kids_ms.append(_best_ms(partial(trie.children, states, lvl), 30))
        excl_ms.append(_best_ms(partial(trie.allowed_mask, states, lvl, excl, request), 30))
    sets = [rng.integers(0, n, size=100) for _ in range(64)]
    excl_build_ms = _best_ms(partial(Exclusion.build, trie, sets), 10)
    return Scale(
        n=n,
        kind=kind,
        levels=trie.level_sizes,
        nodes=trie.num_nodes,
        build_s=build_s,
        nbytes=trie.nbytes,
        rss_retained=retained,
        rss_peak=peak.peak - before,
        dense=[t is not None for t in trie.dense],
        max_degree=trie.max_degree,
        mask_ms=mask_ms,
        children_ms=kids_ms,
        mask_excl_ms=excl_ms,
        excl_build_ms=excl_build_ms,
    )


def _fmt_levels(values: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in values)


def render(rows: list[Scale], command: str) -> str:
    """The RESULTS.md section (markdown)."""
    mib = 2**20
    lines = [
        SECTION,
        "",
        f"Measured {dt.date.today().isoformat()} on {platform.node() or 'this machine'}: "
        f"{_cpu_name()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s) for "
        f"the queries, torch {torch.__version__}, numpy {np.__version__}, Python "
        f"{platform.python_version()}; load average at the end {_load()} (shared box).",
        f"Command: `{command}`",
        "",
        "Codes: 3 × 256 levels + a disambiguation level (rank among items sharing the first "
        "three codes); *random* = uniform codes, *skewed* = Zipf(s=0.5) per level. RSS is the "
        "process resident set: *retained* after the build, *peak* while building (sampled).",
        "",
        "| items | codes | level sizes | nodes | build (s) | trie nbytes (MiB) | "
        "RSS retained (MiB) | RSS peak (MiB) | dense levels |",
        "|---:|---|---|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        dense = ",".join(str(i) for i, d in enumerate(r.dense) if d) or "none"
        lines.append(
            f"| {r.n:,} | {r.kind} | {r.levels} | {r.nodes:,} | {r.build_s:.2f} | "
            f"{r.nbytes / mib:.0f} | {r.rss_retained / mib:.0f} | {r.rss_peak / mib:.0f} | "
            f"{dense} |"
        )
    lines += [
        "",
        f"Query latency for a batch of {BATCH_STATES} states (64 requests × 20 beams) at real "
        "prefixes, best of 30 (the box is shared: the minimum is the op, not the preemption), "
        "in ms per level 0 / 1 / 2 / 3. `allowed_mask` returns the "
        "(B, level size) bool mask; `children` the padded (B, W) child codes/nodes the beam "
        "search gathers; *excl.* adds a per-request exclusion (64 × 100 random items), whose "
        "build time is the last column.",
        "",
        "| items | codes | max fan-out | allowed_mask | children | allowed_mask + excl. | "
        "Exclusion.build (ms) |",
        "|---:|---|---|---|---|---|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.n:,} | {r.kind} | {r.max_degree} | {_fmt_levels(r.mask_ms)} | "
            f"{_fmt_levels(r.children_ms)} | {_fmt_levels(r.mask_excl_ms)} | "
            f"{r.excl_build_ms:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _load() -> str:
    """The 1 / 5 / 15 min load averages (other jobs share this machine)."""
    return " / ".join(f"{x:.1f}" for x in os.getloadavg())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def write_section(text: str, path: Path = RESULTS) -> None:
    """Replace (or append) the section whose heading is `text`'s first line (this benchmark's
    and beam_search_speed's), leaving the others alone."""
    replace_section(text.splitlines()[0], text, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10**6, 10**7])
    parser.add_argument(
        "--kinds", nargs="+", choices=["random", "skewed"], default=["random", "skewed"]
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for the queries (0: default)"
    )
    parser.add_argument("--no-write", action="store_true", help="print only, leave RESULTS.md")
    args = parser.parse_args(argv)
    if args.threads:
        # Sub-millisecond ops: fanning them across the 2 cores of a shared box mostly adds
        # barrier stalls, so the default is one intra-op thread (as a serving worker would use).
        torch.set_num_threads(args.threads)
    rows = []
    for n in args.sizes:
        for kind in args.kinds:
            row = measure(n, kind)
            print(row, flush=True)
            rows.append(row)
    command = ".venv/bin/python -m benchmarks.trie_scale " + " ".join(argv or sys.argv[1:])
    text = render(rows, command.strip())
    print(text)
    if not args.no_write:
        write_section(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
