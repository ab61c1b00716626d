"""Reading existing pose labels (COCO keypoints JSON, Ultralytics YOLO-pose txt): the names' old home.

The readers live in `poseops.importing` (`coco`, `yolo`, `dlc`, with the mapping onto a
skeleton and `poseops dataset import`); this module re-exports what it used to define.
"""

from __future__ import annotations

from poseops.importing.coco import read_coco_keypoints
from poseops.importing.labeled import DatasetError, LabeledImage
from poseops.importing.tasks import image_results, to_label_studio_tasks
from poseops.importing.yolo import parse_yolo_pose_labels, read_yolo_pose

__all__ = ["DatasetError", "LabeledImage", "image_results", "parse_yolo_pose_labels", "read_coco_keypoints",
           "read_yolo_pose", "to_label_studio_tasks"]
