"""`POST /detect-video`: a video file's frames, each with its detections and their track ids.

The upload is read as `/detect` reads an image (`detect_api.read_form`: the same streamed size cap,
field checks and error bodies), but kept in a temporary file for OpenCV. The run is
`poseops.video_predict.predict_video`, the code `poseops predict VIDEO` runs (Ultralytics' trackers, One-Euro
smoothing), on the service's model file, runtime and input size. It runs in the worker threads
`/detect` uses (the same limiter), at most VIDEO_THREADS videos at once so that images still get threads,
and within the server's time limit per request.

Limits are service settings (`ServiceConfig`): the upload's bytes (`POSEOPS_MAX_VIDEO_BYTES`), the frames
predicted on per request (`POSEOPS_MAX_VIDEO_FRAMES`), and a frame's pixels (`POSEOPS_MAX_PIXELS`, as an image's).
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request  # FastAPI resolves the handler's annotations in this module
from starlette.responses import Response

from poseops.api_schemas import DETECT_VIDEO_OPENAPI
from poseops.constants import VIDEO_SUFFIXES
from poseops.detect_api import (
    INFERENCE_THREADS,
    ApiError,
    UploadForm,
    admit_key,
    error_response,
    parse_threshold,
    read_form,
    ready_detector,
)
from poseops.video_predict import (
    PREFETCH_FRAMES,
    TRACKERS,
    VideoError,
    VideoFrame,
    VideoOptions,
    VideoSummary,
    planned_frames,
    predict_video,
)

if TYPE_CHECKING:
    import anyio
    from fastapi import FastAPI
    from starlette.datastructures import UploadFile

    from poseops.detector import Detector
    from poseops.imageio import PixelBudget

log = logging.getLogger(__name__)

VIDEO_FIELDS = ("video", "conf_thres", "iou_thres", "tracker", "smooth", "start_frame", "stride", "max_frames")
NO_TRACKER = "none"  # the `tracker` value for per-frame detections without ids, as `poseops predict --tracker none`
VIDEO_THREADS = max(1, INFERENCE_THREADS // 2)  # videos run at once; the other threads stay free for images
TIMEOUT_MARGIN_S = 10.0  # a run stops this long before the server's time limit, to answer in time
_OPTION_DEFAULTS = {f.name: f.default for f in dataclasses.fields(VideoOptions)}  # one home: video_predict's defaults
_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
# the first bytes of the containers OpenCV reads (VIDEO_SUFFIXES); anything else is not a video to this endpoint
_SIGNATURES = (
    (lambda h: h[4:8] in (b"ftyp", b"moov", b"mdat", b"free", b"wide", b"skip"), "MP4/MOV"),  # ISO base media
    (lambda h: h[:4] == b"RIFF" and h[8:12] == b"AVI ", "AVI"),
    (lambda h: h[:4] == b"\x1a\x45\xdf\xa3", "MKV/WebM"),  # EBML
    (lambda h: h[:4] in (b"\x00\x00\x01\xba", b"\x00\x00\x01\xb3"), "MPEG"),
    (lambda h: h[:4] == b"\x30\x26\xb2\x75", "WMV"),  # ASF
)


@dataclass(frozen=True)
class VideoInfo:
    width: int
    height: int
    fps: float  # as the container declares it (0: not declared)
    frame_count: int  # as the container declares it (0: not declared)


@dataclass(frozen=True)
class VideoAnswer:
    """The endpoint's answer: the video, the options it ran with, each frame's detections, and the run's speed."""

    video: VideoInfo
    options: VideoOptions
    frames: list[VideoFrame]
    summary: VideoSummary

    def to_json(self) -> dict[str, Any]:
        o, s = self.options, self.summary
        return {
            "video": dataclasses.asdict(self.video),
            "options": {"tracker": o.tracker or NO_TRACKER, "smooth": o.smooth, "conf_thres": o.conf_thres, "iou_thres": o.iou_thres,
                        "start_frame": o.start, "stride": o.stride, "max_frames": o.max_frames},
            "frames": [{"frame": f.index, "time_ms": f.time_ms, "detections": f.detections} for f in self.frames],
            "summary": {"frames": s.frames, "detections": s.detections, "track_ids": sorted(s.track_ids),
                        "seconds": round(s.seconds, 3), "frames_per_second": round(s.fps, 2), "runtime": s.runtime},
        }


