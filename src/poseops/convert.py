"""Label Studio export → Ultralytics YOLO-pose dataset: exact, reported, fast.

The inverse of `regions.pose_to_results`. One task's chosen annotation (the latest
one that was not cancelled) becomes a list of `Pose`s; `convert_export` writes them
in the YOLO-pose layout with a `data.yaml` derived from the skeleton spec.

Nothing is dropped silently: every region that cannot be used becomes a `Problem`
(task id, kind, what was wrong, what was left out), and every task left out of the
dataset is listed with its reason. See docs/conversion.md for the rules.
"""

from __future__ import annotations

import gc
import hashlib
import json
import math
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote

import yaml

from poseops.errors import PoseopsError
from poseops.label_config import OCCLUDED, VISIBILITY
from poseops.regions import Pose
from poseops.skeleton import Skeleton

Split = Literal["train", "val"]
SPLITS: tuple[Split, Split] = ("train", "val")

# Percent values up to this far outside 0..100 are rounding noise at the image border
# (labels stored with 6 decimals, float sums): kept exactly as they are, without a problem.
# 1e-4 percent is 1e-6 of the image, the precision the round trip promises; Ultralytics
# itself accepts coordinates up to 1% outside the image.
BORDER_TOLERANCE = 1e-4
# A keypoint attached to its box may lie outside it (an outstretched hand; 5% of COCO's
# keypoints do, up to half the box's size away). Farther than this many box widths or
# heights, it is more likely attached to the wrong box: kept, and reported.
FAR_OUTSIDE_BOX = 1.0
DECIMALS = 8  # decimals written to the label files: the round trip stays exact to well under 1e-6
_BOX_FORMAT = f"%d %.{DECIMALS}f %.{DECIMALS}f %.{DECIMALS}f %.{DECIMALS}f"
_KEYPOINT_FORMAT = f"%.{DECIMALS}f %.{DECIMALS}f %d"
NAME_HEX = 16  # image files are named by the first 16 hex digits of their content's SHA-256
_ID_TYPES = (str, int)  # region and task ids as Label Studio writes them
_HEX = re.compile(r"[0-9a-fA-F]{16,}")

# The image suffixes Ultralytics reads (ultralytics.data.utils.IMG_FORMATS), without importing it.
IMAGE_SUFFIXES = frozenset(
    f".{s}" for s in ("avif", "bmp", "dng", "heic", "heif", "jp2", "jpeg", "jpg", "mpo", "png", "tif", "tiff", "webp")
)

# What a problem left out of the dataset.
DROPPED_TASK = "task"  # the whole task (its image is not in the dataset)
DROPPED_OBJECT = "object"  # a box and its keypoints (the task is then left out: see convert_export)
DROPPED_KEYPOINT = "keypoint"  # one keypoint (written as missing, 0 0 0)
DROPPED_REGION = "region"  # a region that is not part of a pose (ignored)
DROPPED_NOTHING = "nothing"  # kept, but changed (a box clipped to the image) or doubtful
KEYPOINT_FAR_OUTSIDE_BOX = "far_outside_box"


class ExportError(PoseopsError, ValueError):
    """A Label Studio export file that cannot be read; the message says what to do."""


@dataclass(frozen=True)
class Problem:
    """One thing the converter could not use as it was."""

    task_id: Any
    kind: str
    message: str
    label: str | None = None
    region_id: Any = None
    dropped: str = DROPPED_KEYPOINT

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "kind": self.kind,
            "label": self.label,
            "region_id": self.region_id,
            "dropped": self.dropped,
            "message": self.message,
        }


