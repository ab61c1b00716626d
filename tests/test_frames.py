"""Choosing frames of a video (offline): diversity against uniform sampling on a real video, duplicates,
unreadable videos, and the split that keeps each video's frames together."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from poseops.conversion.dataset import split_for, task_split, video_count
from poseops.convert import convert_export
from poseops.frames import (
    NEAR_DUPLICATE,
    FrameOptions,
    VideoError,
    choose_frames,
    distances,
    mean_nearest_distance,
    min_pairwise_distance,
    probe,
    scan,
    select_diverse,
    uniform_positions,
)
from poseops.label_config import BOXES, IMAGE, KEYPOINTS
from poseops.skeleton import parse_skeleton

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSEOPS_SHARED_DIR", ROOT.parent / "shared"))
VIDEO = SHARED / "videos" / "openfield-m3v1.mp4"
N = 20


@pytest.fixture(scope="module")
def candidates():
    """Every second frame of the open-field video (1,165 of 2,330), embedded."""
    return scan(probe(VIDEO), stride=2)


def test_kmeans_frames_are_more_diverse_than_uniform_sampling(candidates):
    emb = candidates.embeddings
    assert candidates.decoded == 2330 and len(emb) == 1165
    chosen, _ = select_diverse(emb, N)
    uniform = uniform_positions(len(emb), N)
    assert len(chosen) == N and len(uniform) == N
    k_min, u_min = min_pairwise_distance(emb[chosen]), min_pairwise_distance(emb[uniform])
    k_nn, u_nn = mean_nearest_distance(emb[chosen]), mean_nearest_distance(emb[uniform])
    print(f"min pairwise distance: k-means {k_min:.4f}, uniform {u_min:.4f} ({k_min / u_min:.2f}x); "
          f"mean nearest-neighbour distance: k-means {k_nn:.4f}, uniform {u_nn:.4f} ({k_nn / u_nn:.2f}x)")
    assert k_min >= 2 * u_min  # measured: 0.057 against 0.021
    assert k_nn >= 1.05 * u_nn  # measured: 0.077 against 0.068
    # no two chosen frames are as alike as neighbouring frames of the video typically are
    neighbours = np.sqrt(((emb[1:] - emb[:-1]) ** 2).mean(1))
    assert k_min > max(NEAR_DUPLICATE, float(np.percentile(neighbours, 95)))


def test_the_choice_depends_on_the_video_alone(candidates):
    assert select_diverse(candidates.embeddings, N) == select_diverse(candidates.embeddings.copy(), N)
    assert select_diverse(candidates.embeddings, 7) == select_diverse(candidates.embeddings, 7)


def test_chosen_frames_are_the_videos_frames_with_their_times():
    first = choose_frames(VIDEO, FrameOptions(frames=6, stride=5))
    assert len(first.frames) == 6 and first.candidates == 466 and not first.warnings
    assert all(f.index % 5 == 0 for f in first.frames)
    video = first.video
    assert (video.width, video.height, video.frame_count) == (640, 480, 2330) and len(video.sha256) == 64
    for frame in first.frames:
        assert frame.time == pytest.approx(frame.index / video.fps, abs=1e-3)
        with Image.open(io.BytesIO(frame.png)) as im:
            assert im.format == "PNG" and im.size == (640, 480)
    # the PNG holds exactly the frame at that index, read independently with OpenCV
    capture = cv2.VideoCapture(str(VIDEO))
    capture.set(cv2.CAP_PROP_POS_FRAMES, first.frames[0].index)
    ok, expected = capture.read()
    capture.release()
    decoded = cv2.imdecode(np.frombuffer(first.frames[0].png, np.uint8), cv2.IMREAD_COLOR)
    assert ok and np.abs(decoded.astype(int) - expected.astype(int)).mean() < 1.0


def write_video(path: Path, pictures: list[np.ndarray], fps: int = 10) -> Path:
    """An MJPG video: each frame compressed on its own, so equal pictures decode to equal frames."""
    height, width = pictures[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    for picture in pictures:
        writer.write(picture)
    writer.release()
    return path


def picture(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (48, 64, 3), dtype=np.uint8)


def test_repeated_content_counts_once(tmp_path):
    video = write_video(tmp_path / "frozen.avi", [picture(i // 10) for i in range(30)])  # 3 pictures, 10 frames each
    selection = choose_frames(video, FrameOptions(frames=5, stride=1))
    assert selection.decoded == 30 and selection.candidates == 3 and selection.duplicates == 27
    assert [f.index for f in selection.frames] == [0, 10, 20]


def test_near_duplicates_are_dropped():
    base = np.random.default_rng(0).random((6, 100)).astype(np.float32)
    embeddings = np.concatenate([base, base[:3] + 0.001])  # three near-copies
    chosen, dropped = select_diverse(embeddings, 9, min_distance=0.01)
    assert len(chosen) == 6 and dropped == 3
    d = distances(embeddings[chosen])
    np.fill_diagonal(d, np.inf)
    assert d.min() >= 0.01


@pytest.mark.parametrize("content, why", [
    (b"", "empty file"),
    (os.urandom(4096), "not a video OpenCV can open"),
    (VIDEO.read_bytes()[:700_000], "not a video OpenCV can open"),  # truncated: its index (moov) was at the end
])
def test_an_unreadable_video_is_reported_by_name(tmp_path, content, why):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(content)
    with pytest.raises(VideoError, match=why) as refused:
        choose_frames(bad, FrameOptions(frames=3))
    assert str(bad) in str(refused.value)


def test_a_missing_video_and_bad_options_are_refused(tmp_path):
    with pytest.raises(VideoError, match="no such file"):
        choose_frames(tmp_path / "gone.mp4")
    with pytest.raises(VideoError, match="at least 1"):
        FrameOptions(frames=0)
    with pytest.raises(VideoError, match="stride"):
        FrameOptions(stride=0)


# --- the split: by video --------------------------------------------------------------------------


def frame_task(tid: int, video: str, video_sha: str | None = None) -> dict:
    data = {"image": f"/data/upload/1/{tid}.png", "video": video, "frame": tid}
    if video_sha:
        data["video_sha256"] = video_sha
    return {"id": tid, "data": data}


def test_every_frame_of_a_video_gets_its_videos_split():
    rng = np.random.default_rng(1)
    for v in range(40):
        sha = f"{rng.integers(0, 2**63):016x}" * 4
        parts = {task_split(frame_task(i, f"v{v}.mp4", sha), f"{rng.integers(0, 2**63):016x}" * 4, 0.3)
                 for i in range(10)}
        assert parts == {split_for(sha, 0.3)}  # one split per video, the video's
    by_name = {task_split(frame_task(i, "cage3.mp4"), f"{i:064x}", 0.5) for i in range(30)}
    assert len(by_name) == 1  # a frame that names only its video goes with the video too
    image = f"{7:064x}"
    assert task_split({"id": 1, "data": {"image": "/data/x.png"}}, image, 0.5) == split_for(image, 0.5)
    assert video_count([frame_task(1, "a.mp4"), frame_task(2, "a.mp4"), frame_task(3, "b.mp4"),
                        {"id": 4, "data": {}}]) == 2


TINY = parse_skeleton("classes: [{name: thing, keypoints: [top, bottom]}]")


def labeled(tid: int, data: dict) -> dict:
    def region(rid, type_, value):
        return {"id": rid, "from_name": BOXES if type_ == "rectanglelabels" else KEYPOINTS, "to_name": IMAGE,
                "type": type_, "original_width": 64, "original_height": 48, "value": value}

    result = [region("b", "rectanglelabels", {"x": 10, "y": 10, "width": 50, "height": 50, "rotation": 0,
                                              "rectanglelabels": ["thing"]}),
              {**region("k1", "keypointlabels", {"x": 20, "y": 20, "width": 1, "keypointlabels": ["top"]}),
               "parentID": "b"},
              {**region("k2", "keypointlabels", {"x": 40, "y": 50, "width": 1, "keypointlabels": ["bottom"]}),
               "parentID": "b"}]
    return {"id": tid, "data": data, "annotations": [{"id": tid, "result": result}]}


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_the_converter_keeps_each_video_in_one_split_and_images_by_content(tmp_path):
    tasks, paths = [], {}
    for tid in range(60):
        path = tmp_path / "in" / f"{tid}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), picture(100 + tid))
        paths[tid] = path
        data = {"image": f"/data/{tid}.png"}
        if tid < 48:  # 8 videos of 6 frames; 12 plain images
            data.update(video=f"cage{tid // 6}.mp4", video_sha256=sha(f"cage{tid // 6}"), frame=tid)
        tasks.append(labeled(tid, data))
    first = convert_export(tasks, TINY, paths, tmp_path / "a", val_fraction=0.5)
    part = {tid: rel.split("/")[1] for tid, rel in first.task_images.items()}
    assert len(part) == 60
    for v in range(8):
        assert len({part[t] for t in range(v * 6, v * 6 + 6)}) == 1, f"video {v} straddles the split"
    assert len({part[t] for t in range(48)}) == 2  # the videos do go to both splits
    from poseops.convert import file_sha256

    assert all(part[t] == split_for(file_sha256(paths[t]), 0.5) for t in range(48, 60))  # images: by content
    # frames added later keep everyone's split
    more = [labeled(100 + i, {"image": "/x", "video": "cage0.mp4", "video_sha256": sha("cage0")}) for i in range(3)]
    for i in range(3):
        paths[100 + i] = tmp_path / "in" / f"more{i}.png"
        cv2.imwrite(str(paths[100 + i]), picture(500 + i))
    second = convert_export(tasks + more, TINY, paths, tmp_path / "b", val_fraction=0.5)
    again = {tid: rel.split("/")[1] for tid, rel in second.task_images.items()}
    assert all(again[t] == part[t] for t in part) and {again[100 + i] for i in range(3)} == {part[0]}
