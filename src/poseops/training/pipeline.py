"""The whole pipeline: prepare → train → evaluate → export, through DVC or in this process, and what it left."""

from __future__ import annotations

import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from poseops.dvc import DvcError, run_dvc
from poseops.params import Params
from poseops.tracking.metrics import read_epochs
from poseops.tracking.registry import VersionRef
from poseops.tracking.store import client
from poseops.training.dataset import prepare
from poseops.training.evaluation import evaluate
from poseops.training.fit import train
from poseops.training.layout import Layout, TrainingError, finished_run_id, read_metrics
from poseops.training.register import export, read_version


@dataclass(frozen=True)
class PipelineOutputs:
    """What the last pipeline run left: its MLflow run, registered version, final metrics and epochs."""

    run_id: str
    version: str
    model: str
    metrics: dict[str, float]
    epochs: list[dict[str, float]]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pipeline_outputs(root: Path = Path("."), layout: Layout = Layout()) -> PipelineOutputs:
    """What the last pipeline run in `root` left: its MLflow run id, registered version and metrics."""
    lay = layout.under(root.resolve())
    version = read_version(lay)
    return PipelineOutputs(run_id=finished_run_id(lay), version=version.version, model=version.name,
                           metrics=read_metrics(lay), epochs=read_epochs(lay.train / "results.csv"))


def run_stages(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None) -> VersionRef:
    """prepare → train → evaluate → export in this process (what `dvc repro` runs, without DVC's caching)."""
    mlc = mlc or client()
    prepare(params, root, layout)
    train(params, root, layout, mlc=mlc)
    evaluate(params, root, layout, mlc=mlc)
    return export(params, root, layout, mlc=mlc)


def dvc_repro(root: Path, overrides: list[str] | None = None, extra: list[str] | None = None,
              stream: bool = True) -> subprocess.CompletedProcess:
    """`dvc repro`, or `dvc exp run -S key=value …` when there are overrides; raises on failure."""
    args = ["exp", "run", *[a for o in overrides for a in ("-S", o)]] if overrides else ["repro"]
    try:
        return run_dvc([*args, *(extra or [])], root, stream=stream)
    except DvcError as e:
        raise TrainingError(str(e)) from None


def is_dvc_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()