@dataclass
class ConversionReport:
    """What `convert_export` did; `to_dict()` is JSON-ready."""

    out_dir: str
    data_yaml: str
    tasks: int = 0
    annotations_used: int = 0
    images: dict[str, int] = field(default_factory=lambda: {"train": 0, "val": 0})
    empty_images: int = 0  # annotated images without any object (negatives)
    objects: Counter[str] = field(default_factory=Counter)  # per class
    keypoints: dict[str, int] = field(default_factory=dict)  # per Label Studio keypoint label, in model order
    occluded_keypoints: int = 0
    problems: list[Problem] = field(default_factory=list)  # regions changed or left out of kept tasks
    skipped_tasks: list[Problem] = field(default_factory=list)  # tasks left out of the dataset
    task_images: dict[Any, str] = field(default_factory=dict)  # task id → image path relative to out_dir
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "out_dir": self.out_dir,
            "data_yaml": self.data_yaml,
            "tasks": self.tasks,
            "annotations_used": self.annotations_used,
            "images": dict(self.images),
            "empty_images": self.empty_images,
            "objects": sum(self.objects.values()),
            "objects_per_class": dict(self.objects),
            "keypoints": sum(self.keypoints.values()),
            "keypoints_per_label": dict(self.keypoints),
            "occluded_keypoints": self.occluded_keypoints,
            "problem_counts": dict(Counter(p.kind for p in self.problems)),
            "skipped_counts": dict(Counter(p.kind for p in self.skipped_tasks)),
            "problems": [p.to_dict() for p in self.problems],
            "skipped_tasks": [p.to_dict() for p in self.skipped_tasks],
            "task_images": {str(k): v for k, v in self.task_images.items()},
            "warnings": list(self.warnings),
        }


# --- the skeleton's vocabulary, computed once per skeleton ---------------------------


@dataclass(frozen=True, eq=False)
class _Vocab:
    class_index: dict[str, int]
    keypoint_index: dict[str, int]  # Label Studio keypoint label → model index
    label_classes: dict[str, frozenset[str]]  # keypoint label → the classes that have it
    class_labels: dict[str, tuple[str, ...]]  # class → its keypoint labels in model order
    keypoint_count: int


@lru_cache(maxsize=16)
def _vocab(skeleton: Skeleton) -> _Vocab:
    label_classes: dict[str, set[str]] = {}
    class_labels: dict[str, tuple[str, ...]] = {}
    for cls in skeleton.classes:
        labels = tuple(skeleton.keypoint_label(cls.name, k.name) for k in cls.keypoints)
        class_labels[cls.name] = labels
        for label in labels:
            label_classes.setdefault(label, set()).add(cls.name)
    return _Vocab(
        class_index={name: i for i, name in enumerate(skeleton.class_names)},
        keypoint_index=skeleton.keypoint_labels(),
        label_classes={k: frozenset(v) for k, v in label_classes.items()},
        class_labels=class_labels,
        keypoint_count=skeleton.keypoint_count,
    )


# --- one annotation → poses ----------------------------------------------------------


def results_to_poses(skeleton: Skeleton, results: Any, task_id: Any = None) -> tuple[list[Pose], list[Problem]]:
    """The poses of one annotation's Label Studio `result` list, and what could not be used.

    Boxes come in result order. Keypoints join their box through `parentID`; one without
    `parentID` joins the one box of a class that has its label and contains it. A problem
    with `dropped == "task"` (a rotated image) means no poses are returned at all.
    """
    return _convert_results(_vocab(skeleton), results, task_id)


def _num(value: Any) -> float | None:
    """A finite float from a JSON number; None for anything else (bool, str, NaN, missing)."""
    t = type(value)
    if t is float:
        return value if math.isfinite(value) else None
    if t is int:
        return float(value)
    return None


class _Box:
    __slots__ = ("id", "cls", "x", "y", "w", "h", "kps")

    def __init__(self, rid: Any, cls: str, x: float, y: float, w: float, h: float, k: int):
        self.id, self.cls, self.x, self.y, self.w, self.h = rid, cls, x, y, w, h
        self.kps: list[tuple[float, float, int] | None] = [None] * k

    def contains(self, x: float, y: float) -> bool:
        return self.x <= x <= self.x + self.w and self.y <= y <= self.y + self.h


def _single_label(value: dict, key: str) -> tuple[str | None, str, str]:
    """(the one label of a region, "", "") or (None, problem kind, why not)."""
    labels = value.get(key)
    if not isinstance(labels, list) or not labels:
        return None, "missing_field", f"has no '{key}'"
    if len(labels) > 1:
        return None, "bad_label", f"has {len(labels)} labels {labels!r}; a region needs exactly one"
    if not isinstance(labels[0], str):
        return None, "bad_label", f"has a label that is not text: {labels[0]!r}"
    return labels[0], "", ""


