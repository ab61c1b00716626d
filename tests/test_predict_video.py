"""Video prediction with tracks: the One-Euro filter, the output's shape and ids on a short clip, the CLI,
and one id for the one mouse of a real open-field video."""

from __future__ import annotations

import csv
import json
import os
import random
import statistics
import subprocess
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import PERSON_SPEC, ROOT, SHARED, SHARED_DATASETS

from poseops.skeleton import load_skeleton
from poseops.video_predict import KeypointSmoother, OneEuroFilter, VideoError, VideoOptions, predict_video, read_frames

IMAGES = sorted((SHARED_DATASETS / "coco8-pose" / "images").glob("*/*.jpg"))
OPENFIELD = SHARED / "videos" / "openfield-m3v1.mp4"
FPS = 30.0


# --- the One-Euro filter ----------------------------------------------------------------------------


def test_one_euro_takes_the_jitter_out_of_a_still_point():
    rng = random.Random(0)
    noisy = [100 + rng.gauss(0, 3) for _ in range(300)]
    smooth = OneEuroFilter()
    out = [smooth(i / FPS, x) for i, x in enumerate(noisy)]
    assert statistics.pstdev(out[30:]) < 0.5 * statistics.pstdev(noisy[30:])
    assert abs(statistics.fmean(out[30:]) - 100) < 1  # and stays where the point is


def test_one_euro_follows_a_step_and_a_moving_point():
    smooth = OneEuroFilter()
    out = [smooth(i / FPS, 0.0 if i < 30 else 100.0) for i in range(60)]
    assert out[29] == 0.0 and out[30] > 40  # moves at once
    assert out[36] > 97  # within 0.2 s
    smooth = OneEuroFilter()
    ramp = [smooth(i / FPS, 200 * i / FPS) for i in range(60)]  # 200 px/s
    assert 0 < 200 * 59 / FPS - ramp[-1] < 10  # a few pixels behind, no more


def test_smoother_keeps_tracks_apart_and_starts_a_returning_track_afresh():
    smoother = KeypointSmoother()

    def frame(t, a, b):
        dets = [{"track_id": 1, "keypoints": [{"name": "nose", "x": a, "y": a, "confidence": 0.9}]},
                {"track_id": 2, "keypoints": [{"name": "nose", "x": b, "y": b, "confidence": 0.9}]}]
        smoother(t, dets)
        return [d["keypoints"][0]["x"] for d in dets]

    assert frame(0.0, 10.0, 500.0) == [10.0, 500.0]
    one, two = frame(1 / FPS, 12.0, 498.0)
    assert 10 < one < 12 and 498 < two < 500  # each filtered towards its own past only
    assert frame(10.0, 300.0, 300.0) == [300.0, 300.0]  # unseen for 10 s: no pull towards the old place


def test_the_frame_reader_stops_when_the_reader_does():
    import threading

    frames = read_frames(OPENFIELD, VideoOptions(start=5, stride=3))
    assert [next(frames)[0], next(frames)[0]] == [5, 8]
    frames.close()  # the caller stops early: the decoding thread ends too
    assert not [t for t in threading.enumerate() if t.name == "poseops-video-reader"]
    assert [i for i, _, _ in read_frames(OPENFIELD, VideoOptions(start=2320))] == list(range(2320, 2330))  # to the end


def test_options_are_checked():
    with pytest.raises(VideoError, match="unknown tracker 'sort'"):
        VideoOptions(tracker="sort")
    with pytest.raises(VideoError, match="choose a tracker to smooth"):
        VideoOptions(tracker=None, smooth=True)
    with pytest.raises(VideoError, match="stride and max frames >= 1"):
        VideoOptions(stride=0)


# --- a short clip of coco8 people ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("poseops-home")


@pytest.fixture(scope="module")
def person_model(home):
    from poseops.inference import PoseModel
    from poseops.weights import prepare_ultralytics

    prepare_ultralytics(home / "ultralytics")
    return PoseModel("yolo11n-pose.pt", load_skeleton(PERSON_SPEC), "onnx", cache_dir=home / "onnx")


@pytest.fixture(scope="module")
def clip(person_model, tmp_path_factory) -> Path:
    """Six frames: the coco8 image with the most people, shifted 3 px right each frame, as an MP4."""
    crowd = max(IMAGES, key=lambda p: len(person_model.detect(cv2.imread(str(p)))))
    image = cv2.resize(cv2.imread(str(crowd)), (640, 480))
    path = tmp_path_factory.mktemp("clip") / "people.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (640, 480))
    for i in range(6):
        writer.write(cv2.warpAffine(image, np.float32([[1, 0, 3 * i], [0, 1, 0]]), (640, 480), borderMode=cv2.BORDER_REPLICATE))
    writer.release()
    return path


