"""`POST /detect-video` end to end on a real `bentoml serve` (started by `poseops serve`), on clips cut from a real video.

- The person service (`detect_service`, yolo11n-pose): the answer's shape on a clip of the open-field video, the
  same detections and track ids as `poseops.video_predict.predict_video` in this process on the same export,
  `/detect` answering while a video runs, and every error (not a video, empty, cut short, bad options,
  more frames than the server takes) as a clear JSON body, with the server still serving afterwards.
- A service of the open-field mouse model (`mouse_model` of test_predict_video: yolo11n-pose fine-tuned on frames
  of the video's first half) with small caps set through the service's settings: the one mouse keeps one track id
  over 15 s of the second half, and an upload over the byte cap is 413.

Clips are cut here with OpenCV into temporary folders; no video is stored in the repository.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import cv2
import httpx
import pytest
import schemathesis
from conftest import PERSON_SPEC, ROOT, free_port
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from service_server import IMAGES, RunningService, start, stop, wait_ready
from test_predict_video import OPENFIELD, TRACK_FRAMES, TRACK_START, box_iou, mouse_boxes, mouse_model  # noqa: F401 (a fixture)

from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration

CLIP_FRAMES = 150  # 5 s of the open-field video, from its first frame
DETECTION_KEYS = {"class", "confidence", "x", "y", "width", "height", "keypoints", "track_id"}


def cut(path: Path, start: int, count: int, codec: str = "mp4v") -> Path:
    """`count` frames of the open-field video from `start`, encoded with `codec` into `path`."""
    capture = cv2.VideoCapture(str(OPENFIELD))
    capture.set(cv2.CAP_PROP_POS_FRAMES, start)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*codec), capture.get(cv2.CAP_PROP_FPS), (640, 480))
    for _ in range(count):
        ok, frame = capture.read()
        assert ok, f"{OPENFIELD} ends before frame {start + count}"
        writer.write(frame)
    writer.release()
    capture.release()
    return path


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Path:
    return cut(tmp_path_factory.mktemp("clip") / "openfield-5s.mp4", 0, CLIP_FRAMES)


def post(service: RunningService, video: bytes | None, name: str = "clip.mp4", **fields: str) -> httpx.Response:
    files = {"video": (name, video, "video/mp4")} if video is not None else None
    headers = service.headers() if service.keys else {}
    return httpx.post(service.url + "/detect-video", files=files, data=fields, headers=headers, timeout=180)


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == code, body
    assert all(word in body["message"] for word in words), body


def assert_still_serving(service: RunningService, clip: Path) -> None:
    r = post(service, clip.read_bytes(), max_frames="3")
    assert r.status_code == 200 and len(r.json()["frames"]) == 3, r.text


# --- the person service: the answer and its code path -------------------------------------------------------------


def test_answer_has_every_frame_with_tracked_detections(detect_service: RunningService, clip: Path):
    r = post(detect_service, clip.read_bytes(), stride="2", smooth="true")
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["video"] == {"width": 640, "height": 480, "fps": pytest.approx(30.0, abs=0.01), "frame_count": CLIP_FRAMES}
    assert answer["options"] == {"tracker": "bytetrack", "smooth": True, "conf_thres": 0.25, "iou_thres": 0.45,
                                 "start_frame": 0, "stride": 2, "max_frames": None}
    frames = answer["frames"]
    assert [f["frame"] for f in frames] == list(range(0, CLIP_FRAMES, 2))
    assert [f["time_ms"] for f in frames] == pytest.approx([i * 1000 / 30 for i in range(0, CLIP_FRAMES, 2)], abs=1)
    names = load_skeleton(PERSON_SPEC).classes[0].keypoint_names
    detections = [d for f in frames for d in f["detections"]]
    for det in detections:
        assert set(det) == DETECTION_KEYS and [k["name"] for k in det["keypoints"]] == names
    summary = answer["summary"]
    assert summary["frames"] == len(frames) == CLIP_FRAMES // 2 and summary["detections"] == len(detections)
    assert summary["track_ids"] == sorted({d["track_id"] for d in detections if d["track_id"] is not None})
    assert summary["runtime"] == "openvino" and summary["frames_per_second"] > 0
    assert summary["frames_per_second"] == pytest.approx(summary["frames"] / summary["seconds"], rel=0.01)
    print(f"\n/detect-video: {summary['frames']} frames at {summary['frames_per_second']} frames/s; "
          f"{len(detections)} detections (the person model on a mouse), track ids {Counter(d['track_id'] for d in detections)}")


def test_same_frames_ids_and_keypoints_as_predict_video_in_process(detect_service: RunningService, clip: Path):
    """The endpoint runs `predict_video`: on the service's own OpenVINO export, this process gets the same answer."""
    from poseops.inference import PoseModel
    from poseops.video_predict import VideoOptions, predict_video

    served = list((detect_service.home / "openvino").glob("*_openvino_model"))
    assert len(served) == 1, served
    model = PoseModel(served[0], load_skeleton(PERSON_SPEC), "openvino")
    options = VideoOptions(conf_thres=0.1, max_frames=60)
    local = []
    predict_video(model, clip, options, lambda frame, image: local.append(frame), raw_sample=0)
    r = post(detect_service, clip.read_bytes(), conf_thres="0.1", max_frames="60")
    assert r.status_code == 200, r.text
    remote = r.json()["frames"]
    assert [f["frame"] for f in remote] == [f.index for f in local] == list(range(60))
    found = 0
    for mine, theirs in zip(local, remote, strict=True):
        assert [d["track_id"] for d in theirs["detections"]] == [d["track_id"] for d in mine.detections], mine.index
        for a, b in zip(mine.detections, theirs["detections"], strict=True):
            assert abs(a["x"] - b["x"]) <= 1 and abs(a["y"] - b["y"]) <= 1 and abs(a["confidence"] - b["confidence"]) < 1e-3
        found += len(mine.detections)
    assert found > 0, "the person model finds the mouse as a 'person' on some of these frames"


