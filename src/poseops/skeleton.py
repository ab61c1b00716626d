"""The skeleton spec: the one source of keypoint truth.

A spec file holds one or more classes, each with ordered keypoints (order = the
model's keypoint order), connections drawn between keypoints, and left/right
flip pairs. Everything else (the Label Studio config, the YOLO dataset yaml, the
API's keypoint names, the playground's colours) is derived from it.

    classes:
      - name: person
        color: "#e6194b"
        keypoints:
          - {name: nose, color: "#ffe119", position: [0.5, 0.08]}
          - {name: left_eye}
        connections:
          - [nose, left_eye, "#3cb44b"]
        flip_pairs:
          - [left_eye, right_eye]

`position` (optional) is where the template pre-label places the keypoint, as
fractions of its box (0,0 = top-left corner, 1,1 = bottom-right corner).

`sigma` (optional, per keypoint) is the keypoint's OKS sigma: how far, relative to the
object's size, a prediction may be from the label and still count as right (COCO's person
keypoints range from 0.025 for the eyes to 0.107 for the hips). Training's keypoint loss and
validation's pose mAP use it (the dataset's `kpt_oks_sigmas`). Without it a keypoint gets
COCO's sigma when its class's keypoints are COCO's 17 person keypoints, else
DEFAULT_SIGMA (0.072: the median of COCO's sigmas). YOLO-pose has one sigma per keypoint
position for all classes, so a later class may only repeat the first class's sigmas.

`box` (optional, per class) says where an object's box comes from: `labeled` (drawn in
Label Studio; the default), `derived` (the labeled keypoints' min/max, widened on each
side by `box_padding` times the points' extent on that axis, clipped to the image) or
`either` (a drawn box wins, otherwise derived).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poseops.errors import PoseopsError

# Distinct colours (Sasha Trubetskoy's palette), used when the spec names none.
PALETTE = (
    "#e6194b", "#3cb44b", "#ffe119", "#4363d8", "#f58231", "#911eb4", "#46f0f0",
    "#f032e6", "#bcf60c", "#fabebe", "#008080", "#e6beff", "#9a6324", "#fffac8",
    "#800000", "#aaffc3", "#808000", "#ffd8b1", "#000075", "#808080",
)
DEFAULT_EDGE_COLOR = "#a0a0a0"

# Where a class's boxes come from (the spec's `box` key).
BOX_LABELED = "labeled"  # drawn in Label Studio (RectangleLabels)
BOX_DERIVED = "derived"  # the labeled keypoints' min/max plus padding, clipped to the image
BOX_EITHER = "either"  # a drawn box wins, otherwise derived
BOX_MODES = (BOX_LABELED, BOX_DERIVED, BOX_EITHER)
DEFAULT_BOX_PADDING = 0.1  # of the points' extent, on each side, per axis
MAX_BOX_PADDING = 1.0

# COCO's per-keypoint OKS sigmas (pycocotools' cocoeval; Ultralytics' OKS_SIGMA), by keypoint name.
COCO_SIGMAS = {
    "nose": 0.026, "left_eye": 0.025, "right_eye": 0.025, "left_ear": 0.035, "right_ear": 0.035,
    "left_shoulder": 0.079, "right_shoulder": 0.079, "left_elbow": 0.072, "right_elbow": 0.072,
    "left_wrist": 0.062, "right_wrist": 0.062, "left_hip": 0.107, "right_hip": 0.107,
    "left_knee": 0.087, "right_knee": 0.087, "left_ankle": 0.089, "right_ankle": 0.089,
}
# The sigma of a keypoint of any other skeleton: the median of COCO's 17 (their mean is 0.067), a
# typical body joint, rather than Ultralytics' 1/K, which loosens OKS as keypoints are fewer.
DEFAULT_SIGMA = 0.072
MAX_SIGMA = 1.0
_WORDS = re.compile(r"[_\-. ]+|(?<=[a-z])(?=[A-Z])")  # snake, kebab, dotted, spaced and camelCase names


def looks_sided(name: str) -> bool:
    """Whether a keypoint name says left or right: a word `left`/`right` anywhere, or `l`/`r` first or last."""
    words = [w.lower() for w in _WORDS.split(name) if w]
    return any(w in ("left", "right") for w in words) or bool(words) and (words[0] in ("l", "r") or words[-1] in ("l", "r"))


class SkeletonError(PoseopsError, ValueError):
    """A skeleton spec that cannot be used; the message names the file, line and entry."""


@dataclass(frozen=True)
class Keypoint:
    name: str
    color: str
    position: tuple[float, float]
    sigma: float | None = None  # the spec's OKS sigma; None: the default (SkeletonClass.oks_sigmas)


@dataclass(frozen=True)
class Connection:
    a: str
    b: str
    color: str


@dataclass(frozen=True)
class SkeletonClass:
    name: str
    color: str
    keypoints: tuple[Keypoint, ...]
    connections: tuple[Connection, ...]
    flip_pairs: tuple[tuple[str, str], ...]
    box: str = BOX_LABELED  # one of BOX_MODES
    box_padding: float = DEFAULT_BOX_PADDING  # used by derived boxes (`derived`, `either`)

    @property
    def box_drawn(self) -> bool:
        """Whether annotators draw this class's boxes (the labeling config has a rectangle label for it)."""
        return self.box != BOX_DERIVED

    @property
    def box_derivable(self) -> bool:
        """Whether a box may be derived from this class's keypoints."""
        return self.box != BOX_LABELED

    @property
    def keypoint_names(self) -> list[str]:
        return [k.name for k in self.keypoints]

    @property
    def unpaired_sided(self) -> list[str]:
        """The keypoints whose name says left or right but that are in no flip pair (mirrored, they stay put)."""
        paired = {n for pair in self.flip_pairs for n in pair}
        return [n for n in self.keypoint_names if looks_sided(n) and n not in paired]

    @property
    def oks_sigmas(self) -> list[float]:
        """Each keypoint's OKS sigma, in model order: the spec's, else COCO's or DEFAULT_SIGMA."""
        coco = set(self.keypoint_names) == set(COCO_SIGMAS)
        return [k.sigma if k.sigma is not None else COCO_SIGMAS[k.name] if coco else DEFAULT_SIGMA
                for k in self.keypoints]

    def index(self, keypoint: str) -> int:
        return self.keypoint_names.index(keypoint)

    @property
    def flip_idx(self) -> list[int]:
        """For each keypoint index, the index of its mirror image (itself if unpaired)."""
        idx = list(range(len(self.keypoints)))
        for a, b in self.flip_pairs:
            ia, ib = self.index(a), self.index(b)
            idx[ia], idx[ib] = ib, ia
        return idx