def _convert_results(v: _Vocab, results: Any, task_id: Any) -> tuple[list[Pose], list[Problem]]:
    if not isinstance(results, list):
        return [], [Problem(task_id, "bad_result", f"the annotation's 'result' is {type(results).__name__}, "
                            "not a list of regions; re-export the project as JSON", dropped=DROPPED_TASK)]
    problems: list[Problem] = []
    boxes: dict[Any, _Box] = {}
    dropped_boxes: set[Any] = set()
    keypoint_regions: list[dict] = []  # with parentID
    orphans: list[dict] = []  # without: placed after those with one, so an explicit link wins over a guess
    occluded: set[Any] = set()  # ids of keypoint regions with the visibility choice "occluded"

    for n, r in enumerate(results):
        if type(r) is not dict:
            problems.append(Problem(task_id, "bad_region", f"result #{n} is {type(r).__name__}, not a region object",
                                    dropped=DROPPED_REGION))
            continue
        rotation = r.get("image_rotation")
        if rotation:  # 0, 0.0, None and a missing field are all fine
            return [], [Problem(task_id, "rotated_image",
                                f"region {r.get('id')!r} was drawn on the image rotated by {rotation!r} degrees; the "
                                "converter only takes unrotated images: rotate the image back to 0 in Label Studio "
                                "and fix the regions, or rotate the file itself before importing it",
                                region_id=r.get("id"), dropped=DROPPED_TASK)]
        kind = r.get("type")
        if kind == "rectanglelabels":
            box = _box(v, r, task_id, problems, boxes, dropped_boxes)
            if box is not None:
                boxes[box.id] = box
        elif kind == "keypointlabels":
            parent = r.get("parentID")
            (orphans if parent is None or parent == "" else keypoint_regions).append(r)
        elif kind == "choices" and r.get("from_name") == VISIBILITY and type(r.get("id")) not in _ID_TYPES:
            problems.append(Problem(task_id, "missing_field", f"visibility choice #{n} has no usable 'id'; ignored",
                                    dropped=DROPPED_REGION))
        elif kind == "choices" and r.get("from_name") == VISIBILITY:
            value = r.get("value")
            choices = value.get("choices") if type(value) is dict else None
            if isinstance(choices, list) and OCCLUDED in choices:
                occluded.add(r.get("id"))
            else:
                problems.append(Problem(task_id, "ignored_region",
                                        f"visibility choice {choices!r} on region {r.get('id')!r} is not "
                                        f"[{OCCLUDED!r}]; ignored", region_id=r.get("id"), dropped=DROPPED_REGION))
        else:
            problems.append(Problem(task_id, "ignored_region",
                                    f"region {r.get('id')!r} of type {kind!r} from {r.get('from_name')!r} is not a "
                                    "box, keypoint or visibility choice; ignored", region_id=r.get("id"),
                                    dropped=DROPPED_REGION))

    keypoint_ids: set[Any] = set()
    keypoint_regions += orphans
    for r in keypoint_regions:
        bad = _keypoint(v, r, boxes, dropped_boxes, occluded, keypoint_ids)
        if bad is not None:
            kind, why, label = bad
            rid = r.get("id")
            problems.append(Problem(task_id, kind, f"keypoint {rid!r} ({label or 'no label'}) {why}", label=label,
                                    region_id=rid,
                                    dropped=DROPPED_NOTHING if kind == KEYPOINT_FAR_OUTSIDE_BOX else DROPPED_KEYPOINT))

    for rid in occluded:
        if rid not in keypoint_ids:
            problems.append(Problem(task_id, "ignored_region",
                                    f"an '{OCCLUDED}' choice is attached to region {rid!r}, which is not a "
                                    "keypoint; ignored", region_id=rid, dropped=DROPPED_REGION))

    missing = (0.0, 0.0, 0)
    poses = [
        Pose(b.cls, (b.x, b.y, b.w, b.h), tuple(kp if kp is not None else missing for kp in b.kps))
        for b in boxes.values()
    ]
    return poses, problems


