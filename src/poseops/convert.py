"""Label Studio export → Ultralytics YOLO-pose dataset: exact, reported, fast.

The converter's API. The code lives in `poseops.conversion`, one module per concern
(each Label Studio tag read and written side by side; the export loader; the dataset
writer); see that package's docstring and docs/conversion.md.

Nothing is dropped silently: every region that cannot be used becomes a `Problem`
(task id, kind, what was wrong, what was left out), and every task left out of the
dataset is listed with its reason.
"""

from __future__ import annotations

from poseops.constants import IMAGE_SUFFIXES
from poseops.conversion.annotations import choose_annotation
from poseops.conversion.dataset import (
    DECIMALS,
    NAME_HEX,
    SPLITS,
    Split,
    convert_export,
    data_yaml,
    file_sha256,
    format_label_line,
    split_for,
)
from poseops.conversion.export import ExportError, check_tasks, load_export, match_images
from poseops.conversion.keypoint import FAR_OUTSIDE_BOX, KEYPOINT_FAR_OUTSIDE_BOX
from poseops.conversion.poses import Pose
from poseops.conversion.report import (
    DROPPED_KEYPOINT,
    DROPPED_NOTHING,
    DROPPED_OBJECT,
    DROPPED_REGION,
    DROPPED_TASK,
    ConversionReport,
    Problem,
)
from poseops.conversion.results import results_to_poses
from poseops.conversion.vocab import BORDER_TOLERANCE

__all__ = [
    "BORDER_TOLERANCE", "DECIMALS", "DROPPED_KEYPOINT", "DROPPED_NOTHING", "DROPPED_OBJECT", "DROPPED_REGION",
    "DROPPED_TASK", "FAR_OUTSIDE_BOX", "IMAGE_SUFFIXES", "KEYPOINT_FAR_OUTSIDE_BOX", "NAME_HEX", "SPLITS",
    "ConversionReport", "ExportError", "Pose", "Problem", "Split", "check_tasks", "choose_annotation",
    "convert_export", "data_yaml", "file_sha256", "format_label_line", "load_export", "match_images",
    "results_to_poses", "split_for",
]
