"""Ultralytics YOLO-pose folders: `data.yaml`, images, and one `cls cx cy w h` + keypoints line per object.

`kpt_shape: [K, 3]` gives each keypoint as `x y v` (v = 0 not labeled, 1 occluded, 2 visible);
`[K, 2]` as `x y` only, every such keypoint labeled and visible, except a point at (0, 0) or
at a negative coordinate, which is how converters and Ultralytics' loader write a missing
one. Each split of `data.yaml` (`train`, `val`, `test`: a folder, a `.txt` list of images,
or a list of those) is read the way Ultralytics reads it: images under the folder,
recursively, and each image's labels at its path with the last `images` folder replaced by
`labels` and the suffix by `.txt`. Both layouts Ultralytics takes work that way:
`images/<split>` + `labels/<split>`, and `<split>/images` + `<split>/labels`. An image
without a label file is a negative (nothing to label in it), as in Ultralytics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import yaml

from poseops.constants import IMAGE_SUFFIXES
from poseops.conversion.poses import MISSING, Pose
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

FORMAT = "yolo"
SPLITS = ("train", "val", "test")


def parse_yolo_pose_labels(text: str, class_names: Sequence[str], source: str = "<labels>",
                           kpt_shape: tuple[int, int] | None = None) -> list[Pose]:
    """The poses of one YOLO-pose label file's text (`cls cx cy w h` + K keypoints per line).

    `kpt_shape` is data.yaml's `[K, 2]` or `[K, 3]`; without it, each keypoint is `x y v`
    (what poseops writes). A line of another length, a value that is not a number or lies
    outside the image raises DatasetError naming the file and line.
    """
    poses = []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        where = f"{source}:{n}"
        dims = _dims(len(fields), kpt_shape, where)
        try:
            cls = int(float(fields[0]))
            cx, cy, w, h, *kps = (float(f) for f in fields[1:])
        except ValueError:
            raise DatasetError(f"{where}: not all fields are numbers") from None
        if not 0 <= cls < len(class_names):
            raise DatasetError(f"{where}: class {cls} is not one of {list(class_names)}")
        try:
            keypoints = tuple(_keypoint(kps[i:i + dims], dims, f"{where}: keypoint {i // dims + 1}")
                              for i in range(0, len(kps), dims))
            poses.append(Pose(class_names[cls], box(cx - w / 2, cy - h / 2, w, h, 1.0, 1.0, f"{where}: box"), keypoints))
        except OutsideImage as e:
            raise DatasetError(str(e)) from None
    return poses


def _dims(count: int, kpt_shape: tuple[int, int] | None, where: str) -> int:
    if kpt_shape is None:
        if count < 5 or (count - 5) % 3:
            raise DatasetError(f"{where}: expected 'cls cx cy w h' and x y v per keypoint, got {count} numbers")
        return 3
    k, dims = kpt_shape
    if count != 5 + k * dims:
        raise DatasetError(f"{where}: expected 'cls cx cy w h' and {k} keypoints of {dims} values "
                           f"(kpt_shape [{k}, {dims}]): {5 + k * dims} numbers, got {count}")
    return dims


def _keypoint(values: list[float], dims: int, what: str):
    x, y = values[0], values[1]
    if dims == 2:
        v = 0 if (x == 0 and y == 0) or x < 0 or y < 0 else 2
    else:
        if values[2] not in (0, 1, 2):
            raise OutsideImage(f"{what} has visibility {values[2]:g}; use 0 (not labeled), 1 (occluded) or 2 (visible)")
        v = int(values[2])
    if v and not (math.isfinite(x) and math.isfinite(y)):
        raise OutsideImage(f"{what} has x/y that are not numbers")
    return keypoint(x, y, v, 1.0, 1.0, what) if v else MISSING


def label_path(image: Path) -> Path:
    """Ultralytics' rule: the last `images` folder of the path becomes `labels`, the suffix `.txt`."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def split_images(root: Path, split: str) -> list[Path]:
    """The images of `root/images/<split>` or `root/<split>/images` (searched recursively), sorted."""
    for folder in (root / "images" / split, root / split / "images", root / split):
        if folder.is_dir():
            return sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    raise DatasetError(f"{root}: no images folder for split {split!r} (looked for images/{split}, {split}/images "
                       f"and {split}/)")