def _box(v: _Vocab, r: dict, task_id: Any, problems: list[Problem], boxes: dict, dropped: set) -> _Box | None:
    rid = r.get("id")
    value = r.get("value")

    def drop(kind: str, why: str, label: str | None = None) -> None:
        if rid is not None:
            dropped.add(rid)
        problems.append(Problem(task_id, kind, f"box {rid!r} {why}", label=label, region_id=rid, dropped=DROPPED_OBJECT))

    if type(rid) not in _ID_TYPES:
        rid = None
        drop("missing_field", "has no usable 'id'")
        return None
    if type(value) is not dict:
        drop("missing_field", "has no 'value' object")
        return None
    if rid in boxes or rid in dropped:
        problems.append(Problem(task_id, "duplicate_id", f"box id {rid!r} is used by an earlier box; this one is left "
                                "out", region_id=rid, dropped=DROPPED_OBJECT))
        return None
    label, kind, why = _single_label(value, "rectanglelabels")
    if label is None:
        drop(kind, why)
        return None
    if label not in v.class_index:
        drop("unknown_label", f"has class {label!r}, which is not in the skeleton spec (classes: "
             f"{', '.join(v.class_index)}); add it to the spec or relabel the box", label)
        return None
    x, y, w, h = (_num(value.get(k)) for k in ("x", "y", "width", "height"))
    if x is None or y is None or w is None or h is None:
        names = [k for k in ("x", "y", "width", "height") if _num(value.get(k)) is None]
        drop("missing_field", f"has no usable {', '.join(names)} (numbers in percent of the image)", label)
        return None
    if value.get("rotation"):
        drop("rotated_box", f"is rotated by {value.get('rotation')!r} degrees; YOLO boxes are axis-aligned: set its "
             "rotation to 0 in Label Studio", label)
        return None
    if w <= 0 or h <= 0:
        drop("empty_box", f"has no area (width {w}, height {h} percent)", label)
        return None
    x1, y1 = x + w, y + h
    tol = BORDER_TOLERANCE
    if x < -tol or y < -tol or x1 > 100 + tol or y1 > 100 + tol:
        cx0, cy0, cx1, cy1 = max(x, 0.0), max(y, 0.0), min(x1, 100.0), min(y1, 100.0)
        if cx1 <= cx0 or cy1 <= cy0:
            drop("out_of_range", f"lies outside the image (x {x}, y {y}, width {w}, height {h} percent)", label)
            return None
        problems.append(Problem(task_id, "out_of_range",
                                f"box {rid!r} reaches outside the image (x {x}, y {y}, width {w}, height {h} "
                                "percent); clipped to the image", label=label, region_id=rid,
                                dropped=DROPPED_NOTHING))
        x, y, w, h = cx0, cy0, cx1 - cx0, cy1 - cy0
    return _Box(rid, label, x / 100, y / 100, w / 100, h / 100, v.keypoint_count)


