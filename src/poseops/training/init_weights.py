"""The weights a new training starts from: a local file, a name Ultralytics knows, a run or a registered model."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from poseops.params import Params
from poseops.tracking.registry import download, resolve_model_uri
from poseops.training.layout import TrainingError
from poseops.weights import resolve_weights


@dataclass(frozen=True)
class InitWeights:
    path: str  # a local .pt, a .yaml architecture, or a name Ultralytics downloads
    source: str  # what params named
    parent_version: str | None = None  # "name/version" when fine-tuned from a registered model
    parent_run_id: str | None = None

    def tags(self) -> dict[str, str | None]:
        return {"poseops.init_weights": self.source, "poseops.parent_model_version": self.parent_version,
                "poseops.parent_run_id": self.parent_run_id}


INIT_TAGS = tuple(InitWeights("", "").tags())  # the state file keeps these, so a resumed run carries them on


def resolve_init_weights(params: Params, mlc, cache_dir: Path) -> InitWeights:
    """The weights a new training starts from: `train.init_weights` when set, else `train.model`.

    `runs:/<id>/<file>` and `models:/<name>@<alias>` (or `/<version>`) are downloaded; the
    run and concrete version they came from are the new run's parent.
    """
    spec = params.train.init_weights
    if not spec:
        path = resolve_weights(params.train.model)
        if path.endswith((".pt",)) and not Path(path).is_file() and os.environ.get("YOLO_OFFLINE", "").lower() in {"1", "true", "yes"}:
            raise TrainingError(f"train.model {params.train.model!r} is not a local file and YOLO_OFFLINE is set: put it "
                                "in the folder named by POSEOPS_WEIGHTS_DIR, or unset YOLO_OFFLINE so Ultralytics downloads it")
        return InitWeights(path=path, source=params.train.model)
    if spec.startswith("runs:/"):
        run_id = spec.split("/")[1]
        local = download(spec, cache_dir / run_id)
        return InitWeights(path=str(find_weights(local, spec)), source=spec, parent_run_id=run_id)
    if spec.startswith("models:/"):
        mv = resolve_model_uri(mlc, spec)
        local = download(f"models:/{mv.name}/{mv.version}", cache_dir / f"{mv.name}-v{mv.version}")
        return InitWeights(path=str(find_weights(local, spec)), source=spec,
                           parent_version=f"{mv.name}/{mv.version}", parent_run_id=mv.run_id)
    path = resolve_weights(spec)
    if not Path(path).is_file():
        raise TrainingError(f"train.init_weights {spec!r}: no such file (also looked in POSEOPS_WEIGHTS_DIR)")
    return InitWeights(path=path, source=spec)


def find_weights(local: Path, uri: str) -> Path:
    """The .pt in what `uri` downloaded to `local` (a file, or a folder holding best.pt or any .pt)."""
    if local.is_file():
        return local
    for candidate in (local / "best.pt", local / "weights" / "best.pt", *sorted(local.rglob("*.pt"))):
        if candidate.is_file():
            return candidate
    raise TrainingError(f"{uri} holds no .pt weights (looked in {local})")
