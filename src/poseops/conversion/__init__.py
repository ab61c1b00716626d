"""Label Studio annotations ↔ poses ↔ YOLO-pose datasets, one module per concern.

- `poses`: `Pose` (one object in normalized image coordinates) and pre-label `Template`s.
- One module per Label Studio tag, each writing and reading its own regions:
  `rectangle` (RectangleLabels: an object's box), `keypoint` (KeyPointLabels: one
  keypoint, tied to its box by `parentID`) and `visibility` (the per-region Choices that
  marks a keypoint occluded) and `relation` (links between regions: an animal's points
  tied together without a box).
- `derived`: boxes derived from keypoints (`box: derived` / `either`): loose keypoints
  grouped into instances, and each instance's box.
- `unplaced`: labeled keypoints that reach no object, which the pull and `poseops convert` refuse.
- `results`: one annotation's `result` list ↔ poses, built from the tag modules.
- `annotations`: which annotation of a task is used.
- `export`: reading and checking a Label Studio JSON export; matching tasks to image files.
- `dataset`: writing the YOLO-pose dataset (`convert_export`), its split and `data.yaml`.
- `report`: `Problem` (one region or task that could not be used as it was) and `ConversionReport`.
- `vocab`: the skeleton's vocabulary and the value checks the readers share.

`poseops.convert` (the converter's API) and `poseops.regions` (poses and the regions
written into Label Studio) re-export the public names. See docs/conversion.md.
"""