def read_yolo_pose(root: str | Path, split: str, class_names: Sequence[str],
                   kpt_shape: tuple[int, int] | None = None) -> list[LabeledImage]:
    """Every image of one split (`images/<split>` or `<split>/images`) with its poses, sorted by path.

    `kpt_shape` defaults to `root/data.yaml`'s; without either, each file's line lengths must
    tell 2 from 3 values per keypoint (an ambiguous length is refused). An image without a
    label file is a negative (no poses).
    """
    root = Path(root)
    if kpt_shape is None and (root / "data.yaml").is_file():
        kpt_shape = _kpt_shape(_load_yaml(root / "data.yaml"), root / "data.yaml")
    out = []
    for path in split_images(root, split):
        label = label_path(path)
        text = label.read_text(encoding="utf-8") if label.is_file() else ""
        shape = kpt_shape or _inferred_shape(text, str(label))
        poses = parse_yolo_pose_labels(text, class_names, str(label), shape)
        width, height = image_size(path)
        out.append(LabeledImage(path.name, width, height, poses, path))
    return out


def _inferred_shape(text: str, source: str) -> tuple[int, int] | None:
    counts = {len(line.split()) - 5 for line in text.splitlines() if line.split()}
    if not counts:
        return None
    if len(counts) > 1:
        raise DatasetError(f"{source}: lines of different lengths; every object has the same keypoints")
    (count,) = counts
    fits = [d for d in (2, 3) if count >= 0 and count % d == 0]
    if len(fits) != 1:
        raise DatasetError(f"{source}: {count} keypoint values per line could be {count // 2} keypoints of x y or "
                           f"{count // 3} of x y v: give kpt_shape (data.yaml's) to read it"
                           if len(fits) == 2 else f"{source}: {count} keypoint values per line fit neither x y nor x y v")
    return count // fits[0], fits[0]


# --- a whole folder (data.yaml) -------------------------------------------------------------------


def find_data_yaml(path: Path) -> Path:
    """The dataset's YAML: `path` itself, or `data.yaml` in the folder, or the folder's one YAML with `kpt_shape`."""
    if path.is_file():
        return path
    if not path.is_dir():
        raise DatasetError(f"{path}: no such file or folder")
    if (path / "data.yaml").is_file():
        return path / "data.yaml"
    found = [p for p in sorted(path.glob("*.y*ml")) if "kpt_shape" in p.read_text(encoding="utf-8", errors="replace")]
    if len(found) != 1:
        raise DatasetError(f"{path}: no data.yaml (the Ultralytics dataset file with names and kpt_shape) "
                           + ("" if not found else f"and several candidates ({', '.join(p.name for p in found)}); ")
                           + "give the YAML file itself")
    return found[0]


def read_yolo_set(path: str | Path) -> LabeledSet:
    """Every split of an Ultralytics YOLO-pose dataset (its folder or its data.yaml); unusable images in `skipped`."""
    yaml_path = find_data_yaml(Path(path))
    doc = _load_yaml(yaml_path)
    shape = _kpt_shape(doc, yaml_path)
    names = _names(doc, yaml_path)
    kpt_names = _kpt_names(doc, names, shape[0], yaml_path)
    labeled = LabeledSet(FORMAT, {name: kpt_names.get(i, (None,) * shape[0]) for i, name in enumerate(names)})
    root = _root(doc, yaml_path)
    images: list[Path] = []
    for split in SPLITS:
        for entry in _entries(doc.get(split)):
            images += _images_of(root, entry, split, yaml_path)
    if not images:
        raise DatasetError(f"{yaml_path}: its splits ({', '.join(s for s in SPLITS if doc.get(s))}) hold no image "
                           f"under {root}")
    labels_seen = set()
    for image in images:
        label = label_path(image)
        labels_seen.add(label.resolve())
        if not image.is_file():
            labeled.skipped.append(Skip(str(image), "missing_image", "listed in the split, but no such file"))
            continue
        try:
            text = label.read_text(encoding="utf-8") if label.is_file() else ""
            poses = parse_yolo_pose_labels(text, names, str(label), shape)
        except (DatasetError, UnicodeDecodeError) as e:
            labeled.skipped.append(Skip(str(image), "bad_labels", f"{e}; fix the line, then import again"))
            continue
        try:
            width, height = image_size(image)
        except ValueError as e:
            labeled.skipped.append(Skip(str(image), "unreadable_image", str(e)))
            continue
        labeled.images.append(LabeledImage(image.name, width, height, poses, image))
    for orphan in _orphan_labels(images, labels_seen):
        labeled.skipped.append(Skip(str(orphan), "missing_image", "a label file without its image: not imported"))
    return labeled


