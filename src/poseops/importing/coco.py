"""COCO keypoints JSON: images, persons (or any category with `keypoints`), boxes and keypoints.

The rules are those of `ultralytics.data.converter.convert_coco(use_keypoints=True)`, which
made coco8-pose: `iscrowd` annotations are left out (a crowd region is not one object);
objects without any labeled keypoint are left out unless `include_without_keypoints`
(COCO's keypoint evaluation ignores them); keypoints with v = 0 are not labeled. Every
object left out is counted in the set's `skipped`, with the reason.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from poseops.importing.labeled import (
    DatasetError,
    LabeledImage,
    LabeledSet,
    OutsideImage,
    Skip,
    box,
    image_size,
    keypoint,
)
from poseops.skeleton import Skeleton

FORMAT = "coco"


def default_images_dir(json_path: Path) -> Path:
    """`images/` beside the `annotations/` folder (COCO's layout), else `images/` beside the file, else its folder."""
    for candidate in (json_path.parent.parent / "images", json_path.parent / "images"):
        if candidate.is_dir():
            return candidate
    return json_path.parent


def read_coco_set(json_path: str | Path, images_dir: str | Path | None = None, *,
                  include_without_keypoints: bool = False) -> LabeledSet:
    """Every image of a COCO keypoints file whose file exists and whose labels lie on it; the rest in `skipped`.

    Each image's size is read from its file and must match the JSON's `width`/`height`.
    """
    json_path = Path(json_path)
    images_dir = Path(images_dir) if images_dir is not None else default_images_dir(json_path)
    return _read(json_path, images_dir, include_without_keypoints, check_files=True)


def read_coco_keypoints(
    json_path: str | Path,
    images_dir: str | Path | None = None,
    *,
    skeleton: Skeleton | None = None,
    include_without_keypoints: bool = False,
) -> list[LabeledImage]:
    """Every image of a COCO keypoints file with its poses, in the file's image order (files not opened).

    `images_dir` defaults to `images/` beside the `annotations/` folder. With a
    `skeleton`, each keypoint category must have a class of the same name with the
    same keypoint names in the same order.
    """
    json_path = Path(json_path)
    images_dir = Path(images_dir) if images_dir is not None else json_path.parent.parent / "images"
    labeled = _read(json_path, images_dir, include_without_keypoints, check_files=False)
    if skeleton is not None:
        for name, names in labeled.schema.items():
            try:
                expected = skeleton.get(name).keypoint_names
            except KeyError as e:
                raise DatasetError(f"{json_path}: category {name!r}: {e.args[0]}") from None
            if list(names) != expected:
                raise DatasetError(f"{json_path}: category {name!r} has keypoints {list(names)}, the skeleton "
                                   f"spec {expected}; they must match in order")
    bad = [s for s in labeled.skipped if s.reason == "outside_image"]
    if bad:
        raise DatasetError(f"{json_path}: {bad[0].line()}")
    return labeled.images


def _load(json_path: Path) -> dict:
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise DatasetError(f"{json_path}: cannot be read as JSON ({e})") from None
    if not isinstance(doc, dict) or not all(isinstance(doc.get(k), list) for k in ("images", "annotations", "categories")):
        raise DatasetError(f"{json_path}: expected a COCO object with 'images', 'annotations' and 'categories' lists")
    return doc


def _read(json_path: Path, images_dir: Path, include_empty: bool, check_files: bool) -> LabeledSet:
    doc = _load(json_path)
    categories: dict[Any, tuple[str, int]] = {}
    schema: dict[str, tuple[str, ...]] = {}
    for cat in doc["categories"]:
        names = (cat.get("keypoints") or []) if isinstance(cat, dict) else []
        if not isinstance(cat, dict) or not isinstance(cat.get("name"), str) or not isinstance(names, list) \
                or not all(isinstance(n, str) for n in names):
            raise DatasetError(f"{json_path}: category {cat!r} needs a 'name' and a list of keypoint names")
        categories[cat.get("id")] = (cat["name"], len(names))
        if names:
            schema[cat["name"]] = tuple(names)
    labeled = LabeledSet(FORMAT, schema)
    per_image: dict[Any, list[dict]] = {}
    for ann in doc["annotations"]:
        if not isinstance(ann, dict):
            raise DatasetError(f"{json_path}: annotation {ann!r} is not an object")
        per_image.setdefault(ann.get("image_id"), []).append(ann)
    for img in doc["images"]:
        try:
            width, height, file_name = int(img["width"]), int(img["height"]), str(img["file_name"])
        except (KeyError, TypeError, ValueError):
            raise DatasetError(f"{json_path}: image {img.get('id')!r} lacks file_name/width/height") from None
        path = images_dir / file_name
        if check_files:
            path, problem = _image_file(images_dir, file_name, width, height)
            if problem is not None:
                labeled.skipped.append(problem)
                continue
        try:
            poses = _poses(per_image.get(img.get("id"), []), categories, width, height, json_path, include_empty,
                           file_name, labeled.skipped)
        except OutsideImage as e:
            labeled.skipped.append(Skip(file_name, "outside_image", f"{e}; fix the label or the image, then import again"))
            continue
        labeled.images.append(LabeledImage(file_name, width, height, poses, path))
    return labeled


def _image_file(images_dir: Path, file_name: str, width: int, height: int) -> tuple[Path, Skip | None]:
    """The image's file under `images_dir` (by its name, else its base name), or the Skip saying why not."""
    root = images_dir.resolve()
    for candidate in (images_dir / file_name, images_dir / Path(file_name).name):
        resolved = candidate.resolve()
        if root not in resolved.parents:
            continue  # '..' or an absolute name: nothing outside the images folder is read
        if resolved.is_file():
            try:
                size = image_size(resolved)
            except ValueError as e:
                return resolved, Skip(file_name, "unreadable_image", f"{resolved}: {e}")
            if size != (width, height):
                return resolved, Skip(file_name, "size_mismatch", f"the JSON says {width}x{height}, the file {resolved} "
                                      f"is {size[0]}x{size[1]}: the labels would land in the wrong place")
            return resolved, None
    return images_dir / file_name, Skip(file_name, "missing_image", f"no such file in {images_dir} "
                                        "(give the images' folder with --images)")


def _poses(anns: list[dict], categories: dict, width: int, height: int, source: Path, include_empty: bool,
           file_name: str, skipped: list[Skip]) -> list:
    from poseops.conversion.poses import Pose

    poses = []
    for ann in anns:
        where = f"annotation {ann.get('id')!r}"
        if ann.get("category_id") not in categories:
            raise DatasetError(f"{source}: {where} has unknown category_id {ann.get('category_id')!r}")
        name, count = categories[ann["category_id"]]
        if ann.get("iscrowd"):
            skipped.append(Skip(file_name, "crowd", f"{where} is a crowd region (iscrowd), not one {name}: left out"))
            continue
        if not count:
            skipped.append(Skip(file_name, "no_keypoints_category", f"{where}: category {name!r} has no keypoints"))
            continue
        raw = ann.get("keypoints") or [0] * (3 * count)
        bbox = ann.get("bbox")
        if not (isinstance(bbox, list) and len(bbox) == 4) or len(raw) != 3 * count:
            raise DatasetError(f"{source}: {where} needs bbox [x, y, w, h] and {count} keypoints [x, y, v]")
        try:
            raw = [float(r) for r in raw]
            bbox = [float(b) for b in bbox]
        except (TypeError, ValueError):
            raise DatasetError(f"{source}: {where} holds a bbox or keypoint value that is not a number") from None
        if not include_empty and not any(raw[2::3]):
            skipped.append(Skip(file_name, "no_labeled_keypoint", f"{where} ({name}) has no labeled keypoint: left out, "
                                "as COCO's keypoint evaluation does"))
            continue
        keypoints = tuple(keypoint(raw[i], raw[i + 1], _visibility(raw[i + 2], source, where), width, height,
                                   f"{where} keypoint {i // 3 + 1}") for i in range(0, len(raw), 3))
        poses.append(Pose(name, box(*bbox, width, height, f"{where} bbox"), keypoints))
    return poses


def _visibility(v: float, source: Path, where: str) -> int:
    if v not in (0, 1, 2):
        raise DatasetError(f"{source}: {where} has keypoint visibility {v!r}; COCO's are 0, 1 and 2")
    return int(v)
