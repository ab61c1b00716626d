"""What a conversion reports: one `Problem` per region or task it could not use as it was,
and the `ConversionReport` of a whole export. Nothing is dropped silently.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

# What a problem left out of the dataset.
DROPPED_TASK = "task"  # the whole task (its image is not in the dataset)
DROPPED_OBJECT = "object"  # a box and its keypoints (the task is then left out: see convert_export)
DROPPED_KEYPOINT = "keypoint"  # one keypoint (written as missing, 0 0 0)
DROPPED_REGION = "region"  # a region that is not part of a pose (ignored)
DROPPED_NOTHING = "nothing"  # kept, but changed (a box clipped to the image) or doubtful


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
    """What `convert_export` did; `to_dict()` is JSON-ready.

    `keypoints` holds the labeled keypoints per Label Studio keypoint label, in the model's
    order (every label of the skeleton, 0 where none was labeled); `to_dict()` writes it
    as `keypoints_per_label` and their sum as `keypoints`.
    """

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

    @classmethod
    def from_dict(cls, data: dict[str, Any], out_dir: str = "", data_yaml: str = "") -> ConversionReport:
        """A report read back from `to_dict()`'s data (e.g. a dataset's manifest.json); task ids come back as text."""
        return cls(
            out_dir=data.get("out_dir", out_dir),
            data_yaml=data.get("data_yaml", data_yaml),
            tasks=data["tasks"],
            annotations_used=data["annotations_used"],
            images=dict(data["images"]),
            empty_images=data["empty_images"],
            objects=Counter(data["objects_per_class"]),
            keypoints=dict(data["keypoints_per_label"]),
            occluded_keypoints=data["occluded_keypoints"],
            problems=[Problem(**p) for p in data["problems"]],
            skipped_tasks=[Problem(**p) for p in data["skipped_tasks"]],
            task_images=dict(data["task_images"]),
            warnings=list(data["warnings"]),
        )