def test_each_frame_has_the_services_detections_with_stable_track_ids(person_model, clip):
    frames = []
    summary = predict_video(person_model, clip, VideoOptions(), lambda f, image: frames.append((f, image)))
    assert [f.index for f, _ in frames] == list(range(6)) and summary.frames == 6
    assert [f.time_ms for f, _ in frames] == sorted(f.time_ms for f, _ in frames) and frames[1][0].time_ms > 0
    names = [kp.name for kp in person_model.skeleton.classes[0].keypoints]
    ids_per_frame = []
    for frame, image in frames:
        assert (frame.width, frame.height) == (640, 480)
        raw_keypoints = [d["keypoints"] for d in person_model.detect(image)]
        for det in frame.detections:
            assert set(det) == {"class", "confidence", "x", "y", "width", "height", "keypoints", "track_id"}
            assert [k["name"] for k in det["keypoints"]] == names
            assert det["keypoints"] in raw_keypoints  # the model's own keypoints on that frame, unchanged
        ids = [d["track_id"] for d in frame.detections]
        assert all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids)
        ids_per_frame.append(set(ids))
    for (before, _), (after, _) in zip(frames, frames[1:], strict=False):  # the same person (box moved 3 px) keeps the same id
        same_place = [(a, b) for a in before.detections for b in after.detections if box_iou(a, b, shift=3) > 0.8]
        assert len(same_place) >= 3, "the clip should show several people"
        assert all(a["track_id"] == b["track_id"] for a, b in same_place), [(a["track_id"], b["track_id"]) for a, b in same_place]
    assert summary.track_ids == set().union(*ids_per_frame) and summary.raw_frames == 6 and summary.raw_fps > 0


def box_iou(a: dict, b: dict, shift: float = 0.0) -> float:
    """IoU of two detections' boxes, `a` moved `shift` pixels right first."""
    ix = max(0.0, min(a["x"] + shift + a["width"], b["x"] + b["width"]) - max(a["x"] + shift, b["x"]))
    iy = max(0.0, min(a["y"] + a["height"], b["y"] + b["height"]) - max(a["y"], b["y"]))
    inter = ix * iy
    return inter / (a["width"] * a["height"] + b["width"] * b["height"] - inter)


def test_without_a_tracker_frames_are_plain_detections(person_model, clip):
    frames = []
    predict_video(person_model, clip, VideoOptions(tracker=None, start=1, stride=2, max_frames=2),
                  lambda f, image: frames.append((f, image)))
    assert [f.index for f, _ in frames] == [1, 3]
    assert all(f.detections == person_model.detect(image) for f, image in frames)


def test_predict_cli_writes_lines_csv_and_an_annotated_video(clip, home, tmp_path):
    out, table, annotated = tmp_path / "out.jsonl", tmp_path / "out.csv", tmp_path / "annotated"
    env = {**os.environ, "POSEOPS_HOME": str(home)}  # the ONNX export person_model made
    done = subprocess.run(
        [sys.executable, "-m", "poseops.cli", "predict", str(clip), "--weights", "yolo11n-pose.pt", "--skeleton", str(PERSON_SPEC),
         "--runtime", "onnx", "--out", str(out), "--csv", str(table), "--save-dir", str(annotated), "--stride", "2", "--smooth"],
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [line["frame"] for line in lines] == [0, 2, 4]
    detections = [d for line in lines for d in line["detections"]]
    rows = list(csv.DictReader(table.open()))
    assert len(rows) == len(detections) > 0
    assert [int(r["track_id"]) for r in rows] == [d["track_id"] for d in detections]
    assert [(float(r["x"]), float(r["width"])) for r in rows] == [(d["x"], d["width"]) for d in detections]
    assert [int(r["frame"]) for r in rows] == [line["frame"] for line in lines for _ in line["detections"]]
    assert float(rows[0]["nose_x"]) == detections[0]["keypoints"][0]["x"]
    capture = cv2.VideoCapture(str(annotated / "people.annotated.mp4"))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    capture.release()
    assert "people.mp4: 3 frames" in done.stderr and "on onnx (raw model on 3 of the same frames" in done.stderr


# --- one mouse, one id: the real open-field video ---------------------------------------------------


TRAIN_FRAMES = range(0, 1170, 30)  # labels from the first half of the video ...
TRACK_START, TRACK_FRAMES = 1170, 450  # ... tracking on 15 s of the second half, never trained on
MOUSE_SPEC = """\
classes:
  - name: mouse
    color: "#e6194b"
    keypoints:
      - {name: body_center, color: "#3cb44b", position: [0.5, 0.5]}
"""


def mouse_boxes(frames: dict[int, np.ndarray], background: np.ndarray) -> dict[int, tuple[int, int, int, int, float, float]]:
    """The mouse by background subtraction: (x, y, w, h, centroid x, centroid y) of the largest dark blob.

    A black mouse on a white floor seen from a fixed camera: pixels 50 grey levels darker than the
    median background and darker than 90, opened with a 5x5 kernel; the largest connected blob is
    the body (the pale tail mostly falls outside). The centroid is the one keypoint.
    """
    found = {}
    for index, frame in frames.items():
        grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY)
        mask = (((background - grey.astype(np.int16)) > 50) & (grey < 90)).astype(np.uint8)
        mask = cv2.morphologyEx(mask, cv2.MORPH_OPEN, np.ones((5, 5), np.uint8))
        count, _, stats, centroids = cv2.connectedComponentsWithStats(mask)
        if count > 1:
            j = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
            if stats[j, cv2.CC_STAT_AREA] > 1000:
                found[index] = (*map(int, stats[j, :4]), float(centroids[j][0]), float(centroids[j][1]))
    return found