def _keypoint(v: _Vocab, r: dict, boxes: dict[Any, _Box], dropped: set, occluded: set,
              keypoint_ids: set) -> tuple[str, str, str | None] | None:
    """Put one keypoint region on its box; (problem kind, why, label) when it cannot be used."""
    rid = r.get("id")
    value = r.get("value")
    if type(rid) not in _ID_TYPES or type(value) is not dict:
        return "missing_field", "has no 'value' object" if type(value) is not dict else "has no usable 'id'", None
    if rid in keypoint_ids:
        return "duplicate_id", "uses the id of an earlier keypoint; this one is left out", None
    keypoint_ids.add(rid)
    labels = value.get("keypointlabels")
    if type(labels) is list and len(labels) == 1 and type(labels[0]) is str:
        label = labels[0]
    else:
        _, kind, why = _single_label(value, "keypointlabels")
        return kind, why, None
    index = v.keypoint_index.get(label)
    if index is None:
        return "unknown_label", "has a label that is not in the skeleton spec; add it to the spec or relabel the point", label
    x, y = value.get("x"), value.get("y")
    if type(x) is not float or type(y) is not float:
        x, y = _num(x), _num(y)
        if x is None or y is None:
            return "missing_field", "has no usable x/y (numbers in percent of the image)", label
    tol = BORDER_TOLERANCE
    if not (-tol <= x <= 100 + tol and -tol <= y <= 100 + tol):
        if x != x or y != y:
            return "missing_field", "has x/y that are not numbers (NaN)", label
        return "out_of_range", f"lies outside the image (x {x}, y {y} percent); move it inside or delete it", label
    x, y = x / 100, y / 100
    classes = v.label_classes[label]
    parent = r.get("parentID")
    if parent is not None and parent != "":
        box = boxes.get(parent) if type(parent) in _ID_TYPES else None
        if box is None:
            if type(parent) in _ID_TYPES and parent in dropped:
                return "parent_dropped", f"belongs to box {parent!r}, which was left out (see its problem)", label
            return ("missing_parent", f"names parent box {parent!r}, which is not in the annotation; draw the box "
                    "again and attach the point to it", label)
        if box.cls not in classes:
            return "wrong_class", f"is attached to box {parent!r} of class {box.cls!r}, which has no such keypoint", label
    else:
        fits = [b for b in boxes.values() if b.cls in classes and b.contains(x, y)]
        if not fits:
            return ("orphan_keypoint", "has no parent box and lies in no box of a class with this keypoint; attach "
                    "it to its box in Label Studio", label)
        if len(fits) > 1:
            return ("ambiguous_keypoint", f"has no parent box and lies in {len(fits)} boxes "
                    f"({', '.join(repr(b.id) for b in fits)}); attach it to its box in Label Studio", label)
        box = fits[0]
    if box.kps[index] is not None:
        return "duplicate_keypoint", f"is the second {label!r} on box {box.id!r}; the first one is kept", label
    box.kps[index] = (x, y, 1 if rid in occluded else 2)
    away = max(box.x - x, x - box.x - box.w, 0.0) / box.w, max(box.y - y, y - box.y - box.h, 0.0) / box.h
    if max(away) > FAR_OUTSIDE_BOX:
        return (KEYPOINT_FAR_OUTSIDE_BOX, f"lies {max(away):.1f} box sizes outside its box {box.id!r}; kept as "
                "labeled: check in Label Studio that it is attached to the right box", label)
    return None


# --- choosing the annotation of a task -----------------------------------------------


def _timestamp(value: Any) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value:
        try:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return -math.inf
        if t.tzinfo is None:
            t = t.replace(tzinfo=UTC)
        return t.timestamp()
    return -math.inf


def _annotation_order(a: dict) -> tuple[float, float, float]:
    ident = a.get("id")
    return (
        _timestamp(a.get("updated_at") or a.get("created_at")),
        _timestamp(a.get("created_at")),
        float(ident) if isinstance(ident, int) and not isinstance(ident, bool) else -math.inf,
    )


def choose_annotation(task: dict) -> tuple[dict | None, Problem | None]:
    """The annotation a task contributes: its latest (updated_at, then created_at, then id) not cancelled one.

    A task with no annotations, or only cancelled (skipped) ones, is not training data:
    (None, a Problem saying why). Drafts and predictions are never used.
    """
    task_id = task.get("id")
    annotations = task.get("annotations")
    if annotations is None:
        annotations = task.get("completions")  # exports of old Label Studio versions
    if not isinstance(annotations, list) or not annotations:
        return None, Problem(task_id, "not_annotated", "the task has no submitted annotation; label it in Label "
                             "Studio (drafts and predictions are not used)", dropped=DROPPED_TASK)
    usable = [a for a in annotations if type(a) is dict and not a.get("was_cancelled") and not a.get("skipped")]
    if not usable:
        return None, Problem(task_id, "cancelled", f"all {len(annotations)} annotation(s) of the task were cancelled "
                             "(skipped) by the annotator: not training data", dropped=DROPPED_TASK)
    return max(usable, key=_annotation_order), None


