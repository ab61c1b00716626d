"""What a pull produces, typed (the pull record, the dataset's manifest, the `PullResult`), and how it fails.

`PullRecord.to_record()` is the JSON of `data/<name>.pull.json` (git-tracked beside the
dataset's .dvc file: where this version came from); `DatasetManifest.to_dict()` is the
dataset's `manifest.json` (its content only, so an unchanged project gives an identical
dataset and DVC hash). The conversion's counts stay a typed `ConversionReport`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poseops.conversion.report import ConversionReport
from poseops.errors import PoseopsError


class NotReady(PoseopsError, RuntimeError):
    """The labels are not ready to train on; the message says why and what to do."""


class PullError(PoseopsError, RuntimeError):
    pass


class DvcPushError(PullError):
    """The dataset was built and recorded locally, but the DVC remote did not take it."""


_RECORD_FIELDS = ("dataset", "label_studio_url", "label_studio_project_id", "export_snapshot_id", "pulled_at", "tasks",
                  "labeled_tasks", "unlabeled_task_ids", "skipped_task_ids")


@dataclass(frozen=True)
class PullRecord:
    """Where a dataset version came from: the Label Studio project and export snapshot, and which tasks were used."""

    dataset: str
    label_studio_url: str
    label_studio_project_id: int
    export_snapshot_id: int
    pulled_at: str  # ISO 8601, UTC, to the second
    tasks: int  # in the export snapshot
    labeled_tasks: int
    unlabeled_task_ids: list[int]
    skipped_task_ids: list[int]  # every annotation cancelled (skipped) by the annotator
    dvc_md5: str | None = None  # the DVC hash of the version, once recorded with DVC
    # what the version was made of (`poseops.pull.inputs_sha256`), once it was recorded with DVC and pushed
    inputs_sha256: str | None = None

    def to_record(self) -> dict[str, Any]:
        """The JSON data of `<name>.pull.json`: these keys in this order, then `dvc_md5` and `inputs_sha256` once set."""
        record = {name: getattr(self, name) for name in _RECORD_FIELDS}
        for name in ("dvc_md5", "inputs_sha256"):
            if getattr(self, name) is not None:
                record[name] = getattr(self, name)
        return record

    @classmethod
    def from_record(cls, data: Any, where: str) -> PullRecord:
        """A record read back from its JSON; ValueError naming `where` and what is missing."""
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a pull record (a JSON object), found a {type(data).__name__}")
        missing = [name for name in _RECORD_FIELDS if name not in data]
        if missing:
            raise ValueError(f"{where}: not a pull record (no {', '.join(missing)}); delete it and pull again")
        return cls(**{name: data[name] for name in _RECORD_FIELDS}, dvc_md5=data.get("dvc_md5"),
                   inputs_sha256=data.get("inputs_sha256"))


@dataclass(frozen=True)
class DatasetManifest:
    """What a pulled dataset holds: written as `manifest.json` inside it.

    The per-keypoint counts are `conversion.keypoints` (Label Studio keypoint label →
    labeled keypoints, in the model's order); the whole report is `conversion`.
    """

    dataset: str
    label_studio_project_id: int
    labeled_tasks: int
    conversion: ConversionReport

    @property
    def train_images(self) -> int:
        return self.conversion.images["train"]

    @property
    def val_images(self) -> int:
        return self.conversion.images["val"]

    @classmethod
    def from_dict(cls, data: dict[str, Any], dataset_dir: Path) -> DatasetManifest:
        """The manifest read back from `manifest.json` in `dataset_dir`."""
        final = dataset_dir.resolve()
        conversion = ConversionReport.from_dict(data["conversion"], str(final), str(final / "data.yaml"))
        return cls(data["dataset"], data["label_studio_project_id"], data["labeled_tasks"], conversion)

    def to_dict(self) -> dict[str, Any]:
        """The JSON data of `manifest.json` (no machine-specific paths)."""
        return {
            "dataset": self.dataset,
            "label_studio_project_id": self.label_studio_project_id,
            "labeled_tasks": self.labeled_tasks,
            "train_images": self.train_images,
            "val_images": self.val_images,
            "conversion": report_dict(self.conversion),
        }


def report_dict(report: ConversionReport) -> dict[str, Any]:
    """The converter's report as JSON data, without the (temporary, machine-specific) paths."""
    d = report.to_dict()
    for key in ("out_dir", "data_yaml"):
        d.pop(key, None)
    return d


@dataclass
class PullResult:
    """A finished pull: the dataset, where it came from, and how it was versioned.

    `pull_record` is the record beside the dataset as it now stands (when the data did not
    change, the one of the earlier pull that made this version). `record` and `manifest`
    are their JSON data.
    """

    dataset_dir: Path
    dataset_manifest: DatasetManifest
    pull_record: PullRecord
    warnings: list[str] = field(default_factory=list)
    dvc_md5: str | None = None
    pushed: bool = False
    git_commit: str | None = None
    unchanged: bool = False  # the labels and images were those of the last version: nothing was rebuilt

    @property
    def record(self) -> dict[str, Any]:
        """The pull record's JSON data (`<name>.pull.json`)."""
        return self.pull_record.to_record()

    @property
    def manifest(self) -> dict[str, Any]:
        """The manifest's JSON data (`manifest.json`)."""
        return self.dataset_manifest.to_dict()


def pull_record_path(dataset_dir: Path) -> Path:
    """`data/<name>.pull.json`: where the current dataset version came from (git-tracked, beside its .dvc file)."""
    return dataset_dir.with_name(f"{dataset_dir.name}.pull.json")


def write_pull_record(path: Path, record: PullRecord) -> None:
    path.write_text(json.dumps(record.to_record(), indent=2) + "\n")
