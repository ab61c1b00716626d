"""A video frame's neighbours, read from its video: what the `temporal` score compares a frame's prediction with.

A task made by `poseops dataset add-video` names where its picture came from: `video` (the file
name), `video_sha256` (the file's content hash) and `frame` (its index). The video is looked for
under that name in each folder of `autolabel.video_dirs` (in each folder, not below it) and used
only when its SHA-256 is the task's; the frames `frame ± NEIGHBOUR_STEP` are read with one seek,
and the frame between them must be the task's picture pixel for pixel (frames are uploaded as PNG,
which is lossless), so a seek that lands elsewhere, or another video of the same name, is never
compared. When any of that fails the frame has no neighbours, and the score says so (`None`).

Neighbouring frames are 1/fps apart (33 ms at 30 fps): the animal has hardly moved, so two
predictions that differ are a mistake in one of them. Neighbours among the tasks themselves are
not used: the frames `add-video` chooses are picked to differ (k-means over the whole video),
seconds apart, and a change between them is the animal moving, not the model failing.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

NEIGHBOUR_STEP = 1  # frames between a frame and each neighbour it is compared with
Detections = list[dict[str, Any]]


@dataclass(frozen=True)
class FrameRef:
    """Which frame of which video a task's picture is (from its task data)."""

    video: str  # file name
    video_sha256: str
    frame: int

    @classmethod
    def of(cls, data: Mapping[str, Any] | None) -> FrameRef | None:
        """The frame a task's data names, or None for a task that is not a video frame."""
        data = data if isinstance(data, Mapping) else {}
        video, sha, frame = data.get("video"), data.get("video_sha256"), data.get("frame")
        if isinstance(video, str) and video and isinstance(sha, str) and sha and isinstance(frame, int) and frame >= 0:
            return cls(Path(video).name, sha, frame)
        return None


@functools.lru_cache(maxsize=256)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    from poseops.frames import file_sha256

    return file_sha256(Path(path))


@functools.lru_cache(maxsize=256)
def find_video(name: str, sha256: str, dirs: tuple[str, ...]) -> Path | None:
    """The file called `name` in one of `dirs` whose content hash is `sha256` (None: not there; said once)."""
    for folder in dirs:
        path = Path(folder).expanduser() / name
        if path.is_file():
            stat = path.stat()
            if _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns) == sha256:
                return path
    log.warning("video %s (sha256 %s…) is not in autolabel.video_dirs %s: its frames are scored without "
                "their neighbours (docs/autolabel.md)", name, sha256[:12], list(dirs))
    return None


def read_neighbours(path: Path, frame: int, picture: np.ndarray, step: int = NEIGHBOUR_STEP) -> list[np.ndarray] | None:
    """Frames `frame - step` (when there is one) and `frame + step` (when the video goes on) of the video at `path`;
    None when the frame read between them is not `picture` (a seek elsewhere, a different video)."""
    import cv2

    first = max(0, frame - step)
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            return None
        capture.set(cv2.CAP_PROP_POS_FRAMES, first)
        read: dict[int, np.ndarray] = {}
        for index in range(first, frame + step + 1):
            ok, image = capture.read()
            if not ok:
                break
            if index in (frame - step, frame, frame + step):
                read[index] = image
    finally:
        capture.release()
    here = read.get(frame)
    if here is None or here.shape != picture.shape or not np.array_equal(here, picture):
        return None
    return [read[i] for i in (frame - step, frame + step) if i in read]


def neighbours_of(data: Mapping[str, Any] | None, picture: Callable[[], np.ndarray], video_dirs: Sequence[str],
                  detect: Callable[[np.ndarray], Detections]) -> Callable[[], list[Detections] | None]:
    """For the temporal score: a function giving the predictions of the task's neighbouring frames, or None
    (not a video frame, its video not found, or the frame there not the task's picture). Nothing is read until
    it is called; `picture()` gives the task's decoded image."""

    def around() -> list[Detections] | None:
        ref = FrameRef.of(data)
        if ref is None or not video_dirs:
            return None
        path = find_video(ref.video, ref.video_sha256, tuple(str(d) for d in video_dirs))
        frames = None if path is None else read_neighbours(path, ref.frame, picture())
        if frames is None:
            if path is not None:
                log.warning("frame %d of %s is not the task's picture: scored without its neighbours", ref.frame, path)
            return None
        return [detect(f) for f in frames]

    return around
