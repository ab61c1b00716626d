"""Predicting on a video: every frame's detections, each object with a track id, optionally smoothed keypoints.

Tracking is Ultralytics' own (`YOLO.track(..., persist=True)`, ByteTrack or BoT-SORT with their
bundled settings), run on the same model file, runtime and input size as `PoseModel`, so a frame's
detections are what `poseops predict` gives an image, plus `track_id`. Two things are the
tracker's: a detection it does not (yet) follow is left out (a new track shows from its second
frame), and a tracked box is the tracker's Kalman-updated box; keypoints are the model's.
When the tracker follows nothing on a frame, its detections come through without an id
(`track_id: null`).

Smoothing (`smooth=True`) runs a One-Euro filter (Casiez et al., CHI 2012) on each keypoint's
x and y per track: still points stop jittering, moving ones follow with little lag. It is the
thirty lines below rather than a dependency: the one PyPI package for it (`oneeurofilter`) has
a single release and works on scalars anyway.

The run's speed is reported against the raw model on a sample of the same frames afterwards: the
same predictor (model file, runtime, input size) called without the tracker (`VideoSummary`).
"""

from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poseops.constants import DEFAULT_CONF_THRES, DEFAULT_IOU_THRES
from poseops.errors import PoseopsError

if TYPE_CHECKING:
    import numpy as np

    from poseops.inference import PoseModel

TRACKERS = {"bytetrack": "bytetrack.yaml", "botsort": "botsort.yaml"}  # Ultralytics' bundled tracker settings
RAW_SAMPLE_FRAMES = 32  # frames the raw model is timed on after a run, spread over it
PREFETCH_FRAMES = 4  # frames decoded ahead of the model
SMOOTH_MIN_CUTOFF_HZ = 1.0  # One-Euro: the cut-off frequency of a still point (lower: less jitter, more lag)
SMOOTH_BETA = 0.01  # One-Euro: how fast the cut-off rises with a point's speed (pixels/s), against lag (3 px noise -> 1 px; 6 px behind at 200 px/s)
SMOOTH_FORGET_S = 2.0  # a track unseen this long starts its filters afresh


class VideoError(PoseopsError, ValueError):
    """A video that cannot be read, or options that do not fit it; the message says what to do."""


@dataclass(frozen=True)
class VideoOptions:
    tracker: str | None = "bytetrack"  # None: per-frame detections without track ids
    smooth: bool = False
    conf_thres: float = DEFAULT_CONF_THRES
    iou_thres: float = DEFAULT_IOU_THRES
    start: int = 0  # first frame index
    stride: int = 1  # every stride-th frame from `start`
    max_frames: int | None = None  # at most this many frames

    def __post_init__(self) -> None:
        if self.tracker is not None and self.tracker not in TRACKERS:
            raise VideoError(f"unknown tracker {self.tracker!r}: use one of {', '.join(TRACKERS)} (or none)")
        if self.smooth and self.tracker is None:
            raise VideoError("smoothing follows each object by its track id: choose a tracker to smooth")
        if self.start < 0 or self.stride < 1 or (self.max_frames is not None and self.max_frames < 1):
            raise VideoError(f"frames from {self.start} every {self.stride} (at most {self.max_frames}): "
                             "start must be >= 0, stride and max frames >= 1")


@dataclass(frozen=True)
class VideoFrame:
    index: int  # frame index in the video
    time_ms: float
    width: int
    height: int
    detections: list[dict[str, Any]]  # the API's detections, each with `track_id` when tracking


@dataclass
class VideoSummary:
    source: Path
    runtime: str = ""
    frames: int = 0
    detections: int = 0
    track_ids: set[int] = field(default_factory=set)
    seconds: float = 0.0  # the whole run: decoding, model, tracking, smoothing and the caller's writing
    raw_fps: float | None = None  # the raw model alone on a sample of the same frames (None: no frames)
    raw_frames: int = 0

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else 0.0

    def describe(self) -> str:
        text = f"{self.source.name}: {self.frames} frames, {self.detections} detections"
        if self.track_ids:
            text += f", {len(self.track_ids)} track id" + ("s" if len(self.track_ids) > 1 else "")
        text += f"; {self.fps:.1f} frames/s" + (f" on {self.runtime}" if self.runtime else "")
        if self.raw_fps:
            text += f" (raw model on {self.raw_frames} of the same frames: {self.raw_fps:.1f}/s, ratio {self.fps / self.raw_fps:.2f})"
        return text


