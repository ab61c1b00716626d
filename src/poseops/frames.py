"""Frames worth labeling from a video: decode at a stride, embed each frame small, pick N diverse ones.

The way DeepLabCut's k-means frame extraction works: every `stride`-th frame becomes a
candidate with a small embedding (the frame shrunk to `EMBED_WIDTH` pixels wide, grey levels
0..1); k-means groups the candidates into N clusters and the frame nearest each cluster's
centre is chosen, so the chosen frames cover the different things the video shows instead of
the long stretches where little moves. Frames with the same content (a frozen or repeated
picture) count once, and a chosen frame closer than `min_distance` to another chosen one (a
near-duplicate) is dropped. The selection depends on the video alone: choosing again picks the
same frames.

Distances are root-mean-square grey-level differences between embeddings (0: the same
picture, 1: black against white), so one threshold means the same at any frame size.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from poseops.errors import PoseopsError

EMBED_WIDTH = 32  # pixels across the embedding (DeepLabCut shrinks to 30)
MAX_CANDIDATES = 1000  # the automatic stride keeps about this many candidates per video
NEAR_DUPLICATE = 0.02  # RMS grey-level difference below which two frames count as the same picture
DEFAULT_FRAMES = 20


class VideoError(PoseopsError, ValueError):
    """A video that cannot be read; the message names it and says why."""


@dataclass(frozen=True)
class FrameOptions:
    """How frames are chosen from each video."""

    frames: int = DEFAULT_FRAMES  # per video
    stride: int | None = None  # every stride-th frame is a candidate; None: about MAX_CANDIDATES per video
    min_distance: float = NEAR_DUPLICATE
    seed: int = 0

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise VideoError(f"frames per video must be at least 1, not {self.frames}")
        if self.stride is not None and self.stride < 1:
            raise VideoError(f"the stride must be at least 1 (every frame), not {self.stride}")
        if not 0 <= self.min_distance < 1:
            raise VideoError(f"min_distance is a grey-level difference between 0 and 1, not {self.min_distance}")


@dataclass(frozen=True)
class Video:
    path: Path
    sha256: str  # of the file: a video is known by its content, whatever its name
    frame_count: int  # as its header declares (decoding may find fewer)
    fps: float
    width: int
    height: int

    def time_of(self, index: int) -> float:
        """Seconds from the start of the video to frame `index`."""
        return round(index / self.fps, 3) if self.fps > 0 else 0.0


@dataclass
class Candidates:
    """The frames considered: their indices in the video and their embeddings (one row each)."""

    indices: np.ndarray
    embeddings: np.ndarray
    decoded: int = 0  # frames decoded in all
    duplicates: int = 0  # candidates left out for the same content as an earlier one


@dataclass(frozen=True)
class ChosenFrame:
    index: int
    time: float  # seconds
    png: bytes

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.png).hexdigest()


@dataclass
class FrameSelection:
    video: Video
    frames: list[ChosenFrame]
    decoded: int
    candidates: int
    duplicates: int  # same content as another candidate
    near_duplicates: int  # chosen by k-means, then dropped for being too close to another chosen frame
    warnings: list[str] = field(default_factory=list)


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def probe(path: Path) -> Video:
    """The video's identity and header; VideoError when OpenCV cannot open it or finds no frame in it."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise VideoError(f"{path}: empty file")
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoError(f"{path}: not a video OpenCV can open (corrupt, or a format its FFmpeg lacks)")
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        fps = float(capture.get(cv2.CAP_PROP_FPS) or 0.0)
        width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    finally:
        capture.release()
    if width <= 0 or height <= 0:
        raise VideoError(f"{path}: its header declares no picture size: not a readable video")
    return Video(path, file_sha256(path), max(count, 0), fps if math.isfinite(fps) else 0.0, width, height)


def auto_stride(frame_count: int, max_candidates: int = MAX_CANDIDATES) -> int:
    return max(1, math.ceil(frame_count / max_candidates))


def embed(frame: np.ndarray) -> np.ndarray:
    """A frame's embedding: shrunk to EMBED_WIDTH pixels across, grey, values 0..1, flattened."""
    import cv2

    height, width = frame.shape[:2]
    size = (EMBED_WIDTH, max(1, round(EMBED_WIDTH * height / width)))
    small = cv2.resize(frame, size, interpolation=cv2.INTER_AREA)
    if small.ndim == 3:
        small = cv2.cvtColor(small, cv2.COLOR_BGR2GRAY)
    return (small.astype(np.float32) / 255.0).ravel()


def decoded_frames(path: Path, stride: int = 1, stop: int | None = None) -> Iterator[tuple[int, np.ndarray | None]]:
    """(index, frame) for every frame in order: the frame for each stride-th one, None for the others.

    Every frame is decoded (a video's frames depend on the ones before); only the kept ones are
    converted to pictures. Stops at the end of the video, the first undecodable frame, or `stop`.
    """
    import cv2

    capture = cv2.VideoCapture(str(path))
    try:
        index = 0
        while (stop is None or index < stop) and capture.grab():
            if index % stride == 0:
                ok, frame = capture.retrieve()
                yield index, frame if ok else None
            else:
                yield index, None
            index += 1
    finally:
        capture.release()


def scan(video: Video, stride: int, on_progress: Callable[[int], None] | None = None) -> Candidates:
    """Decode the video; embed every stride-th frame, leaving out those whose content was seen before."""
    indices, embeddings, seen = [], [], set()
    decoded = duplicates = 0
    for index, frame in decoded_frames(video.path, stride):
        decoded += 1
        if on_progress:
            on_progress(1)
        if frame is None:
            continue
        digest = hashlib.blake2b(np.ascontiguousarray(frame).data, digest_size=16).digest()
        if digest in seen:
            duplicates += 1
            continue
        seen.add(digest)
        indices.append(index)
        embeddings.append(embed(frame))
    width = len(embeddings[0]) if embeddings else 0
    return Candidates(np.array(indices, dtype=np.int64), np.array(embeddings, dtype=np.float32).reshape(-1, width),
                      decoded, duplicates)


