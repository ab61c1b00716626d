"""Writing an Ultralytics YOLO-pose dataset from Label Studio tasks: images, label files,
the train/val split and `data.yaml` (derived from the skeleton spec).

A task with a dropped box is left out whole: an image with an unlabeled object would
teach the model that the object is background. See docs/conversion.md.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from poseops.constants import IMAGE_SUFFIXES
from poseops.conversion.annotations import choose_annotation
from poseops.conversion.export import gc_paused
from poseops.conversion.poses import Pose
from poseops.conversion.report import DROPPED_OBJECT, DROPPED_TASK, ConversionReport, Problem
from poseops.conversion.results import convert_results
from poseops.conversion.vocab import ID_TYPES, Vocab, vocab
from poseops.skeleton import Skeleton

Split = Literal["train", "val"]
SPLITS: tuple[Split, Split] = ("train", "val")

DECIMALS = 8  # decimals written to the label files: the round trip stays exact to well under 1e-6
_BOX_FORMAT = f"%d %.{DECIMALS}f %.{DECIMALS}f %.{DECIMALS}f %.{DECIMALS}f"
_KEYPOINT_FORMAT = f"%.{DECIMALS}f %.{DECIMALS}f %d"
NAME_HEX = 16  # image files are named by the first 16 hex digits of their content's SHA-256
_HEX = re.compile(r"[0-9a-fA-F]{16,}")


def split_for(content_sha256: str, val_fraction: float) -> Split:
    """'val' or 'train' for an image, from the SHA-256 (hex) of its content alone.

    An image keeps its split when others are added or removed; about `val_fraction`
    of all images land in 'val'.
    """
    if not 0 <= val_fraction <= 1:
        raise ValueError(f"val_fraction must be between 0 and 1, not {val_fraction!r}")
    if not isinstance(content_sha256, str) or not _HEX.fullmatch(content_sha256):
        raise ValueError(f"{content_sha256!r} is not a SHA-256 hex digest (64 hex digits of the image's content)")
    return "val" if int(content_sha256[:16], 16) < val_fraction * 2**64 else "train"


def split_key(task: Any, content_sha256: str) -> str:
    """What a task's split is drawn from: its video when it is a video's frame, else its image's content.

    A frame names its video in its data (`video_sha256`, the video file's content hash, as
    `poseops dataset add-video` writes it; or only a `video` name): every frame of one video then
    lands in the same split, so near-identical neighbouring frames never straddle train and val.
    """
    data = task.get("data") if isinstance(task, dict) and isinstance(task.get("data"), dict) else {}
    video_sha = data.get("video_sha256")
    if isinstance(video_sha, str) and _HEX.fullmatch(video_sha):
        return video_sha.lower()
    video = data.get("video")
    if isinstance(video, str) and video.strip():
        return hashlib.sha256(f"video:{video.strip()}".encode()).hexdigest()
    return content_sha256


def task_split(task: Any, content_sha256: str, val_fraction: float) -> Split:
    """'val' or 'train' for a task: by its video (all of a video's frames together), else by its image's content.

    Stable: a task keeps its split when others are added (frames of the same video included).
    """
    return split_for(split_key(task, content_sha256), val_fraction)


def video_count(tasks: Iterable[Any]) -> int:
    """How many videos the tasks' frames come from (tasks without a video not counted)."""
    return len({split_key(t, "") for t in tasks} - {""})


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def data_yaml(skeleton: Skeleton, path: str | Path) -> dict[str, Any]:
    """The Ultralytics dataset yaml of a converted dataset rooted at `path`."""
    return {
        "path": str(path),
        "train": "images/train",
        "val": "images/val",
        "names": dict(enumerate(skeleton.class_names)),
        "kpt_shape": [skeleton.keypoint_count, 3],
        "flip_idx": list(skeleton.flip_idx),
        "kpt_names": {i: cls.keypoint_names for i, cls in enumerate(skeleton.classes)},
        "kpt_oks_sigmas": skeleton.oks_sigmas,  # Ultralytics' loss and validation (pose mAP) read them
    }


def format_label_line(class_index: int, pose: Pose) -> str:
    """One YOLO-pose label line: `cls cx cy w h` then `x y v` per keypoint, missing ones `0 0 0`."""
    x, y, w, h = pose.box
    parts = [_BOX_FORMAT % (class_index, x + w / 2, y + h / 2, w, h)]
    parts += [_KEYPOINT_FORMAT % kp if kp[2] else "0 0 0" for kp in pose.keypoints]
    return " ".join(parts)


def convert_export(
    tasks: Iterable[dict],
    skeleton: Skeleton,
    image_paths: Mapping[Any, str | Path],
    out_dir: str | Path,
    split: Mapping[Any, str] | None = None,
    *,
    val_fraction: float = 0.2,
    overwrite: bool = False,
    link: bool = True,
) -> ConversionReport:
    """Write a YOLO-pose dataset from Label Studio tasks.

    `image_paths` maps task id → the local image file (never a name taken from the task).
    `split` maps task id → 'train'/'val'; tasks it does not name go by `task_split` (their
    video's hash when they are a video's frames, else their image's content hash).
    Images are hard-linked (`link=True`, copied where links fail)
    as `images/<split>/<sha256[:16]><suffix>`, labels as `labels/<split>/<same>.txt`.
    A task with a dropped box is left out whole: an image with an unlabeled object would
    teach the model that the object is background.
    """
    if not 0 <= val_fraction <= 1:
        raise ValueError(f"val_fraction must be between 0 and 1, not {val_fraction!r}")
    for tid, part in (split or {}).items():
        if part not in SPLITS:
            raise ValueError(f"split of task {tid!r} is {part!r}; use 'train' or 'val'")
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    root = out_dir.resolve()
    writer = DatasetWriter(vocab(skeleton), str(out_dir), image_paths, split or {}, val_fraction, link,
                           ConversionReport(out_dir=str(root), data_yaml=str(root / "data.yaml")))
    with gc_paused():
        for n, task in enumerate(tasks):
            writer.add(n, task)
    report = writer.finish()
    with open(out_dir / "data.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(data_yaml(skeleton, root), f, sort_keys=False, allow_unicode=True, default_flow_style=None)
    return report


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise NotADirectoryError(f"{out_dir} is a file; pass a folder for the dataset")
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out_dir} is not empty; pass overwrite=True to replace the dataset there "
                                  "(its images/, labels/ and data.yaml) or choose an empty folder")
        for sub in ("images", "labels"):
            shutil.rmtree(out_dir / sub, ignore_errors=True)
        (out_dir / "data.yaml").unlink(missing_ok=True)
    for part in SPLITS:
        (out_dir / "images" / part).mkdir(parents=True, exist_ok=True)
        (out_dir / "labels" / part).mkdir(parents=True, exist_ok=True)