def frame_count(path: Path) -> int:
    """The frame count the container declares (0 when it does not say)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        return max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
    finally:
        capture.release()


def planned_frames(path: Path, options: VideoOptions) -> int:
    """How many frames a run over `path` with `options` will see (from the declared count)."""
    left = max(frame_count(path) - options.start, 0)
    count = -(-left // options.stride)
    return min(count, options.max_frames) if options.max_frames else count


def read_frames(path: Path, options: VideoOptions) -> Iterator[tuple[int, float, np.ndarray]]:
    """(index, time in ms, BGR frame) of the frames `options` pick, in order; skipped frames are not decoded to BGR.

    A thread decodes up to PREFETCH_FRAMES ahead (OpenCV lets go of the GIL while it decodes), so
    decoding overlaps the model's work on the frame before instead of adding to it.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise VideoError(f"{path}: OpenCV cannot open it as a video; check the file or convert it (ffmpeg -i in out.mp4)")
    frames: queue.Queue = queue.Queue(maxsize=PREFETCH_FRAMES)
    stop = threading.Event()

    def hand_over(item: Any) -> bool:
        while not stop.is_set():
            try:
                frames.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def decode() -> None:
        index = given = 0
        try:
            while options.max_frames is None or given < options.max_frames:
                wanted = index >= options.start and (index - options.start) % options.stride == 0
                if not capture.grab():
                    break
                if wanted:
                    ok, frame = capture.retrieve()
                    if not ok or not hand_over((index, round(capture.get(cv2.CAP_PROP_POS_MSEC), 1), frame)):
                        break
                    given += 1
                index += 1
        finally:
            capture.release()
            hand_over(None)

    reader = threading.Thread(target=decode, name="poseops-video-reader", daemon=True)
    reader.start()
    try:
        while (item := frames.get()) is not None:
            yield item
    finally:
        stop.set()
        reader.join()


class OneEuroFilter:
    """The One-Euro filter of one scalar: an exponential smoother whose cut-off rises with the signal's speed."""

    def __init__(self, min_cutoff: float = SMOOTH_MIN_CUTOFF_HZ, beta: float = SMOOTH_BETA, d_cutoff: float = 1.0) -> None:
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self._t: float | None = None
        self._x = self._dx = 0.0

    @staticmethod
    def _alpha(dt: float, cutoff: float) -> float:
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, t: float, x: float) -> float:
        """The filtered value of `x` observed at time `t` (seconds)."""
        if self._t is None:
            self._t, self._x = t, x
            return x
        dt = t - self._t
        if dt <= 0:
            return self._x
        a_d = self._alpha(dt, self.d_cutoff)
        self._dx = a_d * (x - self._x) / dt + (1 - a_d) * self._dx
        a = self._alpha(dt, self.min_cutoff + self.beta * abs(self._dx))
        self._t, self._x = t, a * x + (1 - a) * self._x
        return self._x


class KeypointSmoother:
    """One-Euro filters per (track id, keypoint) over x and y; a track unseen for a while starts afresh."""

    def __init__(self, min_cutoff: float = SMOOTH_MIN_CUTOFF_HZ, beta: float = SMOOTH_BETA) -> None:
        self.min_cutoff, self.beta = min_cutoff, beta
        self._filters: dict[tuple[int, str], tuple[OneEuroFilter, OneEuroFilter]] = {}
        self._seen: dict[int, float] = {}

    def __call__(self, t: float, detections: list[dict[str, Any]]) -> None:
        """Smooth the keypoints of the tracked detections in place (time `t` in seconds)."""
        for track, last in list(self._seen.items()):
            if t - last > SMOOTH_FORGET_S:
                del self._seen[track]
                self._filters = {k: v for k, v in self._filters.items() if k[0] != track}
        for det in detections:
            track = det.get("track_id")
            if track is None:
                continue
            self._seen[track] = t
            for point in det["keypoints"]:
                key = (track, point["name"])
                if key not in self._filters:
                    self._filters[key] = (OneEuroFilter(self.min_cutoff, self.beta), OneEuroFilter(self.min_cutoff, self.beta))
                fx, fy = self._filters[key]
                point["x"], point["y"] = round(fx(t, point["x"]), 2), round(fy(t, point["y"]), 2)


