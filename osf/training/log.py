"""Training metrics: a CSV file always, TensorBoard when it is installed."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Any


class MetricsLog:
    """Rows of ``{"step": ..., name: value}`` appended to ``metrics.csv`` (and TensorBoard).

    Resuming at step ``s`` drops rows logged after ``s`` by the interrupted run, so the file
    reads as one uninterrupted run."""

    def __init__(self, out_dir: Path, resume_step: int = 0, enabled: bool = True):
        self.path = out_dir / "metrics.csv"
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        if enabled and resume_step and self.path.exists():
            with self.path.open() as f:
                self.rows = [r for r in csv.DictReader(f) if int(r["step"]) <= resume_step]
        self._writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._writer = SummaryWriter(str(out_dir / "tensorboard"), purge_step=resume_step or None)
            except ImportError:  # tensorboard is optional
                self._writer = None
            self._rewrite()

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        row = {"step": step, **values}
        self.rows.append(row)
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, step)
        self._rewrite()

    def _rewrite(self) -> None:
        fields = ["step"] + sorted({k for r in self.rows for k in r if k != "step"})
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.rows)
        tmp.replace(self.path)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
