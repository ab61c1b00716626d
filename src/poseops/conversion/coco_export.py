"""A YOLO-pose dataset written also as COCO keypoints JSON, so its labels can leave poseops
(MMPose, CVAT, FiftyOne, pycocotools' evaluation) without a converter of their own.

The COCO files sit in the dataset folder beside the YOLO files, in COCO's own layout, so a
pulled dataset's DVC version holds both:

    data/NAME/
      images/{train,val}/<sha256[:16]>.<type>      (the images both formats use)
      labels/{train,val}/<sha256[:16]>.txt         (YOLO-pose)
      annotations/person_keypoints_{train,val}.json (COCO keypoints; COCO's name for the task,
                                                    whatever the classes are)

`file_name` is the image's name in `images/<split>/`, the folder to give the reading tool
(MMPose's `data_prefix`, FiftyOne's `data_path`; CVAT and Datumaro find it by that layout).
Coordinates are pixels of the image as shown (EXIF orientation applied, as in Label Studio
and Ultralytics); keypoints `[x, y, v]` with COCO's visibility (0 not labeled and `0, 0`,
1 occluded, 2 visible); `num_keypoints` counts the labeled ones; `area` is the box's (there
is no segmentation); categories carry the keypoint names, the 1-based `skeleton` edges and,
when the spec sets any, the per-keypoint OKS `sigmas`. The files depend on the labels and
images only (no date, no path), so an unchanged dataset gives the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poseops.constants import IMAGE_SUFFIXES
from poseops.conversion.poses import Pose
from poseops.errors import PoseopsError
from poseops.skeleton import Skeleton

COCO_DIR = "annotations"
SPLITS = ("train", "val")
PIXEL_DECIMALS = 6  # pixels written with 6 decimals: a round trip stays within 1e-6 of the image


class CocoExportError(PoseopsError, ValueError):
    """A dataset folder that cannot be written as COCO; the message names the file."""


def coco_file(dataset_dir: str | Path, split: str) -> Path:
    """Where the COCO keypoints file of one split of a dataset lives."""
    return Path(dataset_dir) / COCO_DIR / f"person_keypoints_{split}.json"


@dataclass(frozen=True)
class CocoExport:
    """What `write_coco_export` wrote: one file per split, with its counts."""

    files: dict[str, Path]  # split → JSON file
    images: dict[str, int]  # split → images (negatives included)
    annotations: dict[str, int]  # split → objects
    keypoints: dict[str, int]  # split → labeled keypoints


def coco_categories(skeleton: Skeleton) -> list[dict[str, Any]]:
    """One COCO category per class (id = class index + 1): keypoint names, 1-based skeleton edges, sigmas if set."""
    categories = []
    for index, cls in enumerate(skeleton.classes):
        category: dict[str, Any] = {
            "id": index + 1,
            "name": cls.name,
            "supercategory": cls.name,
            "keypoints": cls.keypoint_names,
            "skeleton": [[cls.index(e.a) + 1, cls.index(e.b) + 1] for e in cls.connections],
        }
        if any(k.sigma is not None for k in cls.keypoints):
            category["sigmas"] = cls.oks_sigmas
        categories.append(category)
    return categories


def coco_annotation(pose: Pose, category_id: int, width: int, height: int, ann_id: int, image_id: int) -> dict[str, Any]:
    """One COCO keypoints annotation of a normalized pose in an image of `width` x `height` pixels."""
    x, y, w, h = pose.box
    bbox = [_px(x * width), _px(y * height), _px(w * width), _px(h * height)]
    keypoints: list[float | int] = []
    for kx, ky, v in pose.keypoints:
        keypoints += [_px(kx * width), _px(ky * height), int(v)] if v else [0, 0, 0]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "bbox": bbox,
        "area": _px(bbox[2] * bbox[3]),
        "iscrowd": 0,
        "keypoints": keypoints,
        "num_keypoints": sum(1 for k in pose.keypoints if k[2]),
    }


def coco_document(skeleton: Skeleton, dataset_dir: str | Path, split: str) -> dict[str, Any]:
    """The COCO keypoints document of one split of a YOLO-pose dataset folder (images sorted by name)."""
    from poseops.coco import DatasetError, parse_yolo_pose_labels

    root = Path(dataset_dir)
    class_ids = {name: i + 1 for i, name in enumerate(skeleton.class_names)}
    images_dir = root / "images" / split
    paths = sorted(p for p in images_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if images_dir.is_dir() else []
    images, annotations = [], []
    for image_id, path in enumerate(paths, 1):
        width, height = _shown_size(path)
        images.append({"id": image_id, "file_name": path.name, "width": width, "height": height})
        label = root / "labels" / split / f"{path.stem}.txt"
        try:
            poses = parse_yolo_pose_labels(label.read_text(encoding="utf-8"), skeleton.class_names, str(label)) \
                if label.is_file() else []
        except DatasetError as e:
            raise CocoExportError(f"{e}; the dataset's labels do not match the skeleton spec "
                                  f"{skeleton.source}") from None
        for pose in poses:
            if len(pose.keypoints) != skeleton.keypoint_count:
                raise CocoExportError(f"{label}: {len(pose.keypoints)} keypoints per object, the skeleton spec "
                                      f"{skeleton.source} has {skeleton.keypoint_count}")
            annotations.append(coco_annotation(pose, class_ids[pose.class_name], width, height,
                                               len(annotations) + 1, image_id))
    return {
        "info": {"description": f"poseops dataset, {split} split (COCO keypoints)"},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": coco_categories(skeleton),
    }


def write_coco_export(skeleton: Skeleton, dataset_dir: str | Path) -> CocoExport:
    """Write `annotations/person_keypoints_<split>.json` for each split of a YOLO-pose dataset folder.

    Reads the folder's images and label files (as the pull and `poseops convert` wrote them);
    an existing `annotations/` folder's files of the same names are replaced. Every split is read
    before anything is written: a CocoExportError (an image whose size cannot be read, labels
    that do not fit the spec) leaves no file half written.
    """
    root = Path(dataset_dir)
    docs = {split: coco_document(skeleton, root, split) for split in SPLITS}
    (root / COCO_DIR).mkdir(exist_ok=True)
    files = {}
    for split, doc in docs.items():
        files[split] = coco_file(root, split)
        files[split].write_text(json.dumps(doc, separators=(",", ":")) + "\n", encoding="utf-8")
    return CocoExport(files, {s: len(d["images"]) for s, d in docs.items()},
                      {s: len(d["annotations"]) for s, d in docs.items()},
                      {s: sum(a["num_keypoints"] for a in d["annotations"]) for s, d in docs.items()})


def _px(value: float) -> float:
    return round(value, PIXEL_DECIMALS) + 0.0  # + 0.0: never -0.0


def _shown_size(path: Path) -> tuple[int, int]:
    """Width and height of the image as shown (EXIF orientation applied): the frame the labels are in."""
    from poseops.datasets import image_size

    try:
        return image_size(path)
    except (OSError, ValueError) as e:
        raise CocoExportError(f"{path}: cannot read the image's size ({e}); replace it with a readable image "
                              "(or leave its task out) and convert again") from None