def video_form(max_bytes: int) -> UploadForm:
    return UploadForm("/detect-video", VIDEO_FIELDS, "video", max_bytes, "curl -F video=@clip.mp4 URL/detect-video",
                      "cut the video shorter (ffmpeg -ss START -t SECONDS -i in.mp4 out.mp4) or re-encode it smaller")


def _parse_count(name: str, raw: str | None, default: int | None) -> int | None:
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw.strip())
    except ValueError:
        raise ApiError(400, f"invalid_{name}", f"{name} {raw!r} is not a whole number: send e.g. {default or 1}") from None


def _parse_flag(name: str, raw: str | None, default: bool) -> bool:
    text = (raw or "").strip().lower()
    if not text:
        return default
    if text in _TRUE | _FALSE:
        return text in _TRUE
    raise ApiError(400, f"invalid_{name}", f"{name} {raw!r} is not a yes/no value: send true or false")


def parse_video_options(values: dict[str, Any]) -> VideoOptions:
    """The run's options from the form (defaults and checks: `VideoOptions`'s, as `poseops predict` uses them)."""
    tracker = (values.get("tracker") or "").strip().lower() or _OPTION_DEFAULTS["tracker"]
    if tracker != NO_TRACKER and tracker not in TRACKERS:
        raise ApiError(400, "invalid_tracker", f"tracker {tracker!r} is not one this server runs: send {', '.join(TRACKERS)} or {NO_TRACKER}")
    try:
        return VideoOptions(
            tracker=None if tracker == NO_TRACKER else tracker,
            smooth=_parse_flag("smooth", values.get("smooth"), _OPTION_DEFAULTS["smooth"]),
            conf_thres=parse_threshold("conf_thres", values.get("conf_thres")),
            iou_thres=parse_threshold("iou_thres", values.get("iou_thres")),
            start=_parse_count("start_frame", values.get("start_frame"), _OPTION_DEFAULTS["start"]),
            stride=_parse_count("stride", values.get("stride"), _OPTION_DEFAULTS["stride"]),
            max_frames=_parse_count("max_frames", values.get("max_frames"), _OPTION_DEFAULTS["max_frames"]),
        )
    except VideoError as e:
        raise ApiError(400, "invalid_video_options", f"{e} (fields tracker, smooth, start_frame, stride, max_frames)") from None


def check_container(head: bytes) -> None:
    """400 `empty_video` or `not_a_video` unless the file's first bytes are those of a video container OpenCV reads."""
    if not head:
        raise ApiError(400, "empty_video", "the 'video' field is empty: attach the video file's bytes")
    if not any(matches(head) for matches, _ in _SIGNATURES):
        kinds = ", ".join(kind for _, kind in _SIGNATURES)
        raise ApiError(400, "not_a_video", f"the 'video' field is not a video this server reads ({kinds}): "
                       "send a video file; for one image use POST /detect")


def probe_video(path: Path, max_pixels: int) -> VideoInfo:
    """The video's frame size, rate and declared length; 400 `corrupt_video` when OpenCV cannot decode its first frame,
    413 `frame_too_large` when the container declares frames over `max_pixels` (checked before decoding one)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
        if width * height > max_pixels:
            raise ApiError(413, "frame_too_large", f"the video's frames are {width} x {height} = {width * height:,} pixels, over this "
                           f"server's limit of {max_pixels:,}: scale it down (ffmpeg -i in.mp4 -vf scale=1280:-2 out.mp4)")
        ok, frame = capture.read() if capture.isOpened() else (False, None)
        if not ok:
            raise ApiError(400, "corrupt_video", "the video cannot be decoded (damaged, or cut short: an MP4 keeps its index at the "
                           "end): upload the complete file, or re-encode it (ffmpeg -i in.mp4 out.mp4)")
        return VideoInfo(frame.shape[1], frame.shape[0], round(capture.get(cv2.CAP_PROP_FPS) or 0.0, 3),
                         max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0))
    finally:
        capture.release()


@dataclass(frozen=True)
class VideoLimits:
    max_frames: int
    max_pixels: int
    deadline: float  # time.monotonic() by which the run must stop


def _check_planned(path: Path, info: VideoInfo, options: VideoOptions, limits: VideoLimits) -> None:
    """Refuse a run that the declared frame count already puts past the video's end or over the frame limit."""
    if info.frame_count and options.start >= info.frame_count:
        raise ApiError(400, "invalid_video_options", f"start_frame {options.start} is past the video's end ({info.frame_count} frames): "
                       f"send a start_frame below {info.frame_count}")
    planned = planned_frames(path, options)
    if planned > limits.max_frames:
        raise ApiError(413, "video_too_long", f"the request asks for {planned:,} frames, over this server's limit of "
                       f"{limits.max_frames:,} per request: send max_frames (at most {limits.max_frames}), a larger stride, or a shorter clip")


