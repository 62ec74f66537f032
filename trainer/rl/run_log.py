"""`RunLog`: the metrics log, history and evaluations of a resumable step-based run (the RL
expert loop and MOPD share it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from trainer.training_log import MetricsLog, last_metrics


def truncate_log(path: Path, step: int) -> None:
    """Drop records after `step` from a JSONL metrics log (the steps a crashed run did after its
    last checkpoint are redone and logged again on resume)."""
    if not path.is_file():
        return
    keep = [
        line
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and int(json.loads(line).get("step", 0)) <= step
    ]
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


class RunLog:
    """`out_dir/metrics.jsonl` of a run resuming at `step` (later records dropped), the records
    logged by this process, and its last evaluation."""

    def __init__(self, out_dir: Path, step: int) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.jsonl"
        truncate_log(self.path, step)
        self.metrics = MetricsLog(self.path, append=step > 0)
        self.history: list[dict[str, float]] = []
        self._last_eval: dict[str, float] = {}

    def record(self, step: int, values: dict[str, float]) -> None:
        """Log one record at `step` and keep it in `history`."""
        self.metrics.log(step, values)
        self.history.append(values)

    def evaluate(
        self, step: int, model: nn.Module, evaluate: Callable[[], dict[str, float]] | None
    ) -> None:
        """Run `evaluate` with `model` in eval mode and no grad, and log its metrics."""
        if evaluate is None:
            return
        was = model.training
        model.eval()
        with torch.no_grad():
            self._last_eval = evaluate()
        model.train(was)
        self.record(step, self._last_eval)

    @property
    def last_eval(self) -> dict[str, float]:
        """The last evaluation: this process's, else (a finished run resumed, no step ran) the
        last one in the log."""
        return self._last_eval or last_metrics(self.path)

    def close(self) -> None:
        self.metrics.close()
