"""Poses and the Label Studio regions written for them (pre-labels, imported labels, predictions).

A `Pose` is one object in normalized image coordinates (0..1); Label Studio keeps the
same geometry in percent of the image, one region per box and per keypoint, the keypoints
tied to their box by `parentID`. The code lives in `poseops.conversion` (`poses`, and
`results` built from one module per tag, where each tag is also read back).
"""

from __future__ import annotations

from poseops.conversion.keypoint import KEYPOINT_SIZE
from poseops.conversion.poses import (
    DEFAULT_BOX_SIZE,
    Keypoint,
    Pose,
    Template,
    spec_template,
    template_from_pose,
    template_pose,
)
from poseops.conversion.results import pose_to_results, poses_to_results

__all__ = [
    "DEFAULT_BOX_SIZE", "KEYPOINT_SIZE", "Keypoint", "Pose", "Template", "pose_to_results", "poses_to_results",
    "spec_template", "template_from_pose", "template_pose",
]
