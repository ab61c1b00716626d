"""The export stage: export best.pt to ONNX, log the model files to the run and register them as a
model version (all or nothing); the version is kept in the model folder for promotion."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

from poseops.params import Params
from poseops.tracking.registry import VersionRef, register_version
from poseops.tracking.runs import log_artifacts, set_tags
from poseops.tracking.store import client
from poseops.training.dataset import DatasetInfo, read_dataset_info
from poseops.training.evaluation import eval_key
from poseops.training.layout import MODEL_ARTIFACTS, VERSION_FILE, Layout, TrainingError, finished_run_id, read_metrics
from poseops.training.yolo import configure_ultralytics


def export(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None) -> VersionRef:
    """Export best.pt to ONNX, log the model files to the run and register them as a new model version."""
    root = root.resolve()
    lay = layout.under(root)
    run_id = finished_run_id(lay)
    mlc = mlc or client()
    best = _export_onnx(params, lay)
    dataset = read_dataset_info(lay)
    files = [best, lay.model / "model.onnx", lay.prepared / "data.yaml", lay.prepared / "dataset.json", lay.metrics]
    mlc.update_run(run_id, status="RUNNING")
    log_artifacts(mlc, run_id, files, artifact_path=MODEL_ARTIFACTS)
    skeleton = lay.model / "skeleton.yaml"
    shutil.copyfile(root / params.skeleton, skeleton)
    mlc.log_artifact(run_id, str(skeleton), MODEL_ARTIFACTS)
    tags = _version_tags(mlc, params, run_id, dataset, read_metrics(lay))
    ref = None
    try:
        ref = register_version(mlc, params.mlflow.registered_model, run_id, MODEL_ARTIFACTS, tags,
                               description=f"{params.dataset.name} @ {dataset.dvc_hash}, run {run_id}")
        set_tags(mlc, run_id, {"poseops.model_version": ref.version})
        (lay.model / VERSION_FILE).write_text(json.dumps(asdict(ref) | {"uri": ref.uri}, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        if ref is not None:  # all or nothing: no version whose pipeline did not finish
            mlc.delete_model_version(ref.name, ref.version)
        mlc.set_terminated(run_id, status="FAILED")
        raise
    mlc.set_terminated(run_id, status="FINISHED")
    return ref


def _export_onnx(params: Params, lay: Layout) -> Path:
    """A fresh model folder with a copy of best.pt and its ONNX export (model.onnx); returns the copy."""
    configure_ultralytics()
    from ultralytics import YOLO

    if lay.model.exists():
        shutil.rmtree(lay.model)
    lay.model.mkdir(parents=True)
    best = lay.model / "best.pt"  # export beside a copy: the train folder (a DVC output) stays untouched
    shutil.copyfile(lay.train / "weights" / "best.pt", best)
    x = params.export
    precision = {"quantize": 16} if x.half else {}  # Ultralytics 8.4 replaced `half` by `quantize`
    onnx = Path(YOLO(str(best)).export(format=x.format, imgsz=params.train.imgsz, opset=x.opset, simplify=x.simplify,
                                       dynamic=x.dynamic, device=params.device, **precision))
    onnx.rename(lay.model / "model.onnx")
    return best


def _version_tags(mlc, params: Params, run_id: str, dataset: DatasetInfo, metrics: dict[str, float]) -> dict[str, Any]:
    """The model version's lineage: its run, dataset, code, parent, Label Studio snapshot, eval setting and metrics."""
    run_tags = mlc.get_run(run_id).data.tags
    return {
        "run_id": run_id,
        "dataset": params.dataset.name,
        "dataset_dvc_hash": dataset.dvc_hash,
        "skeleton_fingerprint": dataset.skeleton.get("fingerprint"),  # promotion compares only the same kind
        "git_commit": run_tags.get("git_commit"),
        "git_dirty": run_tags.get("git_dirty"),
        "parent_model_version": run_tags.get("poseops.parent_model_version"),
        "parent_run_id": run_tags.get("poseops.parent_run_id"),
        "init_weights": run_tags.get("poseops.init_weights"),
        "label_studio_project": run_tags.get("poseops.label_studio_project"),
        "label_studio_snapshot": run_tags.get("poseops.label_studio_snapshot"),
        "eval_key": eval_key(params, dataset),
        **{f"metrics.{k}": v for k, v in metrics.items()},
    }


def read_version(layout: Layout) -> VersionRef:
    """The model version this workspace's export stage registered; an error when there is none."""
    path = layout.model / VERSION_FILE
    if not path.is_file():
        raise TrainingError(f"{path} is missing: no model version was registered here yet; run the pipeline "
                            "(dvc repro) or name a version (--version)")
    data = json.loads(path.read_text(encoding="utf-8"))
    return VersionRef(name=data["name"], version=str(data["version"]), run_id=data["run_id"])
