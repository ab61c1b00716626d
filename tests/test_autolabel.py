"""Autolabel against real Label Studio and Prefect, with the model in-process, on threads and on a real Dask cluster."""

from __future__ import annotations

import uuid

import pytest
from conftest import PERSON_SPEC, SHARED_DATASETS
from request_log import RequestLog

from poseops.coco import read_yolo_pose
from poseops.datasets import create_dataset, upload_images
from poseops.labelstudio import LabelStudioClient
from poseops.regions import poses_to_results
from poseops.skeleton import load_skeleton

COCO8 = SHARED_DATASETS / "coco8-pose"
SKELETON = load_skeleton(PERSON_SPEC)


@pytest.fixture(scope="module")
def reference_model():
    from poseops.inference import PoseModel

    return PoseModel("yolo11n-pose.pt", SKELETON)


def make_dataset(settings, labeled: int = 1) -> tuple[str, list]:
    """coco8's val images; the first `labeled` carry their real labels, the rest are new."""
    images = read_yolo_pose(COCO8, "val", ["person"])
    name = f"auto-{uuid.uuid4().hex[:8]}"
    labels = {im.path: poses_to_results(SKELETON, im.poses, im.width, im.height) for im in images[:labeled]}
    with LabelStudioClient(settings) as client:
        create_dataset(client, settings, name, PERSON_SPEC)
        upload_images(client, settings, name, [im.path for im in images], labels=labels)
    return name, images


def prediction_writes(log: RequestLog) -> list[str]:
    """The requests that created predictions: the bulk import, and single POSTs, if any."""
    return [r.path for r in log.matching("POST", "/import/predictions") + log.matching("POST", "/api/predictions")]


@pytest.mark.integration
def test_autolabel_writes_the_models_detections_once(prefect_api, workspace, label_studio, reference_model,
                                                     request_log):
    import cv2

    from poseops.flows.autolabel import autolabel

    name, images = make_dataset(label_studio, labeled=1)
    summary = autolabel(dataset=name, weights="yolo11n-pose.pt")
    assert summary["predicted"] == 3 and summary["skipped_labeled"] == 1 and summary["failed"] == {}
    project_id = LabelStudioClient(label_studio).find_project(name).id
    # the three predictions reached Label Studio in one request (a batch holds up to 16)
    assert prediction_writes(request_log) == [f"/api/projects/{project_id}/import/predictions"]
    version = summary["model_version"]
    assert version.startswith("yolo11n-pose.pt@")

    with LabelStudioClient(label_studio) as client:
        project = client.find_project(name)
        settings = client.json("GET", f"/api/projects/{project.id}")
        assert settings["model_version"] == version and settings["sampling"] == "Uncertainty sampling"
        tasks = {t["data"]["source"]: t for t in client.iter_tasks(project.id)}
    for image in images[1:]:
        task = tasks[image.file_name]
        (prediction,) = [p for p in task["predictions"] if p["model_version"] == version]
        expected = reference_model.detect(cv2.imread(str(image.path)), 0.25, 0.45)
        boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
        assert len(boxes) == len(expected)
        for box, det in zip(boxes, expected, strict=True):
            v = box["value"]
            assert v["x"] / 100 * image.width == pytest.approx(det["x"], abs=1.0)
            assert v["y"] / 100 * image.height == pytest.approx(det["y"], abs=1.0)
            assert v["width"] / 100 * image.width == pytest.approx(det["width"], abs=1.0)
            assert box["score"] == pytest.approx(det["confidence"], abs=1e-3)
            points = [r for r in prediction["result"] if r.get("parentID") == box["id"]]
            confident = [k for k in det["keypoints"] if k["confidence"] >= 0.5]
            assert len(points) == len(confident) > 0
            for point, kp in zip(points, confident, strict=True):
                assert point["value"]["keypointlabels"] == [kp["name"]]
                assert point["value"]["x"] / 100 * image.width == pytest.approx(kp["x"], abs=1.0)
        if expected:
            mean = sum(d["confidence"] for d in expected) / len(expected)
            assert prediction["score"] == pytest.approx(mean, abs=1e-3)

    again = autolabel(dataset=name, weights="yolo11n-pose.pt")
    assert again["predicted"] == 0 and again["skipped_done"] == 3

    assert len(prediction_writes(request_log)) == 1  # nothing to do, nothing written

    redone = autolabel(dataset=name, weights="yolo11n-pose.pt", redo=True)
    assert redone["predicted"] == 3 and redone["failed"] == {}
    assert len(prediction_writes(request_log)) == 2  # the redo's three in one more request
    with LabelStudioClient(label_studio) as client:
        after = {t["data"]["source"]: t for t in client.iter_tasks(project.id)}
    for image in images[1:]:  # replaced, not added: still one prediction of this version per task
        assert [p["model_version"] for p in after[image.file_name]["predictions"]].count(version) == 1


