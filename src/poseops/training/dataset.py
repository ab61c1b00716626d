"""The prepare stage: check the dataset against the skeleton spec, write the data.yaml to train on
and dataset.json (DVC hash, Label Studio manifest, per-split and per-keypoint counts)."""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from poseops.constants import IMAGE_SUFFIXES, SECRET_HINTS
from poseops.params import Params
from poseops.skeleton import Skeleton, load_skeleton
from poseops.tracking.lineage import dvc_hash
from poseops.training.layout import Layout, TrainingError

DATASET_FILE = "dataset.json"


@dataclass(frozen=True)
class SplitStats:
    images: int
    labels: int  # images with a label file (the others are background images)
    instances: int
    keypoints_labeled: dict[str, int]  # per keypoint of the first class: instances where it is visible


@dataclass(frozen=True)
class DatasetInfo:
    """What dataset.json records: the dataset a training reads, with its lineage and counts."""

    name: str
    dir: str
    dvc_hash: str
    manifest: dict[str, Any] | None  # the dataset's manifest.json (counts, problems), secrets redacted
    pull: dict[str, Any] | None  # the pull record beside it (Label Studio project and snapshot), secrets redacted
    splits: dict[str, SplitStats]
    kpt_shape: list[int]
    skeleton: dict[str, str]  # path and sha256 of the spec, and its fingerprint (skeleton_fingerprint)
    kpt_oks_sigmas: list[float] | None = None  # the OKS sigmas data.yaml carries (the spec's)

    @property
    def source(self) -> dict[str, Any]:
        """The manifest and pull record as one mapping (the pull record wins)."""
        return {**(self.manifest or {}), **(self.pull or {})}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DatasetInfo:
        splits = {name: SplitStats(**stats) for name, stats in (data.get("splits") or {}).items()}
        return cls(**{**data, "splits": splits})


def prepare(params: Params, root: Path = Path("."), layout: Layout = Layout()) -> DatasetInfo:
    """Check the dataset against the skeleton spec; write `data.yaml` and `dataset.json` to `layout.prepared`."""
    root = root.resolve()
    dataset_dir = (root / params.dataset.dir).resolve()
    source_yaml = dataset_dir / "data.yaml"
    if not source_yaml.is_file():
        raise TrainingError(f"{source_yaml} is missing: pull the dataset first (its directory needs data.yaml, "
                            "images/{train,val} and labels/{train,val}), or set dataset.dir in params.yaml")
    skeleton_path = root / params.skeleton
    skeleton = load_skeleton(skeleton_path)
    if warning := flip_warning(skeleton, params.train.augment.fliplr):
        print(f"WARNING: {warning}", file=sys.stderr, flush=True)
    data = yaml.safe_load(source_yaml.read_text(encoding="utf-8")) or {}
    kpt_shape = _check_data_yaml(data, skeleton, source_yaml)

    splits: dict[str, SplitStats] = {}
    for split, minimum in (("train", params.prepare.min_train_images), ("val", params.prepare.min_val_images)):
        splits[split] = _split_stats(dataset_dir, data.get(split), skeleton, kpt_shape, split, source_yaml)
        if splits[split].images < minimum:
            raise TrainingError(f"{dataset_dir}: the {split} split has {splits[split].images} images, fewer than "
                                f"prepare.min_{split}_images={minimum}: label more images or lower the minimum")
    if not any(stats.instances for stats in splits.values()):
        raise TrainingError(f"{dataset_dir}: no label file holds an object ({splits['train'].images} train and "
                            f"{splits['val'].images} val images, all background): a model cannot learn from that. "
                            "Label the objects (or, for points labeled without boxes, set `box: derived` for their "
                            "class in the skeleton spec) and pull again")

    out = (root / layout.prepared).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepared = {
        "path": os.path.relpath(dataset_dir, out),  # relative to this file: portable, resolved before training
        "train": data["train"],
        "val": data["val"],
        **({"test": data["test"]} if data.get("test") else {}),
        "names": dict(enumerate(skeleton.class_names)),
        "kpt_shape": kpt_shape,
        "flip_idx": skeleton.flip_idx,
        "kpt_names": {i: cls.keypoint_names for i, cls in enumerate(skeleton.classes)},
        "kpt_oks_sigmas": skeleton.oks_sigmas,  # from the spec, always: the loss and pose mAP use them
    }
    (out / "data.yaml").write_text(yaml.safe_dump(prepared, sort_keys=False), encoding="utf-8")

    info = DatasetInfo(
        name=params.dataset.name,
        dir=params.dataset.dir,
        dvc_hash=dvc_hash(dataset_dir),
        manifest=_read_json(dataset_dir / "manifest.json"),  # inside the dataset: counts, problems
        pull=_read_json(dataset_dir.with_name(f"{dataset_dir.name}.pull.json")),  # beside it: Label Studio snapshot
        splits=splits,
        kpt_shape=kpt_shape,
        skeleton={"path": params.skeleton, "sha256": hashlib.sha256(skeleton_path.read_bytes()).hexdigest(),
                  "fingerprint": skeleton_fingerprint(skeleton)},
        kpt_oks_sigmas=skeleton.oks_sigmas,
    )
    (out / DATASET_FILE).write_text(json.dumps(info.to_dict(), indent=2) + "\n", encoding="utf-8")
    return info


