"""Where each training stage reads and writes, and the state file the train stage leaves behind."""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from poseops.errors import PoseopsError

STATE_FILE = "poseops.json"  # in the train folder: the MLflow run id and what the run was trained with
VERSION_FILE = "model_version.json"  # in the model folder: the registered version of this pipeline run
MODEL_ARTIFACTS = "model"  # the run's artifact folder that a model version points to
PACKAGE_LINK = Path("src") / "poseops"  # where dvc.yaml's stages find the package modules they run


class TrainingError(PoseopsError, RuntimeError):
    """A training step that cannot go on; the message names the problem and the fix."""


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to the project root (dvc.yaml passes the same)."""

    prepared: Path = Path("data/prepared")
    train: Path = Path("runs/train")
    epochs_csv: Path = Path("reports/epochs.csv")
    evaluate: Path = Path("runs/evaluate")
    metrics: Path = Path("reports/metrics.json")
    model: Path = Path("models")
    keypoints: Path = Path("reports/keypoints.json")  # per-keypoint metrics (evaluate)
    images_oks: Path = Path("reports/images_oks.csv")  # per-image OKS (evaluate)

    def under(self, root: Path) -> Layout:
        return Layout(**{k: root / v for k, v in asdict(self).items()})


def resolved_data_yaml(prepared_yaml: Path, dest: Path) -> Path:
    """A copy of the prepared data.yaml with an absolute `path`, which Ultralytics needs."""
    if not prepared_yaml.is_file():
        raise TrainingError(f"{prepared_yaml} is missing: run the prepare stage first (dvc repro prepare)")
    data = yaml.safe_load(prepared_yaml.read_text(encoding="utf-8"))
    data["path"] = str((prepared_yaml.parent / data["path"]).resolve())
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dest


def read_metrics(layout: Layout) -> dict[str, float]:
    """The evaluate stage's metrics.json ({} before it ran)."""
    return json.loads(layout.metrics.read_text(encoding="utf-8")) if layout.metrics.is_file() else {}


# --- the train folder's state file ------------------------------------------------------------------


def read_state(train_dir: Path) -> dict[str, Any]:
    """The train folder's state: run_id, status (running, interrupted, trained, finished), fingerprint, init tags."""
    path = train_dir / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def write_state(train_dir: Path, state: dict[str, Any]) -> None:
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def finished_run_id(layout: Layout) -> str:
    """The MLflow run of the finished training in `layout.train`; an error when there is none."""
    state = read_state(layout.train)
    if state.get("status") != "finished" or not state.get("run_id"):
        raise TrainingError(f"{layout.train / STATE_FILE} names no finished training: run the train stage first")
    return state["run_id"]


def run_stage(step: Callable[[], Any]) -> None:
    """Run a stage script's step; a problem a person can fix ends it with one line on stderr, exit code 1.

    The step's objects are then frozen out of the garbage collector: the interpreter's exit would otherwise
    collect everything torch, Ultralytics and MLflow made, which took over a second per stage (atexit handlers
    still run; the process ends right after)."""
    try:
        step()
    except PoseopsError as e:
        raise SystemExit(f"error: {e}") from None
    finally:
        gc.freeze()


def link_package(root: Path, package: Path | None = None) -> Path:
    """Make `root/src/poseops` the package that runs the stages, so dvc.yaml's code dependencies resolve.

    In the poseops checkout it is the source itself; a project made elsewhere (a demo or test
    workspace) gets a link to `package`, by default the installed one, so editing a module there
    reruns its stages.
    """
    import poseops

    link = root / PACKAGE_LINK
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(package or Path(poseops.__file__).resolve().parent, target_is_directory=True)
    return link
