"""Ultralytics' per-epoch metrics: results.csv read as rows of poseops metric names, and logged.

Metric names: Ultralytics' `metrics/mAP50-95(P)` becomes `pose_mAP50-95`,
`metrics/precision(B)` becomes `box_precision`; losses keep `train/…` and `val/…`;
`fitness` is Ultralytics' pose fitness (see `FITNESS_WEIGHTS`).
"""

from __future__ import annotations

import csv
import re
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from poseops.tracking.runs import log_metrics
from poseops.tracking.store import store_problem

# Ultralytics 8.4 PoseMetrics.fitness = pose.fitness() + box.fitness(), each
# Metric.fitness = [P, R, mAP50, mAP50-95] · [0, 0, 0, 1]; so fitness = box mAP50-95 + pose mAP50-95.
FITNESS_WEIGHTS = {"box_mAP50-95": 1.0, "pose_mAP50-95": 1.0}
SUMMARY_METRICS = ("fitness", "pose_mAP50", "pose_mAP50-95", "box_mAP50", "box_mAP50-95")
ZERO_POSE_TAG = "poseops.pose_metrics_zero"  # "true" on a run whose pose metrics are all 0
WARNING_TAG = "poseops.warning"  # what the run's user should know (the warning the stage printed)
_ULTRALYTICS_METRIC = re.compile(r"^metrics/(?P<name>[\w.-]+)\((?P<kind>[BP])\)$")


def metric_name(column: str) -> str | None:
    """Our name for a results.csv column; None for columns not logged per epoch (`epoch`)."""
    column = column.strip()
    m = _ULTRALYTICS_METRIC.match(column)
    if m:
        return f"{'box' if m['kind'] == 'B' else 'pose'}_{m['name']}"
    if column == "epoch":
        return None
    if column == "time":
        return "train_time_s"
    return column


def fitness(row: Mapping[str, float]) -> float:
    return sum(weight * float(row.get(key, 0.0) or 0.0) for key, weight in FITNESS_WEIGHTS.items())


def read_epochs(results_csv: Path) -> list[dict[str, float]]:
    """Ultralytics' results.csv as rows of our metric names, each with `epoch` and `fitness`."""
    if not results_csv.is_file():
        return []
    rows: list[dict[str, float]] = []
    with results_csv.open(newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, float] = {"epoch": int(float(raw["epoch"]))}
            for column, value in raw.items():
                name = metric_name(column)
                if name and value not in (None, ""):
                    row[name] = float(value)
            row["fitness"] = fitness(row)
            rows.append(row)
    return rows


def write_epochs_csv(rows: list[dict[str, float]], path: Path) -> None:
    """The per-epoch table DVC plots: epoch, the summary metrics first, then losses and learning rates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", *SUMMARY_METRICS]
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (int(v) if k == "epoch" else round(v, 6)) for k, v in row.items()})


class EpochLogger:
    """An Ultralytics `on_fit_epoch_end` callback that logs every new results.csv row to the run.

    A store that is locked or unreachable at the end of an epoch is reported and does not stop
    the training; the rows it missed go out with a later epoch's (tried again after
    `RETRY_AFTER_S`, so a long lock costs the training one wait a minute), or at the end.

    It reads results.csv rather than `trainer.metrics`, so Ultralytics' final validation of
    best.pt (which also fires `on_fit_epoch_end`) adds no extra epoch, and `flush` after a
    multi-GPU (DDP) training, whose worker processes run no callbacks of ours, logs what is missing.
    """

    RETRY_AFTER_S = 60.0

    def __init__(self, mlc, run_id: str, results_csv: Path, already_logged: int = 0):
        self.mlc, self.run_id, self.results_csv = mlc, run_id, results_csv
        self.logged = already_logged
        self.failed_at: float | None = None

    def __call__(self, trainer: Any = None) -> None:
        if self.failed_at is not None and time.monotonic() - self.failed_at < self.RETRY_AFTER_S:
            return
        try:
            self.flush()
            self.failed_at = None
        except Exception as e:  # a locked or unreachable store does not stop the training: later epochs catch up
            problem = store_problem(self.mlc.tracking_uri, e)
            if problem is None:
                raise
            self.failed_at = time.monotonic()
            print(f"warning: epoch metrics not logged yet, {problem}; training goes on and logs them later",
                  file=sys.stderr)

    def flush(self) -> int:
        for row in read_epochs(self.results_csv):
            epoch = int(row["epoch"])
            if epoch > self.logged:
                log_metrics(self.mlc, self.run_id, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)
                self.logged = epoch
        return self.logged
