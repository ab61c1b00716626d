"""The evaluate stage: validate best.pt on the val split, write metrics.json, the per-keypoint metrics, the
per-image OKS and the error gallery, and log them to the training's run."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from poseops.params import Params
from poseops.skeleton import DEFAULT_SIGMA, load_skeleton
from poseops.tracking.metrics import WARNING_TAG, ZERO_POSE_TAG, metric_name
from poseops.tracking.runs import log_artifacts, log_metrics, reopen_run, set_tags
from poseops.tracking.store import client
from poseops.training.dataset import DatasetInfo, read_dataset_info
from poseops.training.gallery import GALLERY_HTML, task_links, write_gallery
from poseops.training.keypoint_metrics import (
    ImagePoses,
    KeypointReport,
    evaluate_keypoints,
    write_images_csv,
    write_keypoints_json,
)
from poseops.training.layout import Layout, finished_run_id, resolved_data_yaml
from poseops.training.val_capture import capturing_validator, relative_images
from poseops.training.yolo import configure_ultralytics

KEYPOINT_REPORT = "keypoint_report.json"  # in the evaluate folder: per-keypoint metrics and every image's OKS


def zero_pose_warning(metrics: dict[str, float]) -> str | None:
    """The warning for a model whose pose metrics (precision, recall, mAP) are all 0, else None."""
    pose = [v for k, v in metrics.items() if k.startswith("pose_")]
    if not pose or any(v > 0 for v in pose):
        return None
    return ("every pose metric is 0: the model places no keypoint within the OKS tolerance on the val split, and "
            "promotion refuses it while promote.min_metric is above 0 (the default). On a skeleton other than "
            "COCO's 17 person keypoints the keypoint head starts from scratch: train for more epochs (tens, not a few), e.g. with "
            "train.optimizer=AdamW, and check the labels and the spec's sigmas (docs/training.md)")


@dataclass(frozen=True)
class Evaluation:
    """The evaluate stage's result: the metrics (as in metrics.json, unrounded) and where they were measured."""

    run_id: str
    metrics: dict[str, float]  # fitness, pose_/box_ precision, recall, mAP50, mAP50-95
    eval_key: str  # same key, same val split and conditions: comparable figures
    split: str
    keypoints: KeypointReport | None = None  # per-keypoint metrics and per-image OKS


def validate(weights: Path | Any, data_yaml: Path, params: Params, save_dir: Path, plots: bool = False,
             rect: bool = True) -> dict[str, float]:
    """Pose and box metrics of `weights` on `evaluate.split` of `data_yaml` (fitness as Ultralytics computes it);
    `rect=False`: a .pt letterboxed to the square input, as its fixed-size exports are (their accuracy check).
    `weights`: a model file, or an Ultralytics `YOLO` already loaded from one (not loaded again)."""
    return validate_poses(weights, data_yaml, params, save_dir, plots, rect)[0]


def validate_poses(weights: Path | Any, data_yaml: Path, params: Params, save_dir: Path,
                   plots: bool = False, rect: bool = True) -> tuple[dict[str, float], list[ImagePoses]]:
    """`validate`, also returning every image's labels and predictions (one Ultralytics pass; images named
    by their path inside the dataset)."""
    configure_ultralytics()
    from ultralytics import YOLO

    if save_dir.exists():
        shutil.rmtree(save_dir)
    e = params.evaluate
    captured: list[list[ImagePoses]] = []
    model = YOLO(str(weights)) if isinstance(weights, str | Path) else weights
    keep = lambda validator: captured.append(validator.poses)  # noqa: E731
    model.add_callback("on_val_end", keep)
    try:
        result = model.val(data=str(data_yaml), split=e.split, imgsz=params.train.imgsz, batch=e.batch, conf=e.conf,
                           iou=e.iou, device=params.device, plots=plots, workers=0, project=str(save_dir.parent),
                           name=save_dir.name, exist_ok=True, verbose=False, rect=rect, validator=capturing_validator())
    finally:
        model.callbacks["on_val_end"].remove(keep)
    poses = relative_images(captured[-1], dataset_dir(data_yaml))
    metrics = {metric_name(k): float(v) for k, v in result.results_dict.items() if k != "fitness"}
    return {"fitness": float(result.fitness), **{k: v for k, v in metrics.items() if k}}, poses


def dataset_dir(data_yaml: Path) -> Path:
    """The dataset folder a resolved data.yaml (absolute `path`) points to."""
    return Path(yaml.safe_load(data_yaml.read_text(encoding="utf-8"))["path"])


def score_keypoints(poses: list[ImagePoses], data_yaml: Path, match_conf: float) -> KeypointReport:
    """The per-keypoint metrics of one validation's poses, with the keypoint names and OKS sigmas of data.yaml."""
    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    k = int(data["kpt_shape"][0])
    names = list((data.get("kpt_names") or {}).get(0) or [f"keypoint_{i}" for i in range(k)])
    sigmas = data.get("kpt_oks_sigmas") or [DEFAULT_SIGMA] * k
    return evaluate_keypoints(poses, names, sigmas, match_conf)


