"""The export step (the end of the evaluate stage): export best.pt (ONNX, OpenVINO, ...: `export.formats`), check each export against best.pt on
the val split (`poseops.training.exports`), log the model files that passed to the run and register them as a
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
from poseops.training.exports import export_checked
from poseops.training.layout import MODEL_ARTIFACTS, VERSION_FILE, Layout, TrainingError, finished_run_id, read_metrics

REGISTER_WAIT_S = 600.0  # how long a registration waits for another one of the same model


def export(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None) -> VersionRef:
    """Export best.pt to `export.formats`, check each export on the val split (`poseops.training.exports`), log the
    model files that passed to the run and register them as a new model version."""
    root = root.resolve()
    lay = layout.under(root)
    run_id = finished_run_id(lay)
    mlc = mlc or client()
    best = _fresh_model_folder(lay)
    mlc.update_run(run_id, status="RUNNING")
    try:
        checks = export_checked(params, lay, best, mlc, run_id)
    except BaseException:
        mlc.set_terminated(run_id, status="FAILED")
        raise
    dataset = read_dataset_info(lay)
    files = [best, lay.prepared / "data.yaml", lay.prepared / "dataset.json", lay.metrics]
    log_artifacts(mlc, run_id, [c.path for c in checks if c.path.is_file()] + files, artifact_path=MODEL_ARTIFACTS)
    for folder in (c.path for c in checks if c.path.is_dir()):
        log_artifacts(mlc, run_id, [folder], artifact_path=f"{MODEL_ARTIFACTS}/{folder.name}")
    skeleton = lay.model / "skeleton.yaml"
    shutil.copyfile(root / params.skeleton, skeleton)
    mlc.log_artifact(run_id, str(skeleton), MODEL_ARTIFACTS)
    tags = _version_tags(mlc, params, run_id, dataset, read_metrics(lay))
    tags["runtimes"] = ",".join(f"{c.name}:{c.precision}" for c in checks)  # what the service may choose from
    ref = None
    try:
        with registry_lock(mlc, params.mlflow.registered_model):
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


def registry_lock(mlc, name: str):
    """Registrations of one model run one at a time (`poseops.locks`, `registry-<name>`; across machines on the
    server profile): a second one waits up to REGISTER_WAIT_S."""
    from poseops.locks import exclusive, machine_lock_file

    return exclusive(None, f"registry-{name}", wait_s=REGISTER_WAIT_S, what=f"registering a version of {name!r}",
                     lock_file=machine_lock_file(f"{getattr(mlc, 'tracking_uri', '')}|registry-{name}"))


def _fresh_model_folder(lay: Layout) -> Path:
    """A fresh model folder with a copy of best.pt (exports are written beside the copy: the train folder, a DVC
    output, stays untouched); returns the copy."""
    if lay.model.exists():
        shutil.rmtree(lay.model)
    lay.model.mkdir(parents=True)
    best = lay.model / "best.pt"
    shutil.copyfile(lay.train / "weights" / "best.pt", best)
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
    """The model version this workspace's export step registered; an error when there is none."""
    path = layout.model / VERSION_FILE
    if not path.is_file():
        raise TrainingError(f"{path} is missing: no model version was registered here yet; run the pipeline "
                            "(dvc repro) or name a version (--version)")
    data = json.loads(path.read_text(encoding="utf-8"))
    return VersionRef(name=data["name"], version=str(data["version"]), run_id=data["run_id"])
