"""Autolabel: the model's detections become Label Studio predictions for tasks nobody labeled.

Each prediction carries the model version (the registered version that made it) and a
score, the mean confidence of its detections; the project is set to show that version's
predictions in the editor and to serve the least confident tasks first (uncertainty
sampling), so annotators fix the model where it is weakest.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poseops.constants import DEFAULT_CONF_THRES, DEFAULT_IOU_THRES, ML_BACKEND_TITLE
from poseops.datasets import image_size
from poseops.errors import PoseopsError
from poseops.imageio import check_within_budget
from poseops.labelstudio import LabelStudioClient
from poseops.params import AutolabelParams
from poseops.regions import Pose, poses_to_results
from poseops.skeleton import Skeleton

Detections = list[dict[str, Any]]
UNCERTAINTY_SAMPLING = "Uncertainty sampling"


class AutolabelError(PoseopsError, ValueError):
    """An autolabel run that cannot start; the message says what to give."""


@dataclass(frozen=True)
class AutolabelOptions:
    """The `autolabel` section of params.yaml (defaults there) plus what one run decides."""

    conf_thres: float = DEFAULT_CONF_THRES
    iou_thres: float = DEFAULT_IOU_THRES
    keypoint_conf: float = AutolabelParams.keypoint_conf  # keypoints below this are left for the annotator
    redo: bool = False  # also tasks that already have a prediction from this model version
    workers: int = AutolabelParams.workers
    score: str = AutolabelParams.score  # what a prediction's score measures (poseops.scores)
    video_dirs: tuple[str, ...] = field(default_factory=lambda: tuple(AutolabelParams().video_dirs))  # temporal score
    diversity_quota: int = AutolabelParams.diversity_quota  # poseops.diversity; 0: none

    @classmethod
    def of(cls, section: AutolabelParams, redo: bool = False) -> AutolabelOptions:
        return cls(conf_thres=section.conf_thres, iou_thres=section.iou_thres, keypoint_conf=section.keypoint_conf,
                   redo=redo, workers=section.workers, score=section.score, video_dirs=tuple(section.video_dirs),
                   diversity_quota=section.diversity_quota)


@dataclass
class AutolabelReport:
    model_version: str
    predicted: dict[int, float] = field(default_factory=dict)  # task id → score
    skipped_labeled: int = 0
    skipped_done: int = 0
    failed: dict[int, str] = field(default_factory=dict)
    thumbnails: dict[int, Any] = field(default_factory=dict)  # task id → its picture's embedding (diversity quota)


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


def prediction_of(skeleton: Skeleton, detections: Detections, width: int, height: int, options: AutolabelOptions,
                  mirror: Callable[[], Detections],
                  neighbours: Callable[[], list[Detections] | None] | None = None) -> tuple[list[dict], float]:
    """Label Studio result regions and their score (`options.score`, poseops.scores; `mirror()` detects in the
    mirror image, `neighbours()` in a video frame's neighbours (poseops.neighbour_frames), called only for the
    scores that need them)."""
    from poseops import scores

    poses = [detection_to_pose(skeleton, d, width, height, options.keypoint_conf) for d in detections]
    score = scores.score(options.score, detections, skeleton, width, mirror, neighbours or scores.no_neighbours)
    return poses_to_results(skeleton, poses, width, height, prefix="m"), score


def tasks_to_label(client: LabelStudioClient, project_id: int, model_version: str, redo: bool,
                   report: AutolabelReport) -> list[dict]:
    """Tasks without annotations (and, unless `redo`, without a prediction of this model version).

    While no task has a prediction of this version (Label Studio counts them per version), the tasks are
    listed without their predictions' regions (megabytes for a big project): their ids, data and counts."""
    if redo or client.json("GET", f"/api/projects/{project_id}/model-versions/").get(model_version):
        listed = client.iter_tasks(project_id)  # which tasks have this version's prediction, and its id
    else:
        listed = client.iter_tasks(project_id, fields="task_only",
                                   include="id,data,total_annotations,cancelled_annotations")
    todo = []
    for task in listed:
        if task.get("annotations") or task.get("total_annotations") or task.get("cancelled_annotations"):
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
    """The editor pre-loads this version's predictions; the queue serves the least confident tasks first.

    A project connected to the ML backend keeps asking it (the backend names its predictions as this
    flow does, so a task autolabel predicted is shown, not predicted again)."""
    if client.json("GET", f"/api/projects/{project_id}").get("model_version") == ML_BACKEND_TITLE:
        client.update_project(project_id, show_collab_predictions=True, sampling=UNCERTAINTY_SAMPLING)
        return
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

    from poseops import scores
    from poseops.neighbour_frames import neighbours_of

    def one(task: dict) -> tuple[dict, list[dict], float] | None:
        try:
            path = images[task["id"]]
            width, height = image_size(path)
            content = path.read_bytes()
            picture = functools.cache(lambda: scores.decode(content))
            result, score = prediction_of(skeleton, detect(content), width, height, options,
                                          lambda: scores.detect_mirrored(detect, picture()),
                                          neighbours_of(task.get("data"), picture, options.video_dirs,
                                                        scores.on_arrays(detect)))
            keep_thumbnail(report, task["id"], picture(), options)
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
        record_write(report, predicted, e)
        return
    record_write(report, predicted)


