"""Reading existing pose labels: COCO keypoints JSON and Ultralytics YOLO-pose txt.

Both readers give one `LabeledImage` per image (negatives included, with no poses),
in normalized `Pose`s, so that real labels can be imported into Label Studio as
annotations (`to_label_studio_tasks`) and conversions can be checked against them.

COCO rules (the same as `ultralytics.data.converter.convert_coco(use_keypoints=True)`,
which made coco8-pose): `iscrowd` annotations are left out (a crowd region is not
one person and has no keypoints); annotations without any labeled keypoint are left
out too unless `include_without_keypoints=True` (then they are boxes whose keypoints
are all missing, `0 0 0`). Keypoints with v = 0 become `(0, 0, 0)`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from PIL import Image

from poseops.constants import IMAGE_SUFFIXES
from poseops.conversion.poses import Pose
from poseops.conversion.results import poses_to_results
from poseops.errors import PoseopsError
from poseops.skeleton import Skeleton


class DatasetError(PoseopsError, ValueError):
    """Labels that cannot be read; the message names the file and the entry."""


class LabeledImage(NamedTuple):
    file_name: str
    width: int
    height: int
    poses: list[Pose]
    path: Path | None = None


# --- COCO keypoints JSON -------------------------------------------------------------


def read_coco_keypoints(
    json_path: str | Path,
    images_dir: str | Path | None = None,
    *,
    skeleton: Skeleton | None = None,
    include_without_keypoints: bool = False,
) -> list[LabeledImage]:
    """Every image of a COCO keypoints file with its poses, in the file's image order.

    `images_dir` defaults to `images/` beside the `annotations/` folder. With a
    `skeleton`, each keypoint category must have a class of the same name with the
    same keypoint names in the same order.
    """
    json_path = Path(json_path)
    images_dir = Path(images_dir) if images_dir is not None else json_path.parent.parent / "images"
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{json_path}: cannot be read as JSON ({e})") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise DatasetError(f"{json_path}: expected a COCO object with 'images', 'annotations' and 'categories' lists")
    categories: dict[Any, tuple[str, int]] = {}
    for cat in doc["categories"]:
        names = cat.get("keypoints") or []
        categories[cat.get("id")] = (cat.get("name"), len(names))
        if skeleton is not None and names:
            try:
                expected = skeleton.get(cat.get("name")).keypoint_names
            except KeyError as e:
                raise DatasetError(f"{json_path}: category {cat.get('name')!r}: {e.args[0]}") from None
            if names != expected:
                raise DatasetError(f"{json_path}: category {cat.get('name')!r} has keypoints {names}, the skeleton "
                                   f"spec {expected}; they must match in order")
    per_image: dict[Any, list[dict]] = {}
    for ann in doc["annotations"]:
        per_image.setdefault(ann.get("image_id"), []).append(ann)
    out: list[LabeledImage] = []
    for img in doc["images"]:
        try:
            width, height, file_name = int(img["width"]), int(img["height"]), str(img["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{json_path}: image {img.get('id')!r} lacks file_name/width/height") from None
        poses = []
        for ann in per_image.get(img.get("id"), []):
            pose = _coco_pose(ann, categories, width, height, json_path, include_without_keypoints)
            if pose is not None:
                poses.append(pose)
        out.append(LabeledImage(file_name, width, height, poses, images_dir / file_name))
    return out


def _coco_pose(ann: dict, categories: dict, width: int, height: int, source: Path, include_empty: bool) -> Pose | None:
    if ann.get("iscrowd"):
        return None
    where = f"{source}: annotation {ann.get('id')!r}"
    if ann.get("category_id") not in categories:
        raise DatasetError(f"{where} has unknown category_id {ann.get('category_id')!r}")
    name, count = categories[ann["category_id"]]
    raw = ann.get("keypoints") or [0] * (3 * count)
    bbox = ann.get("bbox")
    if not (isinstance(bbox, list) and len(bbox) == 4) or len(raw) != 3 * count:
        raise DatasetError(f"{where} needs bbox [x, y, w, h] and {count} keypoints [x, y, v]")
    if not include_empty and not any(raw[2::3]):
        return None
    x, y, w, h = (float(b) for b in bbox)
    keypoints = tuple(
        (raw[i] / width, raw[i + 1] / height, int(raw[i + 2])) if raw[i + 2] else (0.0, 0.0, 0)
        for i in range(0, len(raw), 3)
    )
    return Pose(name, (x / width, y / height, w / width, h / height), keypoints)


# --- Ultralytics YOLO-pose txt -------------------------------------------------------


def parse_yolo_pose_labels(text: str, class_names: Sequence[str], source: str = "<labels>") -> list[Pose]:
    """The poses of one YOLO-pose label file's text (`cls cx cy w h` + K × `x y v` per line)."""
    poses = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 5 or (len(fields) - 5) % 3:
            raise DatasetError(f"{source}:{n}: expected 'cls cx cy w h' and x y v per keypoint, got {len(fields)} numbers")
        try:
            cls = int(float(fields[0]))
            cx, cy, w, h, *kps = (float(f) for f in fields[1:])
        except ValueError:
            raise DatasetError(f"{source}:{n}: not all fields are numbers") from None
        if not 0 <= cls < len(class_names):
            raise DatasetError(f"{source}:{n}: class {cls} is not one of {list(class_names)}")
        keypoints = tuple(
            (kps[i], kps[i + 1], int(kps[i + 2])) if kps[i + 2] else (0.0, 0.0, 0) for i in range(0, len(kps), 3)
        )
        poses.append(Pose(class_names[cls], (cx - w / 2, cy - h / 2, w, h), keypoints))
    return poses


def read_yolo_pose(root: str | Path, split: str, class_names: Sequence[str]) -> list[LabeledImage]:
    """Every image of `root/images/<split>` with the poses of `root/labels/<split>/<stem>.txt`, sorted by name.

    An image without a label file is a negative (no poses).
    """
    root = Path(root)
    images = sorted(p for p in (root / "images" / split).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    out = []
    for path in images:
        label = root / "labels" / split / f"{path.stem}.txt"
        poses = parse_yolo_pose_labels(label.read_text(encoding="utf-8"), class_names, str(label)) if label.is_file() else []
        with Image.open(path) as im:
            width, height = im.size
        out.append(LabeledImage(path.name, width, height, poses, path))
    return out


# --- into Label Studio ---------------------------------------------------------------


def image_results(skeleton: Skeleton, image: LabeledImage) -> list[dict]:
    """The Label Studio result regions of one labeled image (for `annotations.create(result=...)`)."""
    return poses_to_results(skeleton, list(image.poses), image.width, image.height)


def to_label_studio_tasks(
    skeleton: Skeleton,
    images: Iterable[LabeledImage],
    *,
    first_id: int = 1,
    image_url: Callable[[LabeledImage], str] | None = None,
) -> list[dict]:
    """Label Studio tasks (as in a JSON export), one per image, each with one annotation of its poses.

    Task and annotation ids count from `first_id`; `data.image` is `image_url(image)`,
    by default the file name.
    """
    tasks = []
    for n, image in enumerate(images):
        tid = first_id + n
        tasks.append({
            "id": tid,
            "data": {"image": image_url(image) if image_url else image.file_name},
            "annotations": [{"id": tid, "result": image_results(skeleton, image), "was_cancelled": False,
                             "ground_truth": False}],
        })
    return tasks
