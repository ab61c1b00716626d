"""Pulling labels: real Label Studio, real Prefect API, real DVC in a real git repo with a local remote."""

from __future__ import annotations

import contextvars
import hashlib
import json
import logging
import subprocess
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from conftest import PERSON_SPEC, SHARED_DATASETS, free_port

from poseops import pull as steps
from poseops.coco import parse_yolo_pose_labels, read_coco_keypoints, read_yolo_pose
from poseops.datasets import create_dataset, upload_images
from poseops.labelstudio import LabelStudioClient, LabelStudioError, LabelStudioRefused
from poseops.params import ParamsError
from poseops.pull import NotReady, PullError, dataset_lock
from poseops.regions import poses_to_results
from poseops.skeleton import load_skeleton

integration = pytest.mark.integration  # the tests that talk to Label Studio (the rest run with `make test-unit`)
COCO_MINI = SHARED_DATASETS / "coco-mini-train"
COCO8 = SHARED_DATASETS / "coco8-pose"
SKELETON = load_skeleton(PERSON_SPEC)


def tree_digest(root: Path) -> str:
    """A digest of every file's path and content under `root`."""
    h = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def make_project(settings, images, label=True, name=None) -> str:
    """A dataset whose tasks carry the images' real labels as annotations (as if labeled by hand)."""
    name = name or f"pull-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(settings) as client:
        create_dataset(client, settings, name, PERSON_SPEC)
        labels = {im.path: poses_to_results(SKELETON, im.poses, im.width, im.height) for im in images} if label else None
        upload_images(client, settings, name, [im.path for im in images], labels=labels)
    return name


@pytest.fixture(scope="module")
def coco_mini_images():
    (json_path,) = (COCO_MINI / "annotations").glob("*.json")
    return read_coco_keypoints(json_path, skeleton=SKELETON)


@pytest.fixture(scope="module")
def coco_project(label_studio, coco_mini_images) -> str:
    return make_project(label_studio, coco_mini_images)


def run_pull(name: str, **kwargs) -> dict:
    from poseops.flows.pull_labels import pull_labels

    return pull_labels(dataset=name, **kwargs)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def dvc(repo: Path, *args: str) -> str:
    import sys

    r = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


@integration
def test_coco_labels_survive_label_studio_exactly(prefect_api, workspace, coco_project, coco_mini_images):
    summary = run_pull(coco_project)
    dataset = workspace / "data" / coco_project
    assert summary["labeled_tasks"] == len(coco_mini_images) == 80
    assert summary["train_images"] + summary["val_images"] == 80 and summary["val_images"] > 0
    conversion = summary["conversion"]
    assert conversion["problems"] == [] and conversion["skipped_tasks"] == []

    # Every label file equals the COCO original to 1e-6 (normalized), visibility included.
    by_source = {}
    manifest = json.loads((dataset / "manifest.json").read_text())
    task_images = manifest["conversion"]["task_images"]
    with LabelStudioClient(load_env_settings()) as client:
        project = client.find_project(coco_project)
        for task in client.iter_tasks(project.id, fields="task_only"):
            by_source[task["data"]["source"]] = task_images[str(task["id"])]
    compared = 0
    for image in coco_mini_images:
        label_file = dataset / by_source[image.file_name].replace("images/", "labels/", 1)
        label_file = label_file.with_suffix(".txt")
        got = parse_yolo_pose_labels(label_file.read_text(), ["person"], str(label_file))
        assert len(got) == len(image.poses), image.file_name
        for want, have in zip(image.poses, got, strict=True):
            assert have.box == pytest.approx(want.box, abs=1e-6)
            for (wx, wy, wv), (hx, hy, hv) in zip(want.keypoints, have.keypoints, strict=True):
                assert hv == wv
                if wv:
                    assert (hx, hy) == pytest.approx((wx, wy), abs=1e-6)
            compared += 1
    assert compared == sum(len(im.poses) for im in coco_mini_images) > 0

    # Versioned: the .dvc file and pull record committed, the data in the remote, `dvc status` clean.
    assert (workspace / "data" / f"{coco_project}.dvc").is_file()
    record = json.loads((workspace / "data" / f"{coco_project}.pull.json").read_text())
    assert record["dvc_md5"] == summary["dvc_md5"] and record["export_snapshot_id"] == summary["export_snapshot_id"]
    assert git(workspace, "status", "--porcelain", "--", "data") == ""
    assert "pull " + coco_project in git(workspace, "log", "-1", "--format=%s")
    assert summary["pushed"] is True
    status = dvc(workspace, "status", "--json")
    assert json.loads(status or "{}") == {}
    assert json.loads(dvc(workspace, "status", "--cloud", "--json") or "{}") == {}

    # Ultralytics trains on it for one epoch without a single label warning.
    assert_trains_without_label_warnings(workspace, dataset)