def keep_thumbnail(report: AutolabelReport, task_id: int, image: Any, options: AutolabelOptions) -> None:
    """The decoded picture's embedding for the diversity quota (poseops.diversity), when there is a quota.
    A picture that is not a decoded image (an array) has none, and is compared with no other."""
    import numpy as np

    if options.diversity_quota and isinstance(image, np.ndarray) and image.size:
        from poseops.frames import embed

        report.thumbnails[task_id] = embed(image)


def record_write(report: AutolabelReport, predicted: list[tuple[dict, list[dict], float]],
                 error: Exception | None = None) -> None:
    """One batch's write in the report: each task's score, or (a refused write) the reason for each task."""
    for task, _, score in predicted:
        if error is None:
            report.predicted[task["id"]] = score
        else:
            report.failed[task["id"]] = f"writing the prediction failed: {type(error).__name__}: {error}"


# --- the model that labels: the running service, or weights in this process ---------------------


@functools.lru_cache(maxsize=2)
def local_model(weights: str, skeleton: Skeleton | str):
    """The model in this process (one per worker process), loaded once. `skeleton`: the spec, or its file
    (a Dask worker gets the spec itself: the file is on the machine that started the run)."""
    from poseops.inference import load_model
    from poseops.skeleton import load_skeleton

    spec = skeleton if isinstance(skeleton, Skeleton) else load_skeleton(skeleton)
    # the best runtime for the CPU (or POSEOPS_RUNTIME), compiled for one image at a time, as the pipeline calls it
    return load_model(weights, spec, performance="latency")


def detector(service_url: str | None, weights: str | None, skeleton: Skeleton | str,
             options: AutolabelOptions) -> Callable[[bytes], Detections]:
    """bytes → detections, through the service or the local model."""
    if service_url:
        from poseops.client import DetectClient

        client = DetectClient(service_url)
        return lambda image: client.detect(image, conf_thres=options.conf_thres, iou_thres=options.iou_thres)
    import cv2
    import numpy as np

    model = local_model(str(weights), skeleton)

    def detect(image: bytes) -> Detections:
        check_within_budget(image)  # before OpenCV decodes anything: refused from its header, reported per task
        array = cv2.imdecode(np.frombuffer(image, np.uint8), cv2.IMREAD_COLOR)
        return model.detect(array, options.conf_thres, options.iou_thres)

    return detect


def model_version_of(service_url: str | None, weights: str | None) -> str:
    """The registered model version the service runs (from its metadata), or the weights file's identity."""
    if service_url:
        from poseops.client import DetectClient

        with DetectClient(service_url) as client:
            meta = client.metadata()
        model = meta.get("model") or {}
        name, version = model.get("name"), model.get("version")
        if name and version:
            return f"{name}:{version}"
        return f"{model.get('weights', 'model')}@{str(model.get('sha256', ''))[:12]}"
    from poseops.inference import file_sha256
    from poseops.weights import resolve_weights

    path = Path(resolve_weights(str(weights)))
    return f"{path.name}@{file_sha256(path)[:12]}"


def slim(task: dict) -> dict:
    """What a batch needs of a task (flow parameters travel serialized, so keep them small)."""
    from poseops.video_ingest import VIDEO_FIELDS

    data = task.get("data") or {}
    return {"id": task["id"], "data": {k: data[k] for k in ("image", "sha256", *VIDEO_FIELDS) if k in data},
            "predictions": [{"id": p["id"], "model_version": p.get("model_version")} for p in task.get("predictions") or []]}


def batches_of(tasks: list[dict], size: int) -> list[list[dict]]:
    return [tasks[i:i + size] for i in range(0, len(tasks), size)]
