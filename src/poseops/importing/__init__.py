"""Importing labels people already have (COCO keypoints JSON, Ultralytics YOLO-pose, DeepLabCut) into a dataset.

One module per concern: `labeled` (what every reader gives), the readers `coco`, `yolo` and
`dlc`, `names` (the mapping onto a skeleton by class and keypoint name), `tasks` (labeled
images as Label Studio annotations) and `upload` (`poseops dataset import`). The old home of
the readers, `poseops.coco`, re-exports them.
"""

from poseops.importing.labeled import DatasetError, LabeledImage, LabeledSet, Skip

__all__ = ["DatasetError", "LabeledImage", "LabeledSet", "Skip"]