def load_env_settings():
    from poseops.settings import load_settings

    return load_settings()


def assert_trains_without_label_warnings(repo: Path, dataset: Path) -> None:
    from poseops.weights import prepare_ultralytics, resolve_weights

    prepare_ultralytics(repo / ".poseops" / "ultralytics")
    from ultralytics import YOLO
    from ultralytics.utils import LOGGER

    records: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    handler = Collect(level=logging.WARNING)
    LOGGER.addHandler(handler)
    try:
        model = YOLO(resolve_weights("yolo11n-pose.pt"))
        model.train(data=str(dataset / "data.yaml"), epochs=1, imgsz=128, batch=16, workers=0, device="cpu",
                    plots=False, val=True, project=str(repo / "runs"), name="pull-check", exist_ok=True, verbose=False)
    finally:
        LOGGER.removeHandler(handler)
    label_warnings = [m for m in records if "label" in m.lower() or "corrupt" in m.lower() or "ignoring" in m.lower()]
    assert label_warnings == []


@integration
def test_a_second_pull_of_an_unchanged_project_downloads_nothing(prefect_api, workspace, coco_project):
    first = run_pull(coco_project)
    head = git(workspace, "rev-parse", "HEAD")
    second = run_pull(coco_project)
    assert second["downloaded_images"] == 0
    assert second["dvc_md5"] == first["dvc_md5"]
    assert git(workspace, "rev-parse", "HEAD") == head  # nothing new to commit
    assert second["export_snapshot_id"] == first["export_snapshot_id"]  # the record describes this version


@integration
def test_unlabeled_tasks_stop_the_pull_and_keep_the_previous_dataset(prefect_api, workspace, label_studio):
    images = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])
    name = make_project(label_studio, images[:6])
    run_pull(name)
    dataset = workspace / "data" / name
    before = tree_digest(dataset)
    with LabelStudioClient(label_studio) as client:
        report = upload_images(client, label_studio, name, [im.path for im in images[6:]])  # no labels
    new_ids = sorted(task_id for _, task_id in report.uploaded)
    with pytest.raises(NotReady) as refused:
        run_pull(name)
    message = str(refused.value)
    assert "2 of 8 tasks" in message and all(str(i) in message for i in new_ids) and "--allow-unlabeled" in message
    assert tree_digest(dataset) == before
    brave = run_pull(name, allow_unlabeled=True)
    (warning,) = [w for w in brave["warnings"] if "not labeled" in w]
    assert "2 of 8 tasks" in warning and all(str(i) in warning for i in new_ids)
    assert brave["train_images"] + brave["val_images"] == 6
    assert tree_digest(dataset) == before  # the same six labeled images: the same dataset


@integration
def test_too_few_images_are_refused(prefect_api, workspace, label_studio):
    images = read_yolo_pose(COCO8, "train", ["person"])[:3]
    name = make_project(label_studio, images)
    with pytest.raises(NotReady, match="3 labeled images; at least 4 are needed"):
        run_pull(name)
    assert not (workspace / "data" / name).exists()


@integration
def test_an_orphan_keypoint_refuses_the_pull_not_lost_silently(prefect_api, workspace, label_studio):
    images = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])
    name = f"orphan-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        create_dataset(client, label_studio, name, PERSON_SPEC)
        labels = {}
        for im in images:
            results = poses_to_results(SKELETON, im.poses, im.width, im.height)
            labels[im.path] = results
        # A nose far from every box, without parentID, in the first image.
        first = images[0]
        labels[first.path] = labels[first.path] + [{
            "id": "lost", "from_name": "keypoints", "to_name": "image", "type": "keypointlabels",
            "original_width": first.width, "original_height": first.height, "image_rotation": 0,
            "value": {"x": 0.5, "y": 0.5, "width": 1.0, "keypointlabels": ["nose"]},
        }]
        upload_images(client, label_studio, name, [im.path for im in images], labels=labels)
    with pytest.raises(NotReady, match=r"1 labeled keypoint\(s\) in 1 task\(s\) reach no object"):
        run_pull(name)
    assert not (workspace / "data" / name).exists()