# --- split, files, dataset ------------------------------------------------------------


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


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def load_export(path: str | Path) -> list[dict]:
    """The tasks of a Label Studio JSON export file (Export → JSON), checked for shape."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file; export the project from Label Studio as JSON and pass that file") from None
    except OSError as e:
        raise ExportError(f"{path}: cannot be read ({e})") from None
    try:
        with _gc_paused():
            tasks = _json_loads(data)
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the download may be "
                          "cut off: export it again") from None
    except UnicodeDecodeError as e:
        raise ExportError(f"{path}: not UTF-8 text ({e}); is it a ZIP or image export? Export as JSON") from None
    if isinstance(tasks, dict) and "id" in tasks and "data" in tasks:
        tasks = [tasks]  # the export of a single task
    return check_tasks(tasks, str(path))


def check_tasks(tasks: Any, where: str) -> list[dict]:
    """`tasks` if it is a list of Label Studio tasks (each a dict with an int or text id and its
    annotations), else an ExportError naming the first bad item. The regions are checked later, one by one."""
    if not isinstance(tasks, list):
        raise ExportError(f"{where}: expected a JSON list of tasks (Label Studio's 'JSON' export), found a "
                          f"{type(tasks).__name__}")
    first_item: dict[Any, int] = {}
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or "id" not in task or not ("annotations" in task or "completions" in task):
            raise ExportError(f"{where}: item #{i} is not a task with 'id' and 'annotations'; is this a JSON-MIN, CSV "
                              "or COCO export? Export the project as 'JSON', which keeps region ids and parentID")
        task_id = task["id"]
        if type(task_id) not in _ID_TYPES:
            raise ExportError(f"{where}: item #{i} has the id {task_id!r}, not a number or text; the file is not a "
                              "Label Studio export as it was written: export the project as 'JSON' again")
        if task_id in first_item:  # its image and labels could not be told apart from the other's
            raise ExportError(f"{where}: items #{first_item[task_id]} and #{i} are both task {task_id!r}; are two "
                              "exports joined? Export the project as 'JSON' again, one project per file")
        first_item[task_id] = i
    return tasks


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects (JSON tasks, poses).

    They hold no reference cycles, yet each allocation burst triggers a full scan of
    them: pausing it makes reading a large export 3-4x faster. Restored on exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _json_loads(data: bytes) -> Any:
    """`orjson.loads` where installed (about 3x faster on big exports), else the standard library's."""
    try:
        import orjson
    except ImportError:
        return json.loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # the same error, with the standard library's line and column


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
    }


def format_label_line(class_index: int, pose: Pose) -> str:
    """One YOLO-pose label line: `cls cx cy w h` then `x y v` per keypoint, missing ones `0 0 0`."""
    x, y, w, h = pose.box
    parts = [_BOX_FORMAT % (class_index, x + w / 2, y + h / 2, w, h)]
    parts += [_KEYPOINT_FORMAT % kp if kp[2] else "0 0 0" for kp in pose.keypoints]
    return " ".join(parts)


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
    `split` maps task id → 'train'/'val'; tasks it does not name go by `split_for(content
    hash, val_fraction)`. Images are hard-linked (`link=True`, copied where links fail)
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
    writer = _DatasetWriter(_vocab(skeleton), str(out_dir), image_paths, split or {}, val_fraction, link,
                            ConversionReport(out_dir=str(root), data_yaml=str(root / "data.yaml")))
    with _gc_paused():
        for n, task in enumerate(tasks):
            writer.add(n, task)
    report = writer.finish()
    with open(out_dir / "data.yaml", "w", encoding="utf-8") as f:
        yaml.safe_dump(data_yaml(skeleton, root), f, sort_keys=False, allow_unicode=True, default_flow_style=None)
    return report


