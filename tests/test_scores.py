"""The scores that choose what to label next: the mirror test with the real model ranks a left/right ambiguous
image below clear ones, and each score's arithmetic on detections made by hand."""

from __future__ import annotations

import uuid

import cv2
import numpy as np
import pytest
from conftest import PERSON_SPEC, SHARED

from poseops import scores
from poseops.skeleton import load_skeleton

SKELETON = load_skeleton(PERSON_SPEC)
NAMES = [kp.name for kp in SKELETON.classes[0].keypoints]


def person(x: float, y: float, w: float = 100, h: float = 200, conf: float = 0.9,
           points: dict[str, tuple[float, float, float]] | None = None) -> dict:
    points = points or {}
    keypoints = [{"name": n, "x": points.get(n, (x + w / 2, y + h / 2, 0.8))[0],
                  "y": points.get(n, (x + w / 2, y + h / 2, 0.8))[1],
                  "confidence": points.get(n, (0, 0, 0.8))[2]} for n in NAMES]
    return {"class": "person", "confidence": conf, "x": x, "y": y, "width": w, "height": h, "keypoints": keypoints}


def test_confidence_and_the_least_confident_keypoint():
    a = person(0, 0, conf=0.9, points={"left_wrist": (40, 50, 0.1)})
    b = person(200, 0, conf=0.5)
    assert scores.confidence([a, b]) == pytest.approx(0.7)
    assert scores.min_keypoint([a, b]) == pytest.approx(0.1)
    assert scores.confidence([]) == scores.min_keypoint([]) == 0.0


def test_mirror_maps_back_with_flip_pairs():
    width = 640
    left = person(100, 50, points={"left_wrist": (120, 150, 0.9), "right_wrist": (180, 150, 0.9)})
    # the model on the mirrored image: the same person at the mirrored place, wrists named as the mirror shows them
    seen_in_mirror = person(width - 200, 50, points={"right_wrist": (width - 120, 150, 0.9),
                                                     "left_wrist": (width - 180, 150, 0.9)})
    back = scores.mirrored([seen_in_mirror], SKELETON, width)[0]
    wrists = {kp["name"]: (kp["x"], kp["y"]) for kp in back["keypoints"] if kp["name"].endswith("wrist")}
    assert wrists == {"left_wrist": (120, 150), "right_wrist": (180, 150)} and back["x"] == 100
    assert scores.flip([left], [seen_in_mirror], SKELETON, width) == pytest.approx(1.0)
    # a model that names the wrists by image side: in the mirror it swaps them, and the score drops
    confused = person(width - 200, 50, points={"left_wrist": (width - 120, 150, 0.9),
                                               "right_wrist": (width - 180, 150, 0.9)})
    assert scores.flip([left], [confused], SKELETON, width) < 0.95


def test_agreement_counts_unmatched_objects_and_frames_without_a_neighbour():
    a, b = person(0, 0), person(300, 0)
    assert scores.agreement([a, b], [a], SKELETON) == pytest.approx(0.5)
    assert scores.agreement([], [], SKELETON) == 1.0
    assert scores.temporal([a], [], SKELETON) == 1.0
    moved = person(0, 0, points={n: (90, 150, 0.8) for n in NAMES})
    assert scores.temporal([a], [[moved]], SKELETON) < scores.temporal([a], [[a]], SKELETON) == pytest.approx(1.0)


def walking(t: float, jump: bool = False) -> dict:
    """A person walking right 2 px a frame, wrists swinging; with `jump` the wrists are placed 40 px off."""
    x = 100 + 2 * t
    off = 40 if jump else 0
    return person(x, 50, points={"left_wrist": (x + 20 + off, 150 + t, 0.9), "right_wrist": (x + 80 - off, 150 - t, 0.9),
                                 "nose": (x + 50, 70, 0.9)})