def test_detect_answers_while_a_video_runs(detect_service: RunningService, clip: Path):
    video: dict[str, float] = {}

    def run_video() -> None:
        r = post(detect_service, clip.read_bytes())
        assert r.status_code == 200, r.text
        video["done"] = time.monotonic()

    runner = threading.Thread(target=run_video)
    runner.start()
    time.sleep(1.0)  # the video is being read and tracked
    images_done = []
    with httpx.Client(timeout=60) as http:
        for image in IMAGES[:3]:
            r = http.post(detect_service.url + "/detect", files={"image": image.read_bytes()}, headers=detect_service.headers())
            assert r.status_code == 200, r.text
            images_done.append(time.monotonic())
    runner.join(timeout=180)
    assert "done" in video, "the video request failed"
    assert images_done[-1] < video["done"], "the images waited for the video"


# --- the person service: errors --------------------------------------------------------------------------------------


def test_not_a_video_empty_or_cut_short_is_a_clear_400(detect_service: RunningService, clip: Path):
    assert_error(post(detect_service, b"this is a text file, not a video\n" * 20), 400, "not_a_video", "POST /detect")
    assert_error(post(detect_service, IMAGES[0].read_bytes(), name="photo.jpg"), 400, "not_a_video", "MP4")
    assert_error(post(detect_service, b""), 400, "empty_video", "empty")
    data = clip.read_bytes()
    assert_error(post(detect_service, data[: len(data) // 2]), 400, "corrupt_video", "complete file")
    assert_error(post(detect_service, None, stride="2"), 400, "missing_video", "video=@")
    r = httpx.post(detect_service.url + "/detect-video", files={"image": ("a.mp4", data)}, headers=detect_service.headers())
    assert_error(r, 400, "unknown_field", "'image'", "video")
    assert_still_serving(detect_service, clip)


@pytest.mark.parametrize(("fields", "code", "word"), [
    ({"tracker": "sort"}, "invalid_tracker", "bytetrack, botsort or none"),
    ({"tracker": "none", "smooth": "true"}, "invalid_video_options", "choose a tracker"),
    ({"smooth": "maybe"}, "invalid_smooth", "true or false"),
    ({"stride": "0"}, "invalid_video_options", "stride"),
    ({"stride": "two"}, "invalid_stride", "whole number"),
    ({"max_frames": "-3"}, "invalid_video_options", "max frames"),
    ({"start_frame": "150"}, "invalid_video_options", "150 frames"),
    ({"conf_thres": "2"}, "invalid_conf_thres", "between 0 and 1"),
])  # fmt: skip
def test_bad_options_are_a_clear_400(detect_service: RunningService, clip: Path, fields: dict, code: str, word: str):
    assert_error(post(detect_service, clip.read_bytes(), **fields), 400, code, word)


def test_more_frames_than_the_server_takes_is_413_before_any_run(detect_service: RunningService, clip: Path):
    started = time.monotonic()
    r = post(detect_service, OPENFIELD.read_bytes(), name=OPENFIELD.name)  # 2,330 frames, over the default 1,800
    assert_error(r, 413, "video_too_long", "2,330 frames", "1,800", "max_frames")
    assert time.monotonic() - started < 10, "refused from the declared frame count, not after running"
    r = post(detect_service, OPENFIELD.read_bytes(), name=OPENFIELD.name, start_frame="2300", stride="10")
    assert r.status_code == 200 and [f["frame"] for f in r.json()["frames"]] == [2300, 2310, 2320], r.text
    assert_still_serving(detect_service, clip)


def test_openapi_lists_the_endpoint_with_its_errors(detect_service: RunningService):
    spec = httpx.get(detect_service.url + "/docs.json").json()
    operation = spec["paths"]["/detect-video"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"video", "conf_thres", "iou_thres", "tracker", "smooth", "start_frame", "stride", "max_frames"}
    assert form["required"] == ["video"]
    for status in ("400", "401", "403", "413", "500", "503"):
        schema = operation["responses"][status]["content"]["application/json"]["schema"]
        assert schema["required"] == ["error", "message"], status
    meta = httpx.get(detect_service.url + "/metadata").json()["api"]
    assert meta["max_video_bytes"] == 100 * 2**20 and meta["max_video_frames"] == 1800


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_fuzzed_requests_get_clear_answers(detect_service: RunningService, clip: Path, mode: GenerationMode):
    """Schemathesis' requests from the spec: no 5xx, every error a JSON {error, message}, the server still serving.
    (It cannot make a video, so the schema-valid ones get a 400 too: positive_data_acceptance cannot hold.)"""
    operation = schemathesis.openapi.from_url(detect_service.url + "/docs.json", timeout=30)["/detect-video"]["POST"]
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=40, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def send(case) -> None:
        response = case.call(headers=detect_service.headers(), timeout=120)
        statuses[response.status_code] += 1
        case.validate_response(response, headers=detect_service.headers(),
                               excluded_checks=[positive_data_acceptance, negative_data_rejection])
        assert 400 <= response.status_code < 500, response.text
        body = response.json()
        assert set(body) == {"error", "message"} and len(body["message"]) > 20, body

    send()
    assert statuses[400] > 0, statuses
    assert_still_serving(detect_service, clip)


# --- the mouse service: one mouse, one id ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mouse_clip(tmp_path_factory) -> Path:
    """The 15 s of the second half that test_predict_video tracks, without loss (FFV1): lossy re-encoding (mp4v, MJPEG)
    changes the frames enough for the fine-tuned detector to miss the mouse on more of them and the tracker to
    give it new ids (measured: 2-3 ids), which would test the codec, not the service."""
    return cut(tmp_path_factory.mktemp("mouse-clip") / "openfield-second-half.mkv", TRACK_START, TRACK_FRAMES, "FFV1")


@pytest.fixture(scope="module")
def mouse_service(mouse_model, mouse_clip: Path, tmp_path_factory):  # noqa: F811 (the fixture imported above)
    """`poseops serve` of the fine-tuned mouse model, its upload cap set (through the service's settings) just above the clip."""
    model, background = mouse_model
    home = tmp_path_factory.mktemp("mouse-service")
    service = RunningService(f"http://127.0.0.1:{free_port()}", home, home / "no-keys.yaml", {}, {}, home / "service.log")
    cap = mouse_clip.stat().st_size + 2**20
    env = {**os.environ, "POSEOPS_HOME": str(home), "YOLO_OFFLINE": "true", "POSEOPS_MAX_VIDEO_BYTES": str(cap)}
    command = [sys.executable, "-m", "poseops.cli_serve", "serve", "--weights", str(model.weights), "--skeleton",
               str(model.skeleton.source), "--host", "127.0.0.1", "--port", service.url.rsplit(":", 1)[1],
               "--service-dir", str(ROOT / "bentos")]  # fmt: skip
    process = start(command, env, service.log)
    try:
        wait_ready(service, process)
        yield service, background, cap
    finally:
        stop(process)


def test_the_one_mouse_keeps_one_track_id_through_the_service(mouse_service, mouse_clip: Path):
    service, background, cap = mouse_service
    clip = mouse_clip
    r = post(service, clip.read_bytes(), name=clip.name)
    assert r.status_code == 200, r.text
    answer = r.json()
    frames = {f["frame"]: f["detections"] for f in answer["frames"]}
    assert list(frames) == list(range(TRACK_FRAMES)) and answer["summary"]["frames"] == TRACK_FRAMES
    detected = {i: dets for i, dets in frames.items() if dets}
    assert len(detected) >= 0.9 * TRACK_FRAMES, f"the mouse was found on only {len(detected)} of {TRACK_FRAMES} frames"
    ids = Counter(dets[0]["track_id"] for dets in detected.values())
    main_id, count = ids.most_common(1)[0]
    assert main_id is not None and count >= 0.95 * len(detected), f"track ids over the detected frames: {ids}"
    images = {i: frame for i, (_, _, frame) in enumerate(_frames(clip))}
    truth = mouse_boxes(images, background)  # the track is on the mouse
    ious = sorted(box_iou(dict(zip(("x", "y", "width", "height"), truth[i][:4], strict=True)), dets[0])
                  for i, dets in detected.items() if i in truth)
    assert len(ious) >= 0.9 * len(detected) and ious[len(ious) // 2] > 0.6, f"median IoU with the mouse {ious[len(ious) // 2]:.2f}"
    print(f"\nmouse: detected on {len(detected)} of {TRACK_FRAMES} frames, ids {dict(ids)}, median IoU {ious[len(ious) // 2]:.2f}; "
          f"{answer['summary']['frames_per_second']} frames/s on {answer['summary']['runtime']}")

    assert httpx.get(service.url + "/metadata").json()["api"]["max_video_bytes"] == cap
    over = post(service, clip.read_bytes() + bytes(2 * 2**20), name=clip.name)  # 1 MB over the cap
    assert_error(over, 413, "video_too_large", f"{cap:,} bytes", "ffmpeg")


def _frames(path: Path):
    from poseops.video_predict import VideoOptions, read_frames

    return read_frames(path, VideoOptions())


def test_frames_over_the_pixel_limit_are_413_before_one_is_decoded(clip: Path):
    """The service's check (`probe_video`, with POSEOPS_MAX_PIXELS) on the container's declared frame size."""
    from poseops.detect_api import ApiError
    from poseops.detect_video_api import probe_video

    assert probe_video(clip, 640 * 480).frame_count == CLIP_FRAMES
    with pytest.raises(ApiError, match="640 x 480 = 307,200 pixels") as refused:
        probe_video(clip, 640 * 480 - 1)
    assert (refused.value.status, refused.value.code) == (413, "frame_too_large")
