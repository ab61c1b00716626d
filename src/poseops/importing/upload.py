"""`poseops dataset import`: existing labels into a dataset's Label Studio project, as annotations.

The labels are read (`poseops.importing.coco`, `.yolo`, `.dlc`), mapped onto the dataset's
skeleton by name (`poseops.importing.names`), and uploaded with their images the way
`poseops dataset upload` uploads images (`poseops.datasets.upload_images`): one task per
image content, each with its labels as a submitted annotation, so annotators review them
in Label Studio and `poseops pull` versions them like hand-made labels. An image whose
content is already in the project adds nothing (an unlabeled task of it gets the labels):
importing the same files again changes nothing.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from poseops.datasets import load_record, upload_images
from poseops.importing.coco import read_coco_set
from poseops.importing.dlc import read_dlc_set
from poseops.importing.labeled import DatasetError, LabeledSet, Skip
from poseops.importing.names import Renames, map_onto
from poseops.importing.tasks import image_results
from poseops.importing.yolo import read_yolo_set
from poseops.labelstudio import LabelStudioClient
from poseops.settings import Settings

FORMATS = ("coco", "yolo", "dlc")


@dataclass
class ImportReport:
    """What one import did: counts of what reached Label Studio and every image or object left out, with why."""

    dataset: str
    format: str
    url: str
    labeled_images: int = 0  # images read with their labels, after mapping onto the skeleton
    new_tasks: int = 0  # tasks created, each with its annotation
    annotated: int = 0  # tasks already in the project (unlabeled) that got the labels
    unchanged: int = 0  # images already in the project with labels: nothing added
    instances: int = 0  # objects in the annotations added
    keypoints: int = 0  # labeled keypoints in the annotations added
    skipped: list[Skip] = field(default_factory=list)

    def skipped_counts(self) -> dict[str, int]:
        return dict(Counter(s.reason for s in self.skipped))


def read_labels(fmt: str, path: Path, images_dir: Path | None = None) -> LabeledSet:
    """The labels at `path` in one of FORMATS, in the source's own names."""
    if fmt not in FORMATS:
        raise DatasetError(f"format {fmt!r}: use one of {', '.join(FORMATS)}")
    if images_dir is not None and fmt != "coco":
        raise DatasetError("--images is for COCO files (whose images lie apart); YOLO and DeepLabCut folders hold theirs")
    if not path.exists():
        raise DatasetError(f"{path}: no such file or folder")
    if fmt == "coco":
        if not path.is_file():
            raise DatasetError(f"{path}: give the COCO keypoints JSON file itself (e.g. annotations/person_keypoints_val2017.json)")
        return read_coco_set(path, images_dir)
    return read_yolo_set(path) if fmt == "yolo" else read_dlc_set(path)


def import_labels(
    client: LabelStudioClient,
    settings: Settings,
    name: str,
    fmt: str,
    path: Path,
    *,
    renames: Renames | None = None,
    class_name: str | None = None,
    images_dir: Path | None = None,
    workers: int = 4,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import the labels at `path` into dataset `name`; what was added and what was left out (see the module doc)."""
    skeleton = load_record(settings, name).skeleton_spec()
    labeled = read_labels(fmt, Path(path), images_dir)
    images, skipped = map_onto(labeled, skeleton, renames, class_name)  # refuses names that do not fit, before uploading
    by_path = {im.path: im for im in images}
    labels = {im.path: image_results(skeleton, im) for im in images}
    upload = upload_images(client, settings, name, list(by_path), workers=workers, on_progress=on_progress,
                           on_total=on_total, labels=labels)
    report = ImportReport(name, fmt, upload.project.url, labeled_images=len(images), new_tasks=len(upload.uploaded),
                          annotated=len(upload.annotated), skipped=skipped)
    report.unchanged = len(upload.duplicates) - len(upload.annotated)
    report.skipped += [Skip(str(p), "unreadable_image", why) for p, why in upload.unreadable]
    for path_, _ in [*upload.uploaded, *upload.annotated]:
        poses = by_path[path_].poses
        report.instances += len(poses)
        report.keypoints += sum(1 for pose in poses for _, _, v in pose.keypoints if v > 0)
    return report