def _load_yaml(path: Path) -> dict:
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise DatasetError(f"{path}: cannot be read as YAML ({e})") from None
    if not isinstance(doc, dict):
        raise DatasetError(f"{path}: expected a mapping with names, kpt_shape and the splits")
    return doc


def _kpt_shape(doc: dict, source: Path) -> tuple[int, int]:
    shape = doc.get("kpt_shape")
    if not (isinstance(shape, list) and len(shape) == 2 and all(type(v) is int for v in shape)
            and shape[0] > 0 and shape[1] in (2, 3)):
        raise DatasetError(f"{source}: kpt_shape {shape!r} must be [K, 2] or [K, 3] (K keypoints of x y or x y v): "
                           "a pose dataset's data.yaml has it")
    return shape[0], shape[1]


def _names(doc: dict, source: Path) -> list[str]:
    names = doc.get("names")
    if isinstance(names, dict) and sorted(names) == list(range(len(names))):
        names = [names[i] for i in range(len(names))]
    if not (isinstance(names, list) and names and all(isinstance(n, str) for n in names)):
        raise DatasetError(f"{source}: names {names!r} must list the class names (or map 0, 1, ... to them)")
    return names


def _kpt_names(doc: dict, names: list[str], count: int, source: Path) -> dict[int, tuple[str, ...]]:
    """Keypoint names per class index (`kpt_names`: per class, or one list for all); {} when data.yaml has none."""
    raw = doc.get("kpt_names")
    if raw is None:
        return {}
    per_class = raw if isinstance(raw, dict) else dict.fromkeys(range(len(names)), raw)
    out = {}
    for i, kps in per_class.items():
        if not (type(i) is int and 0 <= i < len(names) and isinstance(kps, list) and len(kps) == count
                and all(isinstance(k, str) for k in kps)):
            raise DatasetError(f"{source}: kpt_names of class {i!r} must list {count} names (kpt_shape)")
        out[i] = tuple(kps)
    return out


def _root(doc: dict, yaml_path: Path) -> Path:
    """The folder the splits are relative to: data.yaml's `path` where that folder exists, else data.yaml's folder."""
    given = doc.get("path")
    if isinstance(given, str) and given:
        for candidate in (Path(given), yaml_path.parent / given):
            if candidate.is_dir():
                return candidate
    return yaml_path.parent


def _entries(value) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def _images_of(root: Path, entry: str, split: str, source: Path) -> list[Path]:
    path = Path(entry) if Path(entry).is_absolute() else root / entry
    if path.is_file() and path.suffix == ".txt":
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        return [Path(ln) if Path(ln).is_absolute() else root / ln for ln in lines]
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    for other in (root / "images" / split, root / split / "images"):  # the other layout than data.yaml says
        if other.is_dir():
            return sorted(p for p in other.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    raise DatasetError(f"{source}: {split}: {entry!r} is neither a folder nor a .txt list of images under {root}")


def _orphan_labels(images: list[Path], seen: set[Path]) -> list[Path]:
    """Label files in the label folders used that no image has (their objects would be lost)."""
    folders = {label_path(image).parent for image in images}
    return sorted(p for folder in folders if folder.is_dir() for p in folder.glob("*.txt") if p.resolve() not in seen)
