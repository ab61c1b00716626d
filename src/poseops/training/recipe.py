"""Which recipe a new training uses: a fine-tune when the starting weights' keypoint head fits the skeleton,
a real training when it does not.

A head fits when the weights were trained for the same keypoints: the same count and, where the
weights say which keypoints they are, the same names in the same order. Otherwise Ultralytics
re-initialises the keypoint head and the run is a training of that head from scratch: a short,
gentle fine-tune recipe (SGD at lr0 0.001 without warm-up, which keeps a fitting head intact)
leaves it at pose mAP 0. With `train.recipe: auto` such a run trains with `train.new_head`'s
optimizer, learning rate and warm-up instead of the train section's; `train.recipe: params`
always uses the train section as written. Which recipe ran, and why, is tagged on the MLflow run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from poseops.params import Params
from poseops.skeleton import COCO_SIGMAS

FINE_TUNE, NEW_HEAD = "fine-tune", "new head"
COCO_POSE_DATA = ("coco-pose.yaml", "coco8-pose.yaml")  # Ultralytics' pretrained pose weights: COCO's 17 person points


@dataclass(frozen=True)
class Head:
    """The keypoints a checkpoint's head was trained for (names None when the checkpoint does not say)."""

    count: int | None
    names: list[str] | None


@dataclass(frozen=True)
class Recipe:
    name: str  # FINE_TUNE or NEW_HEAD
    reason: str
    args: dict[str, Any]  # what replaces the train section's values in `YOLO.train`'s arguments
    warning: str | None = None

    def tags(self) -> dict[str, str]:
        return {"poseops.recipe": self.name, "poseops.recipe_reason": self.reason,
                **({"poseops.recipe_warning": self.warning} if self.warning else {})}


def weights_head(weights: str, checkpoint: dict[str, Any] | None = None) -> Head:
    """The keypoint head of a `.pt` checkpoint (`checkpoint`: its contents, already loaded by
    `poseops.weights.load_checkpoint`); Head(None, None) for an architecture (`.yaml`: no trained head)."""
    from poseops.weights import load_checkpoint

    if checkpoint is None and (not weights.endswith(".pt") or not Path(weights).is_file()):
        return Head(None, None)
    ckpt = checkpoint if checkpoint is not None else load_checkpoint(weights)
    model = ckpt.get("ema") or ckpt.get("model")
    shape = getattr(model, "kpt_shape", None) or (getattr(model, "yaml", None) or {}).get("kpt_shape")
    count = int(shape[0]) if shape else None
    names = getattr(model, "kpt_names", None)
    data = str((ckpt.get("train_args") or {}).get("data") or "")
    if names is None and Path(data).name in COCO_POSE_DATA:
        names = list(COCO_SIGMAS)
    elif names is None and data.endswith((".yaml", ".yml")) and Path(data).is_file():
        names = (yaml.safe_load(Path(data).read_text(encoding="utf-8")).get("kpt_names") or {}).get(0)
    if isinstance(names, dict):
        names = names.get(0)
    return Head(count, list(names) if names else None)


def choose_recipe(params: Params, weights: str, data_yaml: Path, checkpoint: dict[str, Any] | None = None) -> Recipe:
    """The recipe of a new training from `weights` on the prepared dataset `data_yaml` (`checkpoint`: the
    weights' contents when the caller loaded them already)."""
    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    count = int(data["kpt_shape"][0])
    names = list((data.get("kpt_names") or {}).get(0) or [])
    head = weights_head(weights, checkpoint)
    if head.count is None:
        why = f"{Path(weights).name} has no trained keypoint head (an architecture: training from scratch)"
    elif head.count != count:
        why = f"the head of {Path(weights).name} has {head.count} keypoints, the skeleton {count}"
    elif head.names is not None and names and head.names != names:
        why = f"the head of {Path(weights).name} has other keypoints ({', '.join(head.names[:4])}, ...) than the skeleton"
    else:
        return Recipe(FINE_TUNE, f"the head of {Path(weights).name} fits the skeleton ({count} keypoints): the train "
                      "section as written", {})
    t = params.train
    if t.recipe == "params":
        return Recipe(FINE_TUNE, f"{why}; train.recipe: params keeps the train section as written", {})
    new = t.new_head
    args = {"optimizer": new.optimizer, "lr0": new.lr0, "warmup_epochs": new.warmup_epochs}
    warning = None
    if t.epochs < new.min_epochs:
        warning = (f"a new keypoint head trains for {t.epochs} epoch(s); it usually needs {new.min_epochs} or more "
                   "before pose mAP leaves 0 (train.epochs)")
    return Recipe(NEW_HEAD, f"{why}: a new head, trained with train.new_head ({new.optimizer}, lr0 {new.lr0:g}, "
                  f"warmup_epochs {new.warmup_epochs:g})", args, warning)
