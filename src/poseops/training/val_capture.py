"""One Ultralytics validation pass that also keeps every image's labels and predictions.

Ultralytics' `PoseValidator` computes pose and box mAP batch by batch and keeps nothing per
image. `capturing_validator()` is a subclass that, after Ultralytics' own bookkeeping for a batch,
keeps each image's labels and predictions rescaled to its original pixels (`ImagePoses`), so the
per-keypoint metrics, the per-image OKS and the error gallery need no second pass over the split.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from poseops.training.keypoint_metrics import ImagePoses


@cache
def capturing_validator() -> type:
    """Ultralytics' PoseValidator, also keeping `self.poses`: list[ImagePoses] (imported on first use)."""
    from ultralytics.models.yolo.pose import PoseValidator
    from ultralytics.utils import ops

    class CapturingPoseValidator(PoseValidator):
        poses: list[ImagePoses]

        def init_metrics(self, model: Any) -> None:
            super().init_metrics(model)
            self.poses = []

        def update_metrics(self, preds: list[dict[str, Any]], batch: dict[str, Any]) -> None:
            super().update_metrics(preds, batch)
            for si, pred in enumerate(preds):
                pbatch = self._prepare_batch(si, batch)
                predn = self.scale_preds(self._prepare_pred(pred), pbatch)
                imgsz, shape, ratio_pad = pbatch["imgsz"], pbatch["ori_shape"], pbatch["ratio_pad"]
                label_boxes = ops.scale_boxes(imgsz, pbatch["bboxes"].clone(), shape, ratio_pad=ratio_pad)
                label_kpts = ops.scale_coords(imgsz, pbatch["keypoints"].clone(), shape, ratio_pad=ratio_pad)
                self.poses.append(_image_poses(pbatch["im_file"], shape, pbatch["cls"], label_boxes, label_kpts,
                                               predn))

    return CapturingPoseValidator


def _numpy(t: Any) -> np.ndarray:
    return t.detach().float().cpu().numpy() if hasattr(t, "detach") else np.asarray(t, dtype=float)


def _with_visibility(kpts: np.ndarray, fill: float) -> np.ndarray:
    """(n, K, 3): (n, K, 2) points get a third column of `fill` (labels: labeled unless at 0,0; predictions: NaN)."""
    if kpts.shape[-1] >= 3:
        return kpts[..., :3]
    third = np.where((kpts != 0).any(-1), 1.0, 0.0) if fill == 1.0 else np.full(kpts.shape[:-1], fill)
    return np.concatenate([kpts, third[..., None]], axis=-1)


def _image_poses(im_file: str, shape: Any, label_cls: Any, label_boxes: Any, label_kpts: Any,
                 predn: dict[str, Any]) -> ImagePoses:
    h, w = int(shape[0]), int(shape[1])
    k = predn["keypoints"].shape[1] if predn["keypoints"].ndim == 3 else label_kpts.shape[1]
    lk = _with_visibility(_numpy(label_kpts).reshape(-1, k, label_kpts.shape[-1]), 1.0)
    pk = _with_visibility(_numpy(predn["keypoints"]).reshape(-1, k, predn["keypoints"].shape[-1]), np.nan)
    return ImagePoses(
        image=im_file, width=w, height=h,
        label_cls=_numpy(label_cls).reshape(-1).astype(int), label_boxes=_numpy(label_boxes).reshape(-1, 4),
        label_kpts=lk, pred_cls=_numpy(predn["cls"]).reshape(-1).astype(int),
        pred_boxes=_numpy(predn["bboxes"]).reshape(-1, 4), pred_conf=_numpy(predn["conf"]).reshape(-1),
        pred_kpts=pk)


def relative_images(poses: list[ImagePoses], dataset_dir: Path) -> list[ImagePoses]:
    """The same poses named by their path inside the dataset (`images/val/x.jpg`, as the pull's manifest names them)."""
    from dataclasses import replace

    root = dataset_dir.resolve()
    out = []
    for p in poses:
        path = Path(p.image).resolve()
        name = path.relative_to(root).as_posix() if path.is_relative_to(root) else path.name
        out.append(replace(p, image=name))
    return out
