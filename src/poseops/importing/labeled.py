"""What every reader of existing labels gives: labeled images in the source's own names, and what it skipped.

A reader turns a folder or file of labels (COCO, Ultralytics YOLO-pose, DeepLabCut) into a
`LabeledSet`: the source's classes and keypoint names (`schema`), one `LabeledImage` per
usable image with its `Pose`s in normalized coordinates and the schema's keypoint order,
and a `Skip` for each image (or object) it could not use, with the reason. Nothing is
dropped without a `Skip`. `poseops.importing.names` then maps the set onto a skeleton.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from poseops.conversion.poses import MISSING, Keypoint, Pose
from poseops.errors import PoseopsError

# Labels up to this far outside the image (a fraction of its side) are rounding at the border: clipped onto it.
# Ultralytics accepts 1% outside; farther, the point is wrong and the image is skipped with the reason.
EDGE_TOLERANCE = 0.01


class DatasetError(PoseopsError, ValueError):
    """Labels that cannot be read; the message names the file and the entry."""


class LabeledImage(NamedTuple):
    file_name: str
    width: int
    height: int
    poses: list[Pose]
    path: Path | None = None


@dataclass(frozen=True)
class Skip:
    """An image (or one object of it) that was not imported, and why."""

    source: str  # the image's file name, or the label file's, as the user knows it
    reason: str  # a short kind: missing_image, outside_image, ...
    detail: str  # what was wrong, for a person

    def line(self) -> str:
        return f"{self.source}: {self.detail}"


@dataclass
class LabeledSet:
    """Labeled images in the source's own names (see the module doc)."""

    format: str
    schema: dict[str, tuple[str | None, ...]]  # source class -> its keypoint names in order (None: unnamed)
    images: list[LabeledImage] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    has_boxes: bool = True  # False: the source labels points only (DeepLabCut); boxes come from the points


class OutsideImage(ValueError):
    """A coordinate that is not a number or lies outside the image (beyond EDGE_TOLERANCE)."""


def normalized(value: float, size: float, what: str) -> float:
    """`value / size`, clipped onto 0..1 within EDGE_TOLERANCE; OutsideImage when it is NaN or farther out."""
    v = value / size
    if not math.isfinite(v):
        raise OutsideImage(f"{what} is {value!r}, not a number")
    if not -EDGE_TOLERANCE <= v <= 1 + EDGE_TOLERANCE:
        raise OutsideImage(f"{what} = {value:g} lies outside the image (0..{size:g})")
    return min(1.0, max(0.0, v))


def keypoint(x: float, y: float, v: int, width: float, height: float, what: str) -> Keypoint:
    """One keypoint from pixel (or, with sizes 1, normalized) coordinates; MISSING when v is 0."""
    if v <= 0:
        return MISSING
    return normalized(x, width, f"{what} x"), normalized(y, height, f"{what} y"), v


def box(x: float, y: float, w: float, h: float, width: float, height: float, what: str) -> tuple[float, float, float, float]:
    """A box (top-left x, y, width, height) normalized and clipped onto the image; OutsideImage when it is not there."""
    if not all(math.isfinite(c) for c in (x, y, w, h)):
        raise OutsideImage(f"{what} [{x}, {y}, {w}, {h}] holds a value that is not a number")
    x0, y0 = normalized(x, width, f"{what} left"), normalized(y, height, f"{what} top")
    x1, y1 = normalized(x + w, width, f"{what} right"), normalized(y + h, height, f"{what} bottom")
    if x1 <= x0 or y1 <= y0:
        raise OutsideImage(f"{what} [{x:g}, {y:g}, {w:g}, {h:g}] has no area")
    return x0, y0, x1 - x0, y1 - y0


def image_size(path: Path) -> tuple[int, int]:
    """Width and height as shown (EXIF orientation applied), from the header; ValueError when it is no image."""
    from PIL import UnidentifiedImageError

    from poseops.datasets import image_size as displayed

    try:
        return displayed(path)
    except UnidentifiedImageError:
        raise ValueError("not an image Pillow can read") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"cannot be read ({e})") from None