def test_a_frame_whose_keypoints_jump_ranks_before_smooth_ones():
    """Frames 0..9 of a smooth walk, except frame 5 whose wrists jump: its temporal score is the lowest, and so are
    its neighbours' (each disagrees with it), below every frame two away from it."""
    predictions = [[walking(t, jump=t == 5)] for t in range(10)]
    temporal = {t: scores.temporal(predictions[t], [predictions[n] for n in (t - 1, t + 1) if 0 <= n < 10], SKELETON)
                for t in range(10)}
    queue = sorted(temporal, key=temporal.get)
    assert queue[0] == 5 and set(queue[1:3]) == {4, 6}, temporal
    assert max(temporal[4], temporal[6]) < min(temporal[t] for t in (0, 1, 2, 3, 7, 8, 9)), temporal
    assert min(temporal[t] for t in (0, 1, 2, 3, 7, 8, 9)) > 0.9


def test_the_temporal_score_of_a_picture_that_is_no_video_frame_is_the_flip_score():
    width = 640
    one = [walking(0)]
    mirror = scores.mirrored(one, SKELETON, width)  # a model that sees the mirror image exactly as the image
    assert scores.score("temporal", one, SKELETON, width, lambda: mirror) == pytest.approx(1.0)
    swapped = [person(width - 200, 50, points={"left_wrist": (width - 120, 150, 0.9),
                                               "right_wrist": (width - 180, 150, 0.9)})]
    assert scores.score("temporal", one, SKELETON, width, lambda: swapped) == pytest.approx(
        scores.flip(one, swapped, SKELETON, width))
    neighbours = [[walking(1, jump=True)]]
    assert scores.score("temporal", one, SKELETON, width, lambda: pytest.fail("no mirror for a video frame"),
                        lambda: neighbours) == pytest.approx(scores.temporal(one, neighbours, SKELETON))
    with pytest.raises(ValueError, match="confidence, min_keypoint, flip, temporal"):
        scores.score("jump", one, SKELETON, width, list)


VIDEO = SHARED / "videos" / "openfield-m3v1.mp4"


@pytest.fixture(scope="module")
def video_frames():
    """The real video's first frames, decoded one after another (as `add-video` decodes them), and its hash."""
    from poseops.frames import file_sha256, read_frames

    return read_frames(VIDEO, list(range(13))), file_sha256(VIDEO)


def test_a_video_frame_s_neighbours_are_read_from_its_video(video_frames, tmp_path):
    from poseops.neighbour_frames import find_video, neighbours_of

    frames, sha = video_frames
    data = {"video": VIDEO.name, "video_sha256": sha, "frame": 10, "time": 0.333}
    seen = []
    around = neighbours_of(data, lambda: frames[10], [str(tmp_path), str(VIDEO.parent)], lambda f: seen.append(f) or [])
    assert around() == [[], []]
    assert len(seen) == 2 and np.array_equal(seen[0], frames[9]) and np.array_equal(seen[1], frames[11])
    first = neighbours_of({**data, "frame": 0}, lambda: frames[0], [str(VIDEO.parent)], lambda f: f)()
    assert len(first) == 1 and np.array_equal(first[0], frames[1])  # the first frame has one neighbour
    # the picture is not that frame of that video (another frame, another video's hash, not a frame): no neighbours
    assert neighbours_of(data, lambda: frames[12], [str(VIDEO.parent)], lambda f: f)() is None
    assert neighbours_of({**data, "video_sha256": "0" * 64}, lambda: frames[10], [str(VIDEO.parent)], list)() is None
    assert neighbours_of({"image": "/data/upload/1/a.jpg"}, lambda: frames[10], [str(VIDEO.parent)], list)() is None
    assert neighbours_of(data, lambda: frames[10], [str(tmp_path)], list)() is None  # not in video_dirs
    assert find_video(VIDEO.name, sha, (str(VIDEO.parent),)) == VIDEO