def run_video(model: Any, path: Path, options: VideoOptions, limits: VideoLimits, budget: PixelBudget) -> VideoAnswer:
    """`predict_video` over the uploaded file within `limits` (runs in a worker thread)."""
    info = probe_video(path, limits.max_pixels)
    _check_planned(path, info, options, limits)
    frames: list[VideoFrame] = []

    def keep(frame: VideoFrame, _image: Any) -> None:
        if len(frames) >= limits.max_frames:  # the container declared fewer frames than it holds
            raise ApiError(413, "video_too_long", f"the video holds more than this server's limit of {limits.max_frames:,} frames "
                           "per request: send max_frames, a larger stride, or a shorter clip")
        if time.monotonic() > limits.deadline:
            raise ApiError(413, "video_too_long", f"the run passed this server's time per request after {len(frames):,} frames: "
                           "send fewer frames (max_frames, a larger stride) or a shorter clip")
        frames.append(frame)

    with budget.hold((PREFETCH_FRAMES + 2) * info.width * info.height):  # frames decoded ahead, in the model, being decoded
        try:
            summary = predict_video(model, path, options, keep, raw_sample=0)
        except VideoError as e:
            raise ApiError(400, "corrupt_video", f"{e}") from None
    if not frames:
        raise ApiError(400, "corrupt_video", "no frame of the video from start_frame on decodes: check start_frame, or re-encode the "
                       "video (ffmpeg -i in.mp4 out.mp4)")
    return VideoAnswer(info, options, frames, summary)


async def _keep_file(item: UploadFile, folder: Path) -> Path:
    """The uploaded file copied (in a thread) to `folder`, where OpenCV can open it by name."""
    import anyio

    suffix = Path(item.filename or "").suffix.lower()
    path = folder / f"upload{suffix if suffix in VIDEO_SUFFIXES else '.video'}"

    def copy() -> None:
        item.file.seek(0)
        head = item.file.read(16)
        check_container(head)
        with path.open("wb") as out:
            out.write(head)
            shutil.copyfileobj(item.file, out, 1024 * 1024)

    await anyio.to_thread.run_sync(copy)
    return path


def add_video_route(app: FastAPI, get_detector: Callable[[], Detector], limiter: anyio.CapacityLimiter,
                    budget: Callable[[int], PixelBudget], timeout_s: float) -> None:
    """`POST /detect-video` on `app`, in the worker threads of `limiter` (the image endpoint's)."""
    import anyio
    from starlette.responses import JSONResponse

    videos = anyio.CapacityLimiter(VIDEO_THREADS)

    @app.post("/detect-video", tags=["Service APIs"], summary="Detect and track objects over a video's frames",
              openapi_extra=DETECT_VIDEO_OPENAPI)
    async def detect_video(request: Request) -> Response:
        deadline = time.monotonic() + timeout_s - TIMEOUT_MARGIN_S
        try:
            detector = ready_detector(get_detector)
            if detector.keys is not None:
                await admit_key(detector, request)
            config = detector.config
            with tempfile.TemporaryDirectory(prefix="poseops-video-") as folder:
                values = await read_form(request, video_form(config.max_video_bytes), lambda item: _keep_file(item, Path(folder)))
                options = parse_video_options(values)
                limits = VideoLimits(config.max_video_frames, config.max_pixels, deadline)

                def run() -> VideoAnswer:
                    return run_video(detector.model, values["video"], options, limits, budget(config.max_pixels))

                async with videos:
                    answer = await anyio.to_thread.run_sync(run, limiter=limiter)
            return JSONResponse(answer.to_json())
        except ApiError as e:
            return error_response(e)
        except Exception:
            log.exception("POST /detect-video failed")
            return error_response(ApiError(500, "internal_error", "the server failed unexpectedly on this request; it logged the "
                                           "details. Retry, and report it if it persists"))