class _DatasetWriter:
    """Adds tasks to a dataset folder one by one, keeping the report."""

    def __init__(self, vocab: _Vocab, out: str, image_paths: Mapping[Any, str | Path], split: Mapping[Any, str],
                 val_fraction: float, link: bool, report: ConversionReport):
        self.v, self.out, self.image_paths, self.split = vocab, out, image_paths, split
        self.val_fraction, self.link, self.report = val_fraction, link, report
        self.per_label: Counter[str] = Counter()
        self.seen_names: dict[str, Any] = {}
        self.seen_ids: set[Any] = set()

    def skip(self, tid: Any, kind: str, message: str, first: Problem | None = None) -> None:
        self.report.skipped_tasks.append(Problem(tid, kind, message, label=first.label if first else None,
                                                 region_id=first.region_id if first else None, dropped=DROPPED_TASK))

    def add(self, n: int, task: Any) -> None:
        report = self.report
        report.tasks += 1
        if type(task) is not dict or type(task.get("id")) not in _ID_TYPES:
            self.skip(None, "bad_task", f"item #{n} of the export is not a task with an 'id'")
            return
        tid = task["id"]
        if tid in self.seen_ids:
            self.skip(tid, "duplicate_task", "an earlier task of the export has the same id; only the first is used")
            return
        self.seen_ids.add(tid)
        annotation, why = choose_annotation(task)
        if annotation is None:
            report.skipped_tasks.append(why)  # type: ignore[arg-type]
            return
        poses, problems = _convert_results(self.v, annotation.get("result"), tid)
        report.problems.extend(p for p in problems if p.dropped != DROPPED_TASK)
        fatal = [p for p in problems if p.dropped in (DROPPED_TASK, DROPPED_OBJECT)]
        if fatal:
            more = f" (and {len(fatal) - 1} more problem(s))" if len(fatal) > 1 else ""
            self.skip(tid, fatal[0].kind, f"left out: {fatal[0].message}{more}", fatal[0])
            return
        src = self.image_paths.get(tid)
        if src is None:
            src = self.image_paths.get(str(tid))
        if src is None or not os.path.isfile(src):
            self.skip(tid, "no_image", "no local image file for this task" if src is None else
                      f"its image {src} does not exist; download the task's images first")
            return
        src = Path(src)
        suffix = src.suffix.lower()
        if suffix not in IMAGE_SUFFIXES:
            self.skip(tid, "bad_image_type", f"its image {src.name!r} is not a type Ultralytics reads "
                      f"({', '.join(sorted(IMAGE_SUFFIXES))})")
            return
        digest = file_sha256(src)
        name = digest[:NAME_HEX]
        if name in self.seen_names:
            self.skip(tid, "duplicate_image", f"its image has the same content as task {self.seen_names[name]!r}'s; "
                      "only the first is used")
            return
        self.seen_names[name] = tid
        part = self.split.get(tid) or split_for(digest, self.val_fraction)
        image_rel = f"images/{part}/{name}{suffix}"
        _place_image(src, os.path.join(self.out, image_rel), self.link)
        lines = [format_label_line(self.v.class_index[p.class_name], p) for p in poses]
        with open(os.path.join(self.out, "labels", part, f"{name}.txt"), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n" if lines else "")
        self.count(tid, part, image_rel, poses)

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


# --- matching an export's tasks to a folder of images -----------------------------------

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def match_images(tasks: Iterable[dict], images_dir: str | Path) -> tuple[dict[Any, Path], list[Any]]:
    """Task id → image file in `images_dir`, by the task's file name; and the ids with no such file.

    Tried in order: `data.source` (set by `poseops dataset upload`), the base name of
    `data.image`, and that name without Label Studio's `<8 hex>-` upload prefix. Only base
    names are used, so no task can point outside `images_dir`.
    """
    root = Path(images_dir).resolve()
    found: dict[Any, Path] = {}
    missing: list[Any] = []
    for task in tasks:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        names = []
        for value in (data.get("source"), data.get("image")):
            if isinstance(value, str) and value:
                for text in dict.fromkeys((value, unquote(value))):  # Label Studio URL-encodes upload names
                    base = text.replace("\\", "/").rsplit("/", 1)[-1].split("?", 1)[0]
                    names += [base, _UPLOAD_PREFIX.sub("", base)]
        for name in names:
            if name in ("", ".", "..") or "\x00" in name:
                continue
            candidate = root / name
            if candidate.is_file() and candidate.resolve().parent == root:
                found[task.get("id")] = candidate
                break
        else:
            missing.append(task.get("id"))
    return found, missing