def test_autolabel_scores_real_video_frames_by_their_neighbours(video_frames, tmp_path):
    """The autolabel pipeline on frames of the real video, as `add-video` makes them (PNG, task data naming the
    video): a model that answers one frame's picture with its wrists 40 px off ranks that frame first, then its
    neighbours, and frames whose video is nowhere fall back to the flip score."""
    from concurrent.futures import Future

    from poseops.autolabel import AutolabelOptions, AutolabelReport, slim
    from poseops.autolabel_pipeline import PipelineModel, run_pipeline

    frames, sha = video_frames
    jumpy = frames[6]

    class Model(PipelineModel):
        def load(self, path):
            return cv2.imread(str(path))

        def mirrored(self, image):
            return None  # the mirror image, to this model

        def detect(self, image):
            if image is None:  # it sees the smooth pose in every mirror image, mirrored
                return scores.mirrored([walking(0)], SKELETON, jumpy.shape[1])
            return [walking(0, jump=np.array_equal(image, jumpy))]

    tasks = []
    for index in range(2, 11):
        path = tmp_path / f"frame{index}.png"
        path.write_bytes(cv2.imencode(".png", frames[index])[1].tobytes())
        tasks.append(slim({"id": index, "data": {"image": f"/data/upload/1/frame{index}.png", "video": VIDEO.name,
                                                  "video_sha256": sha, "frame": index, "time": index / 30}}))

    def done(value) -> Future:
        future = Future()
        future.set_result(value)
        return future

    def run(video_dirs: tuple[str, ...]) -> dict[int, float]:
        report = AutolabelReport("test")
        options = AutolabelOptions(score="temporal", video_dirs=video_dirs)
        run_pipeline([tasks[:5], tasks[5:]], lambda batch: done({t["id"]: tmp_path / f"frame{t['id']}.png" for t in batch}),
                     lambda predicted: done(None), Model(), SKELETON, options, report)
        assert not report.failed and len(report.thumbnails) == len(tasks)
        return report.predicted

    scored = run((str(VIDEO.parent),))
    queue = sorted(scored, key=scored.get)
    assert queue[0] == 6 and set(queue[1:3]) == {5, 7}, scored
    assert scored[6] < scored[5] < 0.99 and min(scored[t] for t in queue[3:]) == pytest.approx(1.0), scored
    flip = run((str(tmp_path),))  # the video is not there: each frame alone, its mirror image's agreement
    assert flip[6] < 0.99 and all(flip[t] == pytest.approx(1.0) for t in scored if t != 6), flip


def jittered(image: np.ndarray, seed: int) -> np.ndarray:
    """The same picture, each pixel off by a grey level or two (another shot of a burst)."""
    noise = np.random.default_rng(seed).integers(-2, 3, image.shape)
    return np.clip(image.astype(np.int16) + noise, 0, 255).astype(np.uint8)