class RecordingClient:
    """Stands in for Label Studio in the unit test below: records the bulk write, or refuses it."""

    def __init__(self, refuse: bool = False):
        self.refuse, self.imported, self.requests = refuse, [], 0

    def import_predictions(self, project_id: int, predictions: list[dict]) -> int:
        self.requests += 1
        if self.refuse:
            raise RuntimeError("Label Studio answered 500")
        self.imported += predictions
        return len(predictions)


def test_a_bad_image_is_reported_and_the_rest_written_in_one_request(tmp_path):
    from PIL import Image

    from poseops.autolabel import AutolabelOptions, AutolabelReport, label_tasks
    from poseops.skeleton import load_skeleton

    paths = {}
    for task_id in (1, 2, 3):
        paths[task_id] = tmp_path / f"{task_id}.png"
        Image.new("RGB", (64, 48), (task_id * 40, 0, 0)).save(paths[task_id])

    def detect(data: bytes) -> list:
        if data == paths[2].read_bytes():
            raise ValueError("not an image")
        return []

    tasks = [{"id": i, "predictions": []} for i in (1, 2, 3)]
    for refuse in (False, True):
        client, report = RecordingClient(refuse), AutolabelReport("v1")
        options = AutolabelOptions(workers=1)
        label_tasks(client, 7, load_skeleton(PERSON_SPEC), tasks, paths, detect, "v1", options, report)
        assert "not an image" in report.failed[2]
        if refuse:
            assert report.predicted == {} and set(report.failed) == {1, 2, 3}
            assert "writing the prediction failed" in report.failed[3]
        else:
            assert set(report.predicted) == {1, 3} and set(report.failed) == {2}
            assert client.requests == 1 and [p["task"] for p in client.imported] == [1, 3]
            assert all(p["model_version"] == "v1" for p in client.imported)


@pytest.mark.integration
def test_autolabel_fans_out_on_a_real_dask_cluster(prefect_api, workspace, label_studio, request_log):
    from poseops.flows.autolabel import autolabel

    (workspace / "params.yaml").write_text("autolabel:\n  task_runner: dask\n  workers: 2\n  batch_size: 2\n")
    name, _ = make_dataset(label_studio, labeled=0)
    summary = autolabel(dataset=name, weights="yolo11n-pose.pt")
    assert summary["predicted"] == 4 and summary["failed"] == {}
    with LabelStudioClient(label_studio) as client:
        project = client.find_project(name)
        versions = [p["model_version"] for t in client.iter_tasks(project.id) for p in t["predictions"]]
    assert versions.count(summary["model_version"]) == 4
    # two batches of two, each written by its Dask worker in one request
    assert prediction_writes(request_log) == [f"/api/projects/{project.id}/import/predictions"] * 2


