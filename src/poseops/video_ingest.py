"""Video ingestion: the frames `poseops.frames` chooses become Label Studio tasks with the usual pre-labels.

Each frame is uploaded as a PNG image through the dataset upload (`poseops.datasets`), so it
gets the template pre-label and is skipped when its content is already in the project. Its task
data also names where it came from: `video` (the file name), `video_sha256` (the file's
content hash: the pull keeps all frames of one video in the same split), `frame` (its index)
and `time` (seconds). A frame already in the project (same video content, same index) is not
uploaded again, so ingesting the same video twice adds nothing. When a model is given (the
deployed service, normally the champion, or a weights file), its predictions pre-label the new
tasks too, as autolabel's do.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from poseops.constants import VIDEO_SUFFIXES
from poseops.datasets import ImageFile, load_record, project_of, upload_image_files
from poseops.frames import FrameSelection
from poseops.labelstudio import LabelStudioClient
from poseops.settings import Settings

VIDEO_FIELDS = ("video", "video_sha256", "frame", "time")  # what a frame's task data adds to an image's


@dataclass
class VideoResult:
    """What happened to one video: its frames chosen, added as tasks, or why it could not be read."""

    video: str  # the path as given
    sha256: str = ""
    decoded: int = 0
    candidates: int = 0
    duplicates: int = 0  # candidates left out for the same content as an earlier frame
    near_duplicates: int = 0
    chosen: int = 0
    added: list[int] = field(default_factory=list)  # new task ids
    already: int = 0  # chosen frames that were in the dataset already
    predicted: int = 0  # new tasks pre-labeled by the model too
    warnings: list[str] = field(default_factory=list)
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def collect_videos(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Video files under the given files and folders, and the paths that name none.

    A file named directly is tried whatever its name (OpenCV decides); a folder is searched
    recursively for the video suffixes (poseops.constants.VIDEO_SUFFIXES).
    """
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for path in map(Path, paths):
        if path.is_dir():
            videos = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)
            found += videos
            if not videos:
                problems.append((path, f"no video in this folder ({', '.join(sorted(VIDEO_SUFFIXES))})"))
        elif path.is_file():
            found.append(path)
        else:
            problems.append((path, "no such file or folder"))
    return list(dict.fromkeys(found)), problems


def frames_in_project(client: LabelStudioClient, project_id: int) -> set[tuple[str, int]]:
    """(video content hash, frame index) of every video frame already in the project."""
    keys = set()
    for task in client.iter_tasks(project_id, fields="task_only"):
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        if isinstance(data.get("video_sha256"), str) and isinstance(data.get("frame"), int):
            keys.add((data["video_sha256"], data["frame"]))
    return keys


def frame_image(selection: FrameSelection, index: int) -> ImageFile:
    """One chosen frame as an image to upload, with its video's fields for the task data."""
    video = selection.video
    frame = next(f for f in selection.frames if f.index == index)
    name = video.path.parent / f"{video.path.stem}_frame{index:06d}.png"
    return ImageFile(name, frame.png, frame.sha256, video.width, video.height, "image/png",
                     data={"video": video.path.name, "video_sha256": video.sha256, "frame": index, "time": frame.time})


def upload_frames(client: LabelStudioClient, settings: Settings, dataset: str, selection: FrameSelection,
                  result: VideoResult, workers: int = 4) -> dict[int, bytes]:
    """Upload the chosen frames not yet in the dataset; the new tasks' ids → their PNG. Fills `result`."""
    project = project_of(client, dataset)
    there = frames_in_project(client, project.id)
    todo = [f.index for f in selection.frames if (selection.video.sha256, f.index) not in there]
    images = [frame_image(selection, i) for i in todo]
    report = upload_image_files(client, settings, dataset, images, workers=workers)
    by_path = {image.path: image for image in images}
    result.added = [task_id for _, task_id in report.uploaded]
    result.already = len(selection.frames) - len(result.added)
    return {task_id: by_path[path].content for path, task_id in report.uploaded}


def prelabel_with_model(client: LabelStudioClient, settings: Settings, dataset: str, new: dict[int, bytes],
                        service_url: str | None, weights: str | None, options) -> tuple[int, dict[int, str]]:
    """The model's predictions on the new tasks (as autolabel makes them); (tasks pre-labeled, failures by task)."""
    from poseops import autolabel

    if not new or not (service_url or weights):
        return 0, {}
    record = load_record(settings, dataset)
    project = project_of(client, dataset)
    version = autolabel.model_version_of(service_url, weights)
    report = autolabel.AutolabelReport(version)
    detect = autolabel.detector(service_url, weights, record.skeleton, options)
    with tempfile.TemporaryDirectory(prefix="poseops-frames-") as tmp:
        images = {}
        for task_id, png in new.items():
            images[task_id] = Path(tmp) / f"{task_id}.png"
            images[task_id].write_bytes(png)
        tasks = [{"id": task_id, "predictions": []} for task_id in new]
        autolabel.label_tasks(client, project.id, record.skeleton_spec(), tasks, images, detect, version, options,
                              report)
    if report.predicted:
        autolabel.show_model_version(client, project.id, version)
    return len(report.predicted), report.failed