def eval_key(params: Params, dataset: DatasetInfo) -> str:
    """Identifies an evaluation setting: same key, same val split and conditions, comparable figures."""
    blob = json.dumps({"dataset": dataset.dvc_hash, "split": params.evaluate.split, "imgsz": params.train.imgsz,
                       "conf": params.evaluate.conf, "iou": params.evaluate.iou,
                       "match_conf": params.evaluate.match_conf,  # per-keypoint PCK, RMSE, image OKS
                       "sigmas": dataset.kpt_oks_sigmas}, sort_keys=True)  # pose mAP's OKS depends on them
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None) -> Evaluation:
    """Validate the trained best.pt, write `layout.metrics`, the per-keypoint metrics, the per-image OKS and the
    error gallery, and log them, the plots and the eval key to the run."""
    root = root.resolve()
    lay = layout.under(root)
    run_id = finished_run_id(lay)
    dataset = read_dataset_info(lay)
    configure_ultralytics()  # imported first: MLflow's import below then overlaps the validation, not Ultralytics'
    with ThreadPoolExecutor(1) as pool, tempfile.TemporaryDirectory(prefix="poseops-eval-") as tmp:
        store = pool.submit(client) if mlc is None else None  # MLflow's start (seconds) while the model runs
        data_yaml = resolved_data_yaml(lay.prepared / "data.yaml", Path(tmp) / "data.yaml")
        metrics, poses = validate_poses(lay.train / "weights" / "best.pt", data_yaml, params, lay.evaluate,
                                        plots=params.train.plots)
        report = score_keypoints(poses, data_yaml, params.evaluate.match_conf)
        images_dir = dataset_dir(data_yaml)
        mlc = mlc or store.result()
    lay.metrics.parent.mkdir(parents=True, exist_ok=True)
    lay.metrics.write_text(json.dumps({k: round(v, 6) for k, v in metrics.items()}, indent=2) + "\n", encoding="utf-8")
    links = task_links(dataset)
    write_keypoints_json(report, lay.keypoints)
    write_images_csv(report, lay.images_oks, {image: link.task_id for image, link in links.items()})
    (lay.evaluate / KEYPOINT_REPORT).write_text(json.dumps(report.to_dict()) + "\n", encoding="utf-8")
    gallery = write_gallery(poses, report, load_skeleton(root / params.skeleton), images_dir, links,
                            params.evaluate.gallery_images, lay.evaluate / "gallery",
                            f"Error gallery: {params.dataset.name}, {params.evaluate.split} split")
    result = Evaluation(run_id, metrics, eval_key(params, dataset), params.evaluate.split, report)
    _log(mlc, result, lay)
    print(f"per-keypoint metrics: {lay.keypoints}; per-image OKS: {lay.images_oks}; "
          f"error gallery ({len(gallery)} images): {lay.evaluate / 'gallery' / GALLERY_HTML}", file=sys.stderr)
    return result


def keypoint_metrics(report: KeypointReport) -> dict[str, float | None]:
    """The per-keypoint metrics as MLflow metric names: eval/kpt/<keypoint>/<metric>, and eval/kpt/mean/<metric>."""
    return {f"eval/kpt/{_metric_safe(name)}/{m}": v for name, values in report.to_metrics().items()
            for m, v in values.items()}


def _metric_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.\- ]", "_", name)


def _log(mlc, result: Evaluation, lay: Layout) -> None:
    run_id, metrics = result.run_id, result.metrics
    reopen_run(mlc, run_id)
    log_metrics(mlc, run_id, {f"eval/{k}": v for k, v in metrics.items()} | keypoint_metrics(result.keypoints))
    set_tags(mlc, run_id, {"poseops.eval_key": result.eval_key, "poseops.eval_split": result.split})
    if warning := zero_pose_warning(metrics):
        set_tags(mlc, run_id, {ZERO_POSE_TAG: "true", WARNING_TAG: warning})
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    mlc.log_table(data=keypoint_table(result.keypoints), artifact_file="eval/keypoints_table.json", run_id=run_id)
    log_artifacts(mlc, run_id, [lay.metrics, lay.keypoints, lay.images_oks, lay.evaluate / KEYPOINT_REPORT],
                  artifact_path="eval")
    log_artifacts(mlc, run_id, [lay.evaluate / "gallery"], artifact_path="eval/gallery")
    log_artifacts(mlc, run_id, sorted(p for p in lay.evaluate.glob("*") if p.suffix in {".png", ".jpg"}),
                  artifact_path="plots/evaluate")
    mlc.set_terminated(run_id, status="FINISHED")


def keypoint_table(report: KeypointReport) -> dict[str, list]:
    """The per-keypoint metrics as columns (MLflow's table artifact, shown in the run's Evaluation view)."""
    rows = [asdict(k) for k in report.keypoints]
    return {column: [row[column] for row in rows] for column in (rows[0] if rows else {})}
