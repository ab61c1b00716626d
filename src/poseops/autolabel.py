"""Autolabel: the model's detections become Label Studio predictions for tasks nobody labeled.

Each prediction carries the model version (the registered version that made it) and a
score, the mean confidence of its detections; the project is set to show that version's
predictions in the editor and to serve the least confident tasks first (uncertainty
sampling), so annotators fix the model where it is weakest.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from poseops.datasets import image_size
from poseops.labelstudio import LabelStudioClient
from poseops.regions import Pose, poses_to_results
from poseops.skeleton import Skeleton

Detections = list[dict[str, Any]]
UNCERTAINTY_SAMPLING = "Uncertainty sampling"


@dataclass(frozen=True)
class AutolabelOptions:
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    keypoint_conf: float = 0.5  # keypoints below this confidence are left for the annotator to place
    redo: bool = False  # also tasks that already have a prediction from this model version
    workers: int = 4


@dataclass
class AutolabelReport:
    model_version: str
    predicted: dict[int, float] = field(default_factory=dict)  # task id → score
    skipped_labeled: int = 0
    skipped_done: int = 0
    failed: dict[int, str] = field(default_factory=dict)


def detection_to_pose(skeleton: Skeleton, detection: dict, width: int, height: int, keypoint_conf: float) -> Pose:
    """One API detection (pixels, top-left x/y) as a normalized Pose; unsure keypoints left out."""
    cls = skeleton.get(detection["class"])
    by_name = {k["name"]: k for k in detection.get("keypoints") or []}
    keypoints = []
    confidences = []
    for kp in cls.keypoints:
        found = by_name.get(kp.name)
        conf = found.get("confidence") if found else None
        confidences.append(float(conf) if conf is not None else 0.0)
        if found is None or (conf is not None and conf < keypoint_conf):
            keypoints.append((0.0, 0.0, 0))
        else:
            keypoints.append((_unit(found["x"] / width), _unit(found["y"] / height), 2))
    x, y = _unit(detection["x"] / width), _unit(detection["y"] / height)
    w = min(detection["width"] / width, 1 - x)
    h = min(detection["height"] / height, 1 - y)
    return Pose(cls.name, (x, y, w, h), tuple(keypoints), confidence=float(detection["confidence"]),
                keypoint_confidences=tuple(confidences))


def _unit(v: float) -> float:
    return min(1.0, max(0.0, v))


def prediction_of(skeleton: Skeleton, detections: Detections, width: int, height: int,
                  keypoint_conf: float) -> tuple[list[dict], float]:
    """Label Studio result regions and a score (mean detection confidence; 0 when nothing was found)."""
    poses = [detection_to_pose(skeleton, d, width, height, keypoint_conf) for d in detections]
    score = statistics.fmean(p.confidence for p in poses) if poses else 0.0
    return poses_to_results(skeleton, poses, width, height, prefix="m"), score


def tasks_to_label(client: LabelStudioClient, project_id: int, model_version: str, redo: bool,
                   report: AutolabelReport) -> list[dict]:
    """Tasks without annotations (and, unless `redo`, without a prediction of this model version)."""
    todo = []
    for task in client.iter_tasks(project_id):
        if task.get("annotations"):
            report.skipped_labeled += 1
        elif not redo and any(p.get("model_version") == model_version for p in task.get("predictions") or []):
            report.skipped_done += 1
        else:
            todo.append(task)
    return todo


def write_predictions(client: LabelStudioClient, project_id: int, predicted: list[tuple[dict, list[dict], float]],
                      model_version: str, replace: bool) -> None:
    """Store the predictions of many tasks in one request; with `replace`, their older ones of this version go first."""
    if replace:
        for task, _, _ in predicted:
            for old in task.get("predictions") or []:
                if old.get("model_version") == model_version:
                    client.request("DELETE", f"/api/predictions/{old['id']}")
    client.import_predictions(project_id, [{"task": task["id"], "result": result, "score": score,
                                            "model_version": model_version} for task, result, score in predicted])


def show_model_version(client: LabelStudioClient, project_id: int, model_version: str) -> None:
    """The editor pre-loads this version's predictions; the queue serves the least confident tasks first."""
    client.update_project(project_id, model_version=model_version, show_collab_predictions=True,
                          sampling=UNCERTAINTY_SAMPLING)


def label_tasks(
    client: LabelStudioClient,
    project_id: int,
    skeleton: Skeleton,
    tasks: list[dict],
    images: dict[int, Any],
    detect: Callable[[bytes], Detections],
    model_version: str,
    options: AutolabelOptions,
    report: AutolabelReport,
    on_progress: Callable[[int], None] | None = None,
) -> None:
    """Detect on each task's image (in parallel), then write all the predictions in one request.

    A task whose image fails is recorded and the rest go on; a refused write is recorded for every task in it.
    """
    from concurrent.futures import ThreadPoolExecutor

    def one(task: dict) -> tuple[dict, list[dict], float] | None:
        try:
            path = images[task["id"]]
            width, height = image_size(path)
            detections = detect(path.read_bytes())
            result, score = prediction_of(skeleton, detections, width, height, options.keypoint_conf)
            return task, result, score
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the batch; it is reported
            report.failed[task["id"]] = f"{type(e).__name__}: {e}"
            return None
        finally:
            if on_progress:
                on_progress(1)

    with ThreadPoolExecutor(max_workers=options.workers) as pool:
        predicted = [p for p in pool.map(one, [t for t in tasks if t["id"] in images]) if p is not None]
    try:
        write_predictions(client, project_id, predicted, model_version, replace=options.redo)
    except Exception as e:  # noqa: BLE001 - reported per task, like a failed image
        for task, _, _ in predicted:
            report.failed[task["id"]] = f"writing the prediction failed: {type(e).__name__}: {e}"
        return
    for task, _, score in predicted:
        report.predicted[task["id"]] = score