@integration
def test_label_studio_down_fails_clearly_and_keeps_the_dataset(prefect_api, workspace, label_studio, monkeypatch):
    images = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])
    name = make_project(label_studio, images)
    run_pull(name)
    before = tree_digest(workspace / "data" / name)
    monkeypatch.setenv("LABEL_STUDIO_URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setattr("poseops.labelstudio.RETRY_DELAYS", (0.05,))
    with pytest.raises(LabelStudioError, match="does not answer"):
        run_pull(name)
    assert tree_digest(workspace / "data" / name) == before


@integration
def test_a_refused_token_fails_at_once_without_retries(prefect_api, workspace, coco_project, monkeypatch, request_log):
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", "0" * 40)
    with pytest.raises(LabelStudioRefused, match="refused the API token") as refused:
        run_pull(coco_project)
    assert "tried" not in str(refused.value) and "is unchanged" in str(refused.value)
    asked = [r.path for r in request_log.requests]
    assert asked and len(asked) == len(set(asked)), f"a refusal is not worth retrying, but Label Studio was asked {asked}"


def test_a_dataset_lock_refuses_a_second_holder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the data root lies inside the project
    with dataset_lock(tmp_path, "busy"), pytest.raises(PullError, match="another pull of 'busy' is running \\(pid "):
        with dataset_lock(tmp_path, "busy"):
            pass
    with dataset_lock(tmp_path, "busy"):  # let go after use
        pass


@integration
def test_two_pulls_at_the_same_time_one_is_refused_and_the_dataset_stays_whole(prefect_api, workspace, label_studio,
                                                                               monkeypatch):
    images = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])
    name = make_project(label_studio, images)
    # The first pull stops right after its export (inside the flow, past the lock) until the second one is over.
    real_export, first_inside, second_over = steps.export_snapshot, threading.Event(), threading.Event()

    def export_then_hold_the_first(client, project_id):
        snapshot = real_export(client, project_id)
        if not first_inside.is_set():
            first_inside.set()
            second_over.wait(timeout=600)
        return snapshot

    monkeypatch.setattr(steps, "export_snapshot", export_then_hold_the_first)
    outcome: dict[str, object] = {}

    def first_pull() -> None:
        try:
            outcome["first"] = run_pull(name)
        except Exception as e:  # noqa: BLE001 - looked at below
            outcome["first"] = e

    first = threading.Thread(target=contextvars.copy_context().run, args=(first_pull,))  # with the test's Prefect API
    first.start()
    try:
        assert first_inside.wait(timeout=600), "the first pull never reached Label Studio's export"
        with pytest.raises(PullError, match=f"another pull of '{name}' is running \\(pid "):
            run_pull(name)
    finally:
        second_over.set()
        first.join(timeout=900)
    summary = outcome["first"]
    assert isinstance(summary, dict), f"the first pull failed: {summary!r}"
    assert summary["train_images"] + summary["val_images"] == 8
    dataset = workspace / "data" / name
    assert len(list((dataset / "images").rglob("*.jpg"))) == len(list((dataset / "labels").rglob("*.txt"))) == 8
    assert git(workspace, "status", "--porcelain", "--", "data") == "" and json.loads(dvc(workspace, "status", "--json") or "{}") == {}
    leftovers = [p.name for p in (workspace / "data").iterdir() if p.name.startswith(f".{name}.") and p.suffix != ".lock"]
    assert leftovers == [], "neither pull left a scratch folder behind"
    monkeypatch.setattr(steps, "export_snapshot", real_export)
    assert run_pull(name)["dvc_md5"] == summary["dvc_md5"]  # the dataset is the first pull's, whole


@integration
def test_git_checkout_and_dvc_checkout_restore_an_older_dataset(prefect_api, workspace, label_studio):
    images = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])
    name = make_project(label_studio, images[:6])
    first = run_pull(name)
    dataset = workspace / "data" / name
    old = tree_digest(dataset)
    old_commit = git(workspace, "rev-parse", "HEAD")
    with LabelStudioClient(label_studio) as client:
        upload_images(client, label_studio, name, [im.path for im in images[6:]],
                      labels={im.path: poses_to_results(SKELETON, im.poses, im.width, im.height) for im in images[6:]})
    second = run_pull(name)
    assert second["dvc_md5"] != first["dvc_md5"] and tree_digest(dataset) != old
    git(workspace, "checkout", "-q", old_commit)
    dvc(workspace, "checkout", "-q")
    assert tree_digest(dataset) == old
    assert yaml.safe_load((dataset / "data.yaml").read_text())["kpt_shape"] == [17, 3]


def test_bad_pull_params_name_the_key(tmp_path, monkeypatch):
    from poseops.flows.pull_labels import pull_labels

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text("pull:\n  min_imagez: 3\n")
    with pytest.raises(ParamsError, match="unknown key .pull.min_imagez."):
        pull_labels.fn(dataset="anything")  # the flow's body: it checks before any server


@integration
def test_a_dead_server_url_in_settings_is_reported_with_what_to_do(label_studio):
    dead = replace(label_studio, label_studio_url=f"http://127.0.0.1:{free_port()}")
    from poseops import pull

    with LabelStudioClient(dead) as client, pytest.raises(LabelStudioError, match="labelstudio"):
        pull.export_snapshot(client, 1)