def distances(embeddings: np.ndarray, others: np.ndarray | None = None) -> np.ndarray:
    """RMS grey-level difference between every pair of embeddings (a square matrix), or from each of
    `embeddings` (rows) to each of `others` (columns)."""
    x = np.asarray(embeddings, dtype=np.float64)
    y = x if others is None else np.asarray(others, dtype=np.float64)
    d2 = np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T, 0.0)
    return np.sqrt(d2 / max(1, x.shape[1]))


def min_pairwise_distance(embeddings: np.ndarray) -> float:
    """The closest two frames' distance (the smaller, the more alike the most alike pair)."""
    d = distances(embeddings)
    np.fill_diagonal(d, np.inf)
    return float(d.min()) if len(d) > 1 else math.inf


def mean_nearest_distance(embeddings: np.ndarray) -> float:
    """The mean distance from each frame to its nearest other frame."""
    d = distances(embeddings)
    np.fill_diagonal(d, np.inf)
    return float(d.min(1).mean()) if len(d) > 1 else math.inf


def uniform_positions(count: int, n: int) -> list[int]:
    """N positions evenly spread over `count` candidates: the baseline k-means is measured against."""
    return sorted({round(i * (count - 1) / max(1, n - 1)) for i in range(n)}) if count else []


def select_diverse(embeddings: np.ndarray, n: int, min_distance: float = NEAR_DUPLICATE, seed: int = 0) -> tuple[list[int], int]:
    """Positions (sorted) of up to `n` diverse rows, and how many near-duplicates were dropped.

    k-means with n clusters; from each cluster the row nearest its centre. Larger clusters go
    first, and a row closer than `min_distance` to one already kept is dropped.
    """
    from sklearn.cluster import KMeans
    from threadpoolctl import threadpool_limits

    count = len(embeddings)
    if count == 0:
        return [], 0
    if n >= count:
        picked, order = list(range(count)), list(range(count))
    else:
        with threadpool_limits(1):  # one thread: as fast at this size, and no oversubscription on a busy machine
            km = KMeans(n_clusters=n, n_init=2, random_state=seed).fit(embeddings)
        picked = []
        for c in range(n):
            members = np.flatnonzero(km.labels_ == c)
            if len(members):
                gap = ((embeddings[members] - km.cluster_centers_[c]) ** 2).sum(1)
                picked.append(int(members[gap.argmin()]))
        sizes = np.bincount(km.labels_, minlength=n)
        order = sorted(picked, key=lambda p: (-sizes[km.labels_[p]], p))
    d = distances(embeddings[order])
    kept: list[int] = []
    for i in range(len(order)):
        if all(d[i, j] >= min_distance for j in kept):
            kept.append(i)
    return sorted(order[i] for i in kept), len(order) - len(kept)


def read_frames(path: Path, indices: list[int]) -> dict[int, np.ndarray]:
    """The frames at these indices, by decoding the video once more up to the last of them."""
    wanted = set(indices)
    found = {}
    for index, frame in decoded_frames(path, 1, stop=max(indices) + 1 if indices else 0):
        if index in wanted and frame is not None:
            found[index] = frame
    return found


def encode_png(frame: np.ndarray) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", frame)
    if not ok:
        raise VideoError("OpenCV could not encode a frame as PNG")
    return data.tobytes()


def choose_frames(path: Path, options: FrameOptions = FrameOptions(), on_progress: Callable[[int], None] | None = None,
                  on_total: Callable[[int], None] | None = None) -> FrameSelection:
    """Up to `options.frames` diverse frames of one video, as PNG; VideoError when it cannot be read.

    `on_total` hears the number of frames the video declares, `on_progress` each frame decoded.
    """
    import cv2

    try:
        return _choose_frames(Path(path), options, on_progress, on_total)
    except cv2.error as e:
        raise VideoError(f"{path}: OpenCV failed on it ({str(e).strip()[:300]})") from None


def _choose_frames(path: Path, options: FrameOptions, on_progress: Callable[[int], None] | None,
                   on_total: Callable[[int], None] | None) -> FrameSelection:
    video = probe(path)
    if on_total:
        on_total(video.frame_count)
    stride = options.stride or auto_stride(video.frame_count)
    candidates = scan(video, stride, on_progress)
    if not len(candidates.indices):
        raise VideoError(f"{video.path}: OpenCV opens it but decodes no frame from it (corrupt or truncated)")
    warnings = []
    if video.frame_count and candidates.decoded < video.frame_count * 0.95:
        warnings.append(f"{video.path.name}: decoded {candidates.decoded} of the {video.frame_count} frames its header "
                        "declares (truncated or damaged?); frames were chosen from those")
    positions, near = select_diverse(candidates.embeddings, options.frames, options.min_distance, options.seed)
    chosen = [int(candidates.indices[p]) for p in positions]
    pictures = read_frames(video.path, chosen)
    missing = [i for i in chosen if i not in pictures]
    if missing:
        warnings.append(f"{video.path.name}: frame(s) {missing} did not decode a second time; left out")
    frames = [ChosenFrame(i, video.time_of(i), encode_png(pictures[i])) for i in chosen if i in pictures]
    return FrameSelection(video, frames, candidates.decoded, len(candidates.indices), candidates.duplicates, near,
                          warnings)