class VideoTracker:
    """Ultralytics' tracking on `model`'s file, runtime and input size, in a predictor of its own."""

    def __init__(self, model: PoseModel, tracker: str, conf_thres: float, iou_thres: float) -> None:
        from ultralytics import YOLO

        self.model, self.tracker = model, TRACKERS[tracker]
        self.conf_thres, self.iou_thres = conf_thres, iou_thres
        self._yolo = YOLO(str(model.model_path), task="pose")  # PoseModel's predictor stays free of tracking state

    def reset(self) -> None:
        """Forget every track (a new video starts from id 1)."""
        for tracker in getattr(self._yolo.predictor, "trackers", None) or []:
            tracker.reset()

    def raw(self, frame: np.ndarray) -> list[dict[str, Any]]:
        """The raw model on the frame through the same predictor, the tracker left as it was (the speed baseline)."""
        from poseops.inference import detections_from_result

        result = self._yolo.predict(frame, conf=self.conf_thres, iou=self.iou_thres, imgsz=self.model.imgsz,
                                    device="cpu", verbose=False, tracker=self.tracker)[0]  # same setup: no new predictor
        return detections_from_result(result, self.model.skeleton)

    def __call__(self, frame: np.ndarray) -> list[dict[str, Any]]:
        from poseops.inference import detections_from_result

        result = self._yolo.track(frame, persist=True, tracker=self.tracker, conf=self.conf_thres, iou=self.iou_thres,
                                  imgsz=self.model.imgsz, device="cpu", verbose=False)[0]
        detections = detections_from_result(result, self.model.skeleton)
        ids = result.boxes.id if result.boxes is not None else None
        for i, det in enumerate(detections):
            det["track_id"] = int(ids[i]) if ids is not None else None
        return detections


def predict_video(
    model: PoseModel,
    path: Path,
    options: VideoOptions,
    on_frame: Callable[[VideoFrame, np.ndarray], None] | None = None,
    tracker: VideoTracker | None = None,
    raw_sample: int = RAW_SAMPLE_FRAMES,
) -> VideoSummary:
    """Run over the frames of `path` that `options` pick, handing each to `on_frame`; then time the raw model
    on up to `raw_sample` of them.

    `tracker` (made from `options` when not given) is reset first, so ids start at 1 for each video.
    An exception from `on_frame` ends the run there (the frame reader stops with it).
    """
    if options.tracker is not None:
        tracker = tracker or VideoTracker(model, options.tracker, options.conf_thres, options.iou_thres)
        tracker.reset()
    smoother = KeypointSmoother() if options.smooth else None
    every = max(1, planned_frames(path, options) // max(raw_sample, 1))
    sample: list[np.ndarray] = []
    summary = VideoSummary(source=path, runtime=model.runtime)
    started = time.perf_counter()
    with contextlib.closing(read_frames(path, options)) as frames:  # the reader thread stops however the loop ends
        for index, time_ms, image in frames:
            if tracker is not None:
                detections = tracker(image)
            else:
                detections = model.detect(image, options.conf_thres, options.iou_thres)
            if smoother is not None:
                smoother(time_ms / 1000.0, detections)
            frame = VideoFrame(index, time_ms, image.shape[1], image.shape[0], detections)
            if on_frame is not None:
                on_frame(frame, image)
            if summary.frames % every == 0 and len(sample) < raw_sample:
                sample.append(image)
            summary.frames += 1
            summary.detections += len(detections)
            summary.track_ids |= {d["track_id"] for d in detections if d.get("track_id") is not None}
    summary.seconds = time.perf_counter() - started
    if sample:
        raw = tracker.raw if tracker is not None else (lambda image: model.detect(image, options.conf_thres, options.iou_thres))
        started = time.perf_counter()
        for image in sample:
            raw(image)
        summary.raw_fps, summary.raw_frames = len(sample) / (time.perf_counter() - started), len(sample)
    return summary