@pytest.fixture(scope="module")
def mouse_model(tmp_path_factory):
    """yolo11n-pose fine-tuned for 8 epochs on 39 frames of the video's first half, labeled by `mouse_boxes`.

    Not hand labels: the labels are what background subtraction finds, which is exact enough
    for a dark animal on a plain floor. The detector only has to find the mouse; what the test
    checks is the tracker's ids, on frames the detector never saw.
    """
    from ultralytics import YOLO

    from poseops.inference import PoseModel
    from poseops.training.yolo import configure_ultralytics

    root = tmp_path_factory.mktemp("mouse")
    os.environ.setdefault("YOLO_CONFIG_DIR", str(root / "ultralytics"))
    configure_ultralytics()  # offline, no MLflow or other integrations of Ultralytics' own
    frames = {i: f for i, _, f in read_frames(OPENFIELD, VideoOptions(stride=30, max_frames=len(TRAIN_FRAMES)))}
    assert list(frames) == list(TRAIN_FRAMES)
    background = np.median(np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2GRAY) for f in frames.values()]), axis=0).astype(np.int16)
    labels = mouse_boxes(frames, background)
    assert len(labels) == len(frames), "the mouse is on every training frame"
    for split in ("images", "labels"):
        (root / split / "train").mkdir(parents=True)
    for index, (x, y, w, h, cx, cy) in labels.items():
        cv2.imwrite(str(root / "images" / "train" / f"{index:05d}.jpg"), frames[index])
        (root / "labels" / "train" / f"{index:05d}.txt").write_text(
            f"0 {(x + w / 2) / 640:.6f} {(y + h / 2) / 480:.6f} {w / 640:.6f} {h / 480:.6f} {cx / 640:.6f} {cy / 480:.6f} 2\n")
    (root / "data.yaml").write_text(f"path: {root}\ntrain: images/train\nval: images/train\nnames: {{0: mouse}}\n"
                                    "kpt_shape: [1, 3]\nflip_idx: [0]\n")
    YOLO(str(SHARED / "weights" / "yolo11n-pose.pt")).train(
        data=str(root / "data.yaml"), epochs=8, imgsz=320, batch=8, workers=0, device="cpu", seed=0, mosaic=0.0,
        plots=False, val=False, amp=False, project=str(root / "runs"), name="mouse", exist_ok=True, verbose=False)
    (root / "mouse.yaml").write_text(MOUSE_SPEC)
    model = PoseModel(root / "runs" / "mouse" / "weights" / "best.pt", load_skeleton(root / "mouse.yaml"), "onnx",
                      cache_dir=root / "onnx")
    return model, background


@pytest.mark.integration
def test_the_one_mouse_keeps_one_track_id(mouse_model):
    model, background = mouse_model
    frames: dict[int, dict] = {}
    images: dict[int, np.ndarray] = {}

    def keep(frame, image):
        frames[frame.index] = frame.detections
        images[frame.index] = image

    summary = predict_video(model, OPENFIELD, VideoOptions(start=TRACK_START, max_frames=TRACK_FRAMES, smooth=True), keep)
    assert summary.frames == TRACK_FRAMES and min(frames) == TRACK_START
    detected = {i: dets for i, dets in frames.items() if dets}
    assert len(detected) >= 0.9 * TRACK_FRAMES, f"the mouse was found on only {len(detected)} of {TRACK_FRAMES} frames"
    ids = Counter(dets[0]["track_id"] for dets in detected.values())
    main_id, count = ids.most_common(1)[0]
    assert main_id is not None and count >= 0.95 * len(detected), f"track ids over the detected frames: {ids}"

    truth = mouse_boxes(images, background)  # and the track is on the mouse, not on something else
    ious = [box_iou(dict(zip(("x", "y", "width", "height"), truth[i][:4], strict=True)), dets[0])
            for i, dets in detected.items() if i in truth]
    assert len(ious) >= 0.9 * len(detected) and np.median(ious) > 0.6, f"median IoU with the mouse {np.median(ious):.2f}"
    assert summary.raw_fps and summary.fps > 0


def test_without_weights_predict_runs_the_champion_and_says_what_to_do_without_one(tmp_path):
    env = {**os.environ, "POSEOPS_HOME": str(tmp_path / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'none.db'}"}
    done = subprocess.run([sys.executable, "-m", "poseops.cli", "predict", str(OPENFIELD), "--out", str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 1 and "no MLflow store" in done.stderr and "--weights" in done.stderr, done.stderr