def test_the_diversity_quota_keeps_near_identical_pictures_from_filling_the_queue():
    from poseops.diversity import queue_scores, tiers
    from poseops.frames import NEAR_DUPLICATE, distances, embed

    photos = sorted((SHARED / "datasets" / "coco8-pose" / "images").rglob("*.jpg"))
    distinct = [cv2.imread(str(p)) for p in photos]
    burst = [jittered(distinct[0], seed) for seed in range(50)]
    pictures = burst + distinct[1:]  # 50 near-identical shots, then 7 other photos
    thumbnails = {i: embed(p) for i, p in enumerate(pictures)}
    same = np.array([thumbnails[i] for i in range(50)])
    assert distances(same).max() < NEAR_DUPLICATE  # the burst is near-identical by the same measure add-video uses
    # the burst is what the model is least sure of: without a quota it is the whole top of the queue
    measured = {i: 0.1 + i / 1000 if i < 50 else 0.5 + i / 1000 for i in thumbnails}
    assert sorted(measured, key=measured.get)[:10] == list(range(10))
    queued = queue_scores(measured, thumbnails, quota=3)
    top = sorted(queued, key=queued.get)[:10]
    assert sum(i < 50 for i in top) == 3 and set(range(50, 57)) <= set(top), top
    assert top[:3] == [0, 1, 2] and all(queued[i] == measured[i] for i in top)  # tier 0 keeps its scores
    tier = tiers(measured, thumbnails, quota=3)
    assert [tier[i] for i in range(50)] == [i // 3 for i in range(50)]  # then 3 more of the burst per tier
    assert queue_scores(measured, thumbnails, quota=0) == measured


@pytest.fixture(scope="module")
def model():
    from poseops.inference import PoseModel

    return PoseModel(str(SHARED / "weights" / "yolo11n-pose.pt"), SKELETON)


def flip_score(model, image: np.ndarray) -> float:
    detections = model.detect(image, 0.25, 0.45)
    return scores.flip(detections, model.detect(cv2.flip(image, 1), 0.25, 0.45), SKELETON, image.shape[1])


UPRIGHT = [SHARED / "datasets" / "coco-mini-train" / "images" / f"{n}.jpg"
           for n in ("000000030752", "000000037666", "000000069468")]  # one person each, seen clearly


def test_the_mirror_test_ranks_left_right_ambiguous_images_first(model):
    """Upside down, a person's left and right are a guess (pose models learn people upright): the model's
    guess for the mirror does not map back onto its guess for the image. Upright, clear photos agree."""
    upright = [cv2.imread(str(p)) for p in UPRIGHT]
    upside_down = [cv2.rotate(im, cv2.ROTATE_180) for im in upright]
    assert all(model.detect(im, 0.25, 0.45) for im in upright + upside_down), "each image shows a person found"
    clear = [flip_score(model, im) for im in upright]
    confusing = [flip_score(model, im) for im in upside_down]
    assert max(confusing) < min(clear), (confusing, clear)
    assert min(clear) > 0.8


@pytest.mark.integration
def test_autolabel_orders_the_queue_by_the_chosen_score(prefect_api, workspace, label_studio, model):
    from test_autolabel import make_dataset

    from poseops.flows.autolabel import autolabel
    from poseops.labelstudio import LabelStudioClient

    (workspace / "params.yaml").write_text("autolabel:\n  score: flip\n")
    name, images = make_dataset(label_studio, labeled=0)
    summary = autolabel(dataset=name, weights=str(SHARED / "weights" / "yolo11n-pose.pt"))
    assert summary["score"] == "flip" and summary["predicted"] == len(images) and not summary["failed"]
    with LabelStudioClient(label_studio) as client:
        tasks = {t["data"]["source"]: t for t in client.iter_tasks(client.find_project(name).id)}
    for image in images:
        (prediction,) = [p for p in tasks[image.file_name]["predictions"] if p["model_version"] == summary["model_version"]]
        assert prediction["score"] == pytest.approx(flip_score(model, cv2.imread(str(image.path))), abs=1e-3)


@pytest.mark.integration
def test_autolabel_moves_a_burst_of_near_identical_pictures_back_in_the_queue(prefect_api, workspace, label_studio,
                                                                              model, tmp_path):
    """Twelve shots of the photo the model is least sure of, and seven other photos: with a quota of 2, Label
    Studio's queue (lowest score first) shows two of the burst, then every other photo, then the burst again."""
    from poseops.datasets import create_dataset, upload_images
    from poseops.flows.autolabel import autolabel
    from poseops.labelstudio import LabelStudioClient

    photos = sorted((SHARED / "datasets" / "coco8-pose" / "images").rglob("*.jpg"))
    confidence = {p: scores.confidence(model.detect(cv2.imread(str(p)), 0.25, 0.45)) for p in photos}
    source = min(photos, key=confidence.get)
    burst = []
    for seed in range(12):
        burst.append(tmp_path / f"burst{seed:02d}.png")
        cv2.imwrite(str(burst[-1]), jittered(cv2.imread(str(source)), seed))
    others = [p for p in photos if p != source]
    (workspace / "params.yaml").write_text("autolabel:\n  diversity_quota: 2\n")
    name = f"quota-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        create_dataset(client, label_studio, name, PERSON_SPEC)
        upload_images(client, label_studio, name, burst + others)
    summary = autolabel(dataset=name, weights=str(SHARED / "weights" / "yolo11n-pose.pt"))
    assert summary["predicted"] == 19 and summary["diversity_quota"] == 2 and summary["moved_back"] == 10, summary
    with LabelStudioClient(label_studio) as client:
        written = {t["data"]["source"]: p["score"] for t in client.iter_tasks(client.find_project(name).id)
                   for p in t["predictions"] if p["model_version"] == summary["model_version"]}
    measured = {source: score % 1 for source, score in written.items()}  # the tier comes off: the score measured
    in_burst = {p.name for p in burst}
    assert max(measured[b] for b in in_burst) < min(measured[p.name] for p in others), measured  # all first, unquota'd
    queue = sorted(written, key=written.get)
    assert sum(s in in_burst for s in queue[:9]) == 2 and {p.name for p in others} <= set(queue[:9]), queue
    assert all(s in in_burst for s in queue[9:]), queue