def test_bad_autolabel_params_name_the_key(tmp_path, monkeypatch):
    from poseops.flows.autolabel import autolabel

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("autolabel:\n  task_runner: spark\n")
    with pytest.raises(ValueError, match="'autolabel.task_runner' is 'spark'; allowed: threads, dask"):
        autolabel.fn(dataset="x", weights="yolo11n-pose.pt")  # the flow's body: it checks before any server


def test_the_pipeline_labels_every_batch_and_reports_each_failure_where_it_happened(tmp_path):
    """Fetch and write on threads, the model here: a bad image, a refused write and a failed fetch each land where they belong."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from poseops.autolabel import AutolabelOptions, AutolabelReport
    from poseops.autolabel_pipeline import PipelineModel, run_pipeline

    paths = {}
    for task_id in range(1, 8):
        paths[task_id] = tmp_path / f"{task_id}.png"
        Image.new("RGB", (64, 48), (task_id * 30, 0, 0)).save(paths[task_id])
    paths[3].write_bytes(b"not an image")

    class Model(PipelineModel):
        def __init__(self):
            self.seen = []

        def load(self, path):
            data = path.read_bytes()
            if not data.startswith(b"\x89PNG"):
                raise ValueError("not an image")
            return path

        def detect(self, image):
            self.seen.append(image)
            return []

    batches = [[{"id": i, "predictions": []} for i in ids] for ids in ([1, 2, 3], [4, 5], [6, 7])]
    written = []

    def write(predicted):
        if any(task["id"] == 5 for task, _, _ in predicted):
            raise RuntimeError("Label Studio answered 500")
        written.append([task["id"] for task, _, _ in predicted])

    with ThreadPoolExecutor(4) as pool:
        model, report, done = Model(), AutolabelReport("v1"), []
        run_pipeline(batches, lambda b: pool.submit(lambda: {t["id"]: paths[t["id"]] for t in b}),
                     lambda p: pool.submit(write, p), model, SKELETON, AutolabelOptions(), report,
                     on_batch=lambda i, n, k: done.append((i, n, k)), write_at_least=1)  # a write per batch
        assert sorted(written) == [[1, 2], [6, 7]] and set(report.predicted) == {1, 2, 6, 7}
        assert "cannot identify image file" in report.failed[3]
        assert "writing the prediction failed" in report.failed[4] and set(report.failed) == {3, 4, 5}
        assert done == [(1, 3, 2), (2, 3, 2), (3, 3, 2)] and len(model.seen) == 6

        # writes of at least 3 predictions: batches 1 and 2 in one request, the last batch's rest in another;
        # the first batch fetched alone, the other two together (at least 4 tasks a fetch)
        written.clear()
        report, done, fetched = AutolabelReport("v1"), [], []

        def fetch_counted(tasks):
            fetched.append([t["id"] for t in tasks])
            return pool.submit(lambda: {t["id"]: paths[t["id"]] for t in tasks})

        run_pipeline(batches, fetch_counted, lambda p: pool.submit(write, p), Model(), SKELETON, AutolabelOptions(),
                     report, on_batch=lambda i, n, k: done.append((i, n, k)), write_at_least=3, fetch_at_least=4)
        assert fetched == [[1, 2, 3], [4, 5, 6, 7]]
        assert written == [[6, 7]] and set(report.predicted) == {6, 7} and set(report.failed) == {1, 2, 3, 4, 5}
        assert "writing the prediction failed" in report.failed[1] and done == [(1, 3, 2), (2, 3, 2), (3, 3, 2)]

        def fetch(batch):
            if batch[0]["id"] == 4:
                return pool.submit(lambda: (_ for _ in ()).throw(ConnectionError("Label Studio does not answer")))
            return pool.submit(lambda: {t["id"]: paths[t["id"]] for t in batch})

        report = AutolabelReport("v1")
        with pytest.raises(ConnectionError, match="does not answer"):
            run_pipeline(batches, fetch, lambda p: pool.submit(write, p), Model(), SKELETON, AutolabelOptions(), report)
        assert set(report.predicted) == {1, 2}  # predicted before the failure: written still, and counted
