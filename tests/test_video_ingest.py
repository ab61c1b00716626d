"""Video ingestion against a real Label Studio, a real Prefect API and a real DVC pull: frames become tasks
naming their video, a second ingestion adds nothing, and the pulled dataset keeps each video in one split."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import pytest
from conftest import PERSON_SPEC, SHARED, settings_env

from poseops.conversion.dataset import split_for
from poseops.datasets import TEMPLATE_VERSION, create_dataset
from poseops.frames import file_sha256
from poseops.labelstudio import LabelStudioClient
from poseops.regions import Pose, poses_to_results
from poseops.skeleton import load_skeleton

integration = pytest.mark.integration
VIDEO = SHARED / "videos" / "openfield-m3v1.mp4"
SKELETON = load_skeleton(PERSON_SPEC)
VAL_FRACTION = 0.25  # the workspace's params.yaml
FRAMES = 5


def cut(out: Path, start: int, count: int = 60) -> Path:
    """`count` frames of the open-field video from `start`, as a video of its own."""
    capture = cv2.VideoCapture(str(VIDEO))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), 30, (640, 480))
    for _ in range(count):
        ok, frame = capture.read()
        assert ok
        writer.write(frame)
    writer.release()
    capture.release()
    return out


def clips_in_both_splits(folder: Path) -> list[Path]:
    """Clips of the video, enough that at least one goes to validation and one to training (by the file's hash)."""
    clips, parts = [], set()
    for k in range(24):
        clip = cut(folder / f"clip{k:02d}.mp4", 90 * k)
        clips.append(clip)
        parts.add(split_for(file_sha256(clip), VAL_FRACTION))
        if len(clips) >= 3 and parts == {"train", "val"}:
            return clips
    pytest.fail(f"24 clips and their hashes put them all in {parts}")


def a_person(width: int, height: int) -> list[dict]:
    """One labeled person, as an annotator would leave it (box and every keypoint)."""
    keypoints = tuple((0.3 + 0.02 * (i % 5), 0.3 + 0.02 * i, 2) for i in range(len(SKELETON.classes[0].keypoints)))
    return poses_to_results(SKELETON, [Pose("person", (0.25, 0.25, 0.4, 0.5), keypoints)], width, height)


@integration
def test_videos_ingest_once_into_tasks_and_each_video_stays_in_one_split(prefect_api, workspace, label_studio,
                                                                        tmp_path):
    from test_pull import run_pull

    from poseops.flows.add_video import add_video

    clips = clips_in_both_splits(tmp_path)
    name = f"video-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, PERSON_SPEC)
    first = add_video(dataset=name, videos=[str(c) for c in clips], frames=FRAMES)
    assert [v["error"] for v in first["videos"]] == [None] * len(clips)
    for v in first["videos"]:
        assert 3 <= v["chosen"] <= FRAMES and len(v["added"]) == v["chosen"] and v["decoded"] == 60, v
    with LabelStudioClient(label_studio) as client:
        tasks = list(client.iter_tasks(project.id))
    assert len(tasks) == first["added"] == sum(v["chosen"] for v in first["videos"])
    by_video: dict[str, list[dict]] = {}
    for task in tasks:
        data = task["data"]
        by_video.setdefault(data["video"], []).append(task)
        clip = tmp_path / data["video"]
        assert data["video_sha256"] == file_sha256(clip)
        assert isinstance(data["frame"], int) and 0 <= data["frame"] < 60
        assert data["time"] == pytest.approx(data["frame"] / 30, abs=2e-3)
        assert data["source"] == f"{clip.stem}_frame{data['frame']:06d}.png" and len(data["sha256"]) == 64
        assert [p["model_version"] for p in task["predictions"]] == [TEMPLATE_VERSION]  # no model deployed
    assert sorted(by_video) == sorted(c.name for c in clips)

    again = add_video(dataset=name, videos=[str(c) for c in clips], frames=FRAMES)
    assert again["added"] == 0 and all(v["already"] == v["chosen"] for v in again["videos"])
    with LabelStudioClient(label_studio) as client:
        assert sum(1 for _ in client.iter_tasks(project.id)) == len(tasks)
        for frames in by_video.values():  # label three frames of every video through the API
            for task in frames[:3]:
                client.create_annotation(task["id"], a_person(640, 480))

    pulled = run_pull(name, allow_unlabeled=True)
    dataset = workspace / "data" / name
    labeled = [t for frames in by_video.values() for t in frames[:3]]
    assert pulled["train_images"] + pulled["val_images"] == len(labeled)
    split_of = {}
    for part in ("train", "val"):
        for image in (dataset / "images" / part).iterdir():
            split_of[image.stem] = part
    for video, frames in by_video.items():
        parts = {split_of[t["data"]["sha256"][:16]] for t in frames[:3]}
        assert parts == {split_for(frames[0]["data"]["video_sha256"], VAL_FRACTION)}, f"{video} straddles: {parts}"
    assert set(split_of.values()) == {"train", "val"}


@integration
def test_an_unreadable_video_is_reported_and_the_others_are_ingested(prefect_api, workspace, label_studio, tmp_path):
    from prefect.settings import PREFECT_API_URL

    good = cut(tmp_path / "good.mp4", 300, count=45)
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(os.urandom(10_000))
    name = f"video-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, PERSON_SPEC)
    env = {**settings_env(label_studio), "PREFECT_API_URL": PREFECT_API_URL.value()}
    done = subprocess.run([sys.executable, "-m", "poseops.cli", "dataset", "add-video", name, str(bad), str(good),
                           str(tmp_path / "missing.mp4"), "--frames", "4"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 1, done.stdout + done.stderr
    error = done.stderr.replace("\n", " ")
    assert "2 of 3 video(s) could not be ingested" in error and "broken.mp4" in error and "missing.mp4" in error
    assert "not a video OpenCV can open" in error and "The others were ingested" in error
    assert "good.mp4: 4 frame(s) chosen" in error and "45/45" in done.stderr  # its line, and its progress bar
    with LabelStudioClient(label_studio) as client:
        tasks = list(client.iter_tasks(project.id))
    assert len(tasks) == 4 and {t["data"]["video"] for t in tasks} == {"good.mp4"}


@integration
def test_dataset_upload_points_a_video_to_add_video(label_studio, workspace):
    from poseops.datasets import upload_images

    name = f"video-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        create_dataset(client, label_studio, name, PERSON_SPEC)
        report = upload_images(client, label_studio, name, [VIDEO])
    ((path, why),) = report.unreadable
    assert path == VIDEO and "poseops dataset add-video NAME VIDEO" in why and report.uploaded == []


@integration
def test_with_a_model_the_new_frames_get_its_predictions_too(prefect_api, workspace, label_studio, tmp_path):
    """A 'video' of people (coco8-pose's photos, each held for five frames): the person model pre-labels its frames."""
    from poseops.autolabel import model_version_of
    from poseops.flows.add_video import add_video

    photos = sorted((SHARED / "datasets" / "coco8-pose" / "images").rglob("*.jpg"))
    video = tmp_path / "people.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (640, 480))
    for photo in photos:
        picture = cv2.resize(cv2.imread(str(photo)), (640, 480))
        for _ in range(5):
            writer.write(picture)
    writer.release()
    name = f"video-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, PERSON_SPEC)
    summary = add_video(dataset=name, videos=[str(video)], frames=4, weights="yolo11n-pose.pt")
    (result,) = summary["videos"]
    assert result["decoded"] == 5 * len(photos) and result["duplicates"] >= 3 * len(photos)  # held frames: once
    assert len(result["added"]) == 4
    assert result["predicted"] == 4 and not result["warnings"]
    version = model_version_of(None, "yolo11n-pose.pt")
    with LabelStudioClient(label_studio) as client:
        tasks = list(client.iter_tasks(project.id))
        shown = client.json("GET", f"/api/projects/{project.id}")["model_version"]
    assert len(tasks) == 4 and shown == version
    found = 0
    for task in tasks:
        versions = sorted(p["model_version"] for p in task["predictions"])
        assert versions == sorted([TEMPLATE_VERSION, version])
        model = next(p for p in task["predictions"] if p["model_version"] == version)
        found += sum(1 for r in model["result"] if r["type"] == "keypointlabels")
    assert found > 0  # the people in the photos were found: keypoints placed