@dataclass(frozen=True)
class Skeleton:
    classes: tuple[SkeletonClass, ...]
    source: str = "<string>"

    @property
    def class_names(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def keypoint_count(self) -> int:
        return len(self.classes[0].keypoints)

    @property
    def flip_idx(self) -> list[int]:
        return self.classes[0].flip_idx

    @property
    def oks_sigmas(self) -> list[float]:
        """The dataset's `kpt_oks_sigmas`: one per keypoint position, the same for all classes."""
        return self.classes[0].oks_sigmas

    def get(self, class_name: str) -> SkeletonClass:
        for c in self.classes:
            if c.name == class_name:
                return c
        raise KeyError(f"class {class_name!r} is not in {self.source} (classes: {', '.join(self.class_names)})")

    def keypoint_label(self, class_name: str, keypoint: str) -> str:
        """The Label Studio `KeyPointLabels` value of one class's keypoint.

        The plain keypoint name, unless another class uses the same name at another
        position; then `class:keypoint`, so that every label maps to one model index.
        """
        cls = self.get(class_name)
        i = cls.index(keypoint)
        for other in self.classes:
            if keypoint in other.keypoint_names and other.index(keypoint) != i:
                return f"{class_name}:{keypoint}"
        return keypoint

    def keypoint_labels(self) -> dict[str, int]:
        """Every Label Studio keypoint label and its model index, in model order."""
        labels: dict[str, int] = {}
        for cls in self.classes:
            for i, kp in enumerate(cls.keypoints):
                labels.setdefault(self.keypoint_label(cls.name, kp.name), i)
        return labels

    def to_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready form (used by the service's metadata and the playground)."""
        return {
            "classes": [
                {
                    "name": c.name,
                    "color": c.color,
                    "keypoints": [{"name": k.name, "color": k.color} for k in c.keypoints],
                    "connections": [[e.a, e.b, e.color] for e in c.connections],
                    "flip_pairs": [list(p) for p in c.flip_pairs],
                    "box": c.box,
                }
                for c in self.classes
            ]
        }


# --- loading (the parser and its checks: poseops.skeleton_parser) ------------------------


def load_skeleton(path: str | Path) -> Skeleton:
    """Read and validate a skeleton spec file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SkeletonError(f"{path}: no such skeleton spec; pass the path of a YAML file such as label_config/skeletons/person.yaml") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SkeletonError(f"{path}: cannot be read as a text file ({e})") from None
    return parse_skeleton(text, source=str(path))


def parse_skeleton(text: str, source: str = "<string>") -> Skeleton:
    """Parse and validate a skeleton spec given as YAML text."""
    from poseops.skeleton_parser import parse_spec_text

    return parse_spec_text(text, source)