def _place_image(src: Path, dst: str, link: bool) -> None:
    if link:
        try:
            os.link(src, dst)
            return
        except OSError:
            pass  # another file system, or links not allowed: copy
    shutil.copyfile(src, dst)


class DatasetWriter:
    """Adds tasks to a dataset folder one by one, keeping the report."""

    def __init__(self, v: Vocab, out: str, image_paths: Mapping[Any, str | Path], split: Mapping[Any, str],
                 val_fraction: float, link: bool, report: ConversionReport):
        self.v, self.out, self.image_paths, self.split = v, out, image_paths, split
        self.val_fraction, self.link, self.report = val_fraction, link, report
        self.per_label: Counter[str] = Counter()
        self.seen_names: dict[str, Any] = {}
        self.seen_ids: set[Any] = set()

    def skip(self, tid: Any, kind: str, message: str, first: Problem | None = None) -> None:
        self.report.skipped_tasks.append(Problem(tid, kind, message, label=first.label if first else None,
                                                 region_id=first.region_id if first else None, dropped=DROPPED_TASK))

    def add(self, n: int, task: Any) -> None:
        """Item #n of the export: its image and label file written, or the reason it is left out."""
        self.report.tasks += 1
        if type(task) is not dict or type(task.get("id")) not in ID_TYPES:
            self.skip(None, "bad_task", f"item #{n} of the export is not a task with an 'id'")
            return
        tid = task["id"]
        if tid in self.seen_ids:
            self.skip(tid, "duplicate_task", "an earlier task of the export has the same id; only the first is used")
            return
        self.seen_ids.add(tid)
        poses = self._poses(tid, task)
        image = self._image(tid) if poses is not None else None
        if poses is None or image is None:
            return
        src, suffix, digest = image
        name = digest[:NAME_HEX]
        self.seen_names[name] = tid
        part = self.split.get(tid) or task_split(task, digest, self.val_fraction)
        image_rel = f"images/{part}/{name}{suffix}"
        _place_image(src, os.path.join(self.out, image_rel), self.link)
        lines = [format_label_line(self.v.class_index[p.class_name], p) for p in poses]
        with open(os.path.join(self.out, "labels", part, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n" if lines else "")
        self.count(tid, part, image_rel, poses)

    def _poses(self, tid: Any, task: dict) -> list[Pose] | None:
        """The poses of the task's chosen annotation; None when the task is left out (and why is recorded)."""
        annotation, why = choose_annotation(task)
        if annotation is None:
            self.report.skipped_tasks.append(why)  # type: ignore[arg-type]
            return None
        poses, problems = convert_results(self.v, annotation.get("result"), tid)
        self.report.problems.extend(p for p in problems if p.dropped != DROPPED_TASK)
        fatal = [p for p in problems if p.dropped in (DROPPED_TASK, DROPPED_OBJECT)]
        if fatal:
            more = f" (and {len(fatal) - 1} more problem(s))" if len(fatal) > 1 else ""
            self.skip(tid, fatal[0].kind, f"left out: {fatal[0].message}{more}", fatal[0])
            return None
        return poses

    def _image(self, tid: Any) -> tuple[Path, str, str] | None:
        """(file, lower-case suffix, content SHA-256) of the task's image; None when it is left out (and why)."""
        src = self.image_paths.get(tid)
        if src is None:
            src = self.image_paths.get(str(tid))
        if src is None or not os.path.isfile(src):
            self.skip(tid, "no_image", "no local image file for this task" if src is None else
                      f"its image {src} does not exist; download the task's images first")
            return None
        src = Path(src)
        suffix = src.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            self.skip(tid, "bad_image_type", f"its image {src.name!r} is not an image type poseops reads "
                      f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            return None
        digest = file_sha256(src)
        first = self.seen_names.get(digest[:NAME_HEX])
        if first is not None:
            self.skip(tid, "duplicate_image", f"its image has the same content as task {first!r}'s; "
                      "only the first is used")
            return None
        return src, suffix, digest

    def count(self, tid: Any, part: str, image_rel: str, poses: list[Pose]) -> None:
        report = self.report
        report.annotations_used += 1
        report.images[part] += 1
        report.task_images[tid] = image_rel
        if not poses:
            report.empty_images += 1
        for pose in poses:
            report.objects[pose.class_name] += 1
            labels = self.v.class_labels[pose.class_name]
            for i, kp in enumerate(pose.keypoints):
                if kp[2]:
                    self.per_label[labels[i]] += 1
                    if kp[2] == 1:
                        report.occluded_keypoints += 1

    def finish(self) -> ConversionReport:
        report = self.report
        report.keypoints = {label: self.per_label[label] for label in self.v.keypoint_index}
        if not report.images["train"] and not report.images["val"]:
            report.warnings.append("no image was converted: see skipped_tasks for why")
        elif not report.images["val"]:
            report.warnings.append("no validation image: Ultralytics needs some; raise val_fraction or label more images")
        elif not report.images["train"]:
            report.warnings.append("no training image: lower val_fraction or label more images")
        return report
