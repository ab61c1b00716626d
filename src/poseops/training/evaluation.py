"""The evaluate stage: validate best.pt on the val split, write metrics.json, log it to the training's run."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from poseops.params import Params
from poseops.tracking.metrics import WARNING_TAG, ZERO_POSE_TAG, metric_name
from poseops.tracking.runs import log_artifacts, log_metrics, set_tags
from poseops.tracking.store import client
from poseops.training.dataset import DatasetInfo, read_dataset_info
from poseops.training.layout import Layout, finished_run_id, resolved_data_yaml
from poseops.training.yolo import configure_ultralytics


def zero_pose_warning(metrics: dict[str, float]) -> str | None:
    """The warning for a model whose pose metrics (precision, recall, mAP) are all 0, else None."""
    pose = [v for k, v in metrics.items() if k.startswith("pose_")]
    if not pose or any(v > 0 for v in pose):
        return None
    return ("every pose metric is 0: the model places no keypoint within the OKS tolerance on the val split, and "
            "it is not promoted (promote.min_metric). On a skeleton other than COCO's 17 person keypoints the "
            "keypoint head starts from scratch: train for more epochs (tens, not a few), e.g. with "
            "train.optimizer=AdamW, and check the labels and the spec's sigmas (docs/training.md)")


@dataclass(frozen=True)
class Evaluation:
    """The evaluate stage's result: the metrics (as in metrics.json, unrounded) and where they were measured."""

    run_id: str
    metrics: dict[str, float]  # fitness, pose_/box_ precision, recall, mAP50, mAP50-95
    eval_key: str  # same key, same val split and conditions: comparable figures
    split: str


def validate(weights: Path, data_yaml: Path, params: Params, save_dir: Path, plots: bool = False) -> dict[str, float]:
    """Pose and box metrics of `weights` on `evaluate.split` of `data_yaml` (fitness as Ultralytics computes it)."""
    configure_ultralytics()
    from ultralytics import YOLO

    if save_dir.exists():
        shutil.rmtree(save_dir)
    e = params.evaluate
    result = YOLO(str(weights)).val(data=str(data_yaml), split=e.split, imgsz=params.train.imgsz, batch=e.batch,
                                    conf=e.conf, iou=e.iou, device=params.device, plots=plots, workers=0,
                                    project=str(save_dir.parent), name=save_dir.name, exist_ok=True, verbose=False)
    metrics = {metric_name(k): float(v) for k, v in result.results_dict.items() if k != "fitness"}
    return {"fitness": float(result.fitness), **{k: v for k, v in metrics.items() if k}}


def eval_key(params: Params, dataset: DatasetInfo) -> str:
    """Identifies an evaluation setting: same key, same val split and conditions, comparable figures."""
    blob = json.dumps({"dataset": dataset.dvc_hash, "split": params.evaluate.split, "imgsz": params.train.imgsz,
                       "conf": params.evaluate.conf, "iou": params.evaluate.iou,
                       "sigmas": dataset.kpt_oks_sigmas}, sort_keys=True)  # pose mAP's OKS depends on them
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None) -> Evaluation:
    """Validate the trained best.pt, write `layout.metrics` and log metrics, plots and the eval key to the run."""
    root = root.resolve()
    lay = layout.under(root)
    run_id = finished_run_id(lay)
    mlc = mlc or client()
    with tempfile.TemporaryDirectory(prefix="poseops-eval-") as tmp:
        data_yaml = resolved_data_yaml(lay.prepared / "data.yaml", Path(tmp) / "data.yaml")
        metrics = validate(lay.train / "weights" / "best.pt", data_yaml, params, lay.evaluate, plots=params.train.plots)
    lay.metrics.parent.mkdir(parents=True, exist_ok=True)
    lay.metrics.write_text(json.dumps({k: round(v, 6) for k, v in metrics.items()}, indent=2) + "\n", encoding="utf-8")
    result = Evaluation(run_id, metrics, eval_key(params, read_dataset_info(lay)), params.evaluate.split)
    mlc.update_run(run_id, status="RUNNING")
    log_metrics(mlc, run_id, {f"eval/{k}": v for k, v in metrics.items()})
    set_tags(mlc, run_id, {"poseops.eval_key": result.eval_key, "poseops.eval_split": result.split})
    if warning := zero_pose_warning(metrics):
        set_tags(mlc, run_id, {ZERO_POSE_TAG: "true", WARNING_TAG: warning})
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    log_artifacts(mlc, run_id, [lay.metrics], artifact_path="eval")
    log_artifacts(mlc, run_id, sorted(p for p in lay.evaluate.glob("*") if p.suffix in {".png", ".jpg"}),
                  artifact_path="plots/evaluate")
    mlc.set_terminated(run_id, status="FINISHED")
    return result