def flip_warning(skeleton: Skeleton, fliplr: float) -> str | None:
    """The warning for keypoints named left/right that no flip pair mirrors while training flips images, else None."""
    unpaired = {c.name: c.unpaired_sided for c in skeleton.classes if c.unpaired_sided}
    if fliplr <= 0 or not unpaired:
        return None
    listed = "; ".join(f"{cls}: {', '.join(names)}" for cls, names in unpaired.items())
    return (f"{skeleton.source}: keypoints named left/right are in no flip pair ({listed}) while "
            f"train.augment.fliplr is {fliplr:g}: a mirrored image keeps their labels, so the model learns left "
            "as right. List them under flip_pairs in the spec, or set train.augment.fliplr: 0")


def skeleton_fingerprint(skeleton: Skeleton) -> str:
    """What makes two models' outputs the same kind: the classes and their keypoints in order, and the flip pairs.

    Colours, template positions and sigmas are left out: they change no model output.
    """
    blob = json.dumps({"classes": [[c.name, c.keypoint_names] for c in skeleton.classes],
                       "flip_idx": skeleton.flip_idx}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_dataset_info(layout: Layout) -> DatasetInfo:
    """The dataset.json the prepare stage wrote; an error when it has not run."""
    path = layout.prepared / DATASET_FILE
    if not path.is_file():
        raise TrainingError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
    return DatasetInfo.from_dict(json.loads(path.read_text(encoding="utf-8")))


def _read_json(path: Path) -> Any:
    return redact(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def redact(value: Any) -> Any:
    """`value` with the values of secret-looking keys (tokens, passwords) replaced by ***, at any depth."""
    if isinstance(value, dict):
        return {k: ("***" if any(h in str(k).lower() for h in SECRET_HINTS) else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    return value


def _check_data_yaml(data: dict, skeleton: Skeleton, where: Path) -> list[int]:
    for key in ("train", "val", "kpt_shape"):
        if not data.get(key):
            raise TrainingError(f"{where}: '{key}' is missing; a YOLO-pose data.yaml needs train, val, names, kpt_shape")
    kpt_shape = data["kpt_shape"]
    if not (isinstance(kpt_shape, list) and len(kpt_shape) == 2 and kpt_shape[1] in (2, 3)):
        raise TrainingError(f"{where}: kpt_shape {kpt_shape!r} must be [keypoints, 2 or 3]")
    if kpt_shape[0] != skeleton.keypoint_count:
        raise TrainingError(f"{where}: kpt_shape {kpt_shape} has {kpt_shape[0]} keypoints but the skeleton spec "
                            f"{skeleton.source} has {skeleton.keypoint_count}: set `skeleton` in params.yaml to the spec "
                            "the dataset was made with, or pull the dataset again with this spec")
    names = data.get("names")
    names = list(names.values()) if isinstance(names, dict) else list(names or [])
    if names and names != skeleton.class_names:
        raise TrainingError(f"{where}: class names {names} differ from the skeleton spec's {skeleton.class_names}: "
                            "use the spec the dataset was made with")
    if data.get("flip_idx") is not None and list(data["flip_idx"]) != skeleton.flip_idx:
        raise TrainingError(f"{where}: flip_idx {data['flip_idx']} differs from the skeleton spec's flip pairs "
                            f"{skeleton.flip_idx}: use the spec the dataset was made with")
    return [int(kpt_shape[0]), int(kpt_shape[1])]


def _split_stats(dataset_dir: Path, entry: Any, skeleton: Skeleton, kpt_shape: list[int], split: str,
                 where: Path) -> SplitStats:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for e in entries:
        folder = dataset_dir / str(e)
        if not folder.is_dir():
            raise TrainingError(f"{where}: {split} points to {folder}, which is not a folder of images")
        images += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    k, dims = kpt_shape
    visible = [0] * k
    labels = instances = 0
    for image in images:
        label = _label_path(image)
        if not label.is_file():
            continue  # an image without a label file is a background image
        labels += 1
        for n, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
            values = line.split()
            if not values:
                continue
            if len(values) != 5 + k * dims:
                raise TrainingError(f"{label}:{n}: {len(values)} numbers, expected {5 + k * dims} "
                                    f"(class, box x y w h, {k} keypoints × {dims}): re-export the dataset")
            instances += 1
            for i in range(k):
                x, y = float(values[5 + i * dims]), float(values[6 + i * dims])
                v = float(values[7 + i * dims]) if dims == 3 else float(x > 0 or y > 0)
                visible[i] += v > 0
    names = skeleton.classes[0].keypoint_names
    return SplitStats(images=len(images), labels=labels, instances=instances,
                      keypoints_labeled=dict(zip(names, visible, strict=True)))


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
