"""A training run's metrics log: JSONL on disk, a PNG of the curves, and a tqdm progress bar.

Every trainer (SASRec baseline, reasoner stages, fast model) logs the same way so runs can be
compared and plotted by one tool::

    with MetricsLog(out_dir / "metrics.jsonl") as log:
        for epoch in progress(range(epochs), desc="train", unit="epoch"):
            ...
            log.log(step, {"train/loss": loss, "valid/recall@10": r10}, epoch=epoch)
        log.plot(out_dir / "curves.png")

One JSON object per line: `{"step": int, "epoch": int | null, "wall_s": float, <metric>: float}`.
Non-finite values (a diverged loss) are written as `null` — strict JSON has no NaN — and read
back as NaN, so a crashed run's log still parses.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, TypeVar

from tqdm import tqdm

from sid_index.errors import DataError

T = TypeVar("T")

_RESERVED = ("step", "epoch", "wall_s")


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One logged point of a run."""

    step: int
    """Optimizer step (or any monotone counter) the metrics belong to."""
    epoch: int | None
    """Epoch, where the trainer has epochs."""
    wall_s: float
    """Seconds since the log was opened."""
    metrics: dict[str, float]
    """Metric name (e.g. "train/loss", "valid/recall@10") → value; NaN for non-finite."""


class MetricsLog:
    """Appends `LogRecord`s to a JSONL file (flushed per record, so a killed run keeps its log)."""

    def __init__(self, path: Path | str, *, append: bool = False) -> None:
        """Open `path` for writing (truncating it unless `append`); parent dirs are created."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh: IO[str] | None = self.path.open("a" if append else "w", encoding="utf-8")
        self._t0 = time.perf_counter()
        self._records: list[LogRecord] = read_log(self.path) if append else []

    def log(
        self, step: int, metrics: Mapping[str, float], *, epoch: int | None = None
    ) -> LogRecord:
        """Write one record and return it."""
        if self._fh is None:
            raise DataError(f"metrics log {self.path} is closed")
        clash = [k for k in metrics if k in _RESERVED]
        if clash:
            raise DataError(f"metric names {clash} clash with the log's own fields {_RESERVED}")
        values = {k: float(v) for k, v in metrics.items()}
        record = LogRecord(int(step), epoch, time.perf_counter() - self._t0, values)
        row: dict[str, object] = {"step": record.step, "epoch": epoch, "wall_s": record.wall_s}
        row.update({k: v if math.isfinite(v) else None for k, v in values.items()})
        self._fh.write(json.dumps(row, allow_nan=False) + "\n")
        self._fh.flush()
        self._records.append(record)
        return record

    @property
    def records(self) -> list[LogRecord]:
        """Everything logged so far (including earlier records when opened with append)."""
        return list(self._records)

    def plot(
        self, png_path: Path | str, *, keys: Sequence[str] | None = None, title: str = ""
    ) -> Path:
        """Write the curves logged so far to a PNG (see `plot_curves`)."""
        return plot_curves(self._records, png_path, keys=keys, title=title or self.path.stem)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> MetricsLog:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def read_log(path: Path | str) -> list[LogRecord]:
    """Parse a JSONL metrics log (raises DataError naming the file and line on bad input)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"metrics log {path} does not exist")
    records: list[LogRecord] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                step = int(row.pop("step"))
                epoch = row.pop("epoch", None)
                wall_s = float(row.pop("wall_s", 0.0))
                metrics = {k: math.nan if v is None else float(v) for k, v in row.items()}
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise DataError(f"{path}:{lineno}: bad metrics record ({exc})") from None
            records.append(LogRecord(step, None if epoch is None else int(epoch), wall_s, metrics))
    return records


def last_metrics(path: Path | str, prefix: str = "valid/") -> dict[str, float]:
    """The metrics of the last record of a log that has any `prefix` key ({} if none or no log):
    what a finished run, resumed, reports as its final evaluation without evaluating again."""
    if not Path(path).exists():
        return {}
    for rec in reversed(read_log(path)):
        if any(k.startswith(prefix) for k in rec.metrics):
            return dict(rec.metrics)
    return {}


def plot_curves(
    records: Sequence[LogRecord],
    png_path: Path | str,
    *,
    keys: Sequence[str] | None = None,
    title: str = "",
) -> Path:
    """Plot each metric against the step, one panel per metric, into a PNG.

    Args:
        records: logged points; a metric absent from a record is simply not drawn there.
        png_path: output file (parent dirs are created).
        keys: metrics to draw, in panel order (default: every metric, in first-seen order).
        title: figure title.
    Returns:
        The PNG path.
    """
    # Agg: no display on training machines; imported lazily so importing the log is cheap.
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if keys is None:
        keys = list(dict.fromkeys(k for r in records for k in r.metrics))
    if not keys:
        raise DataError(f"nothing to plot into {png_path}: no metrics logged")
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys, strict=False):
        pts = [(r.step, r.metrics[key]) for r in records if key in r.metrics]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o" if len(pts) <= 60 else None, markersize=3)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out = Path(png_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def progress(
    iterable: Iterable[T],
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
) -> tqdm[T]:
    """A tqdm progress bar with the project's defaults (stderr, smoothed rate, dynamic width)."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        unit=unit,
        disable=disable,
        leave=leave,
        dynamic_ncols=True,
        smoothing=0.1,
    )
