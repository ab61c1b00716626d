"""Label checks at pull time: labels that are probably wrong, found before a model learns from them.

- **left/right swap**: for each flip pair of the spec, the pair mirrored (its two labels
  exchanged) fits the rest of the skeleton much better: the connections from each of the two
  to its neighbours are far longer than usual as labeled and ordinary once exchanged (a
  wrist labeled on the other arm). A whole object mirrored consistently is a person seen
  from behind, not an error, and is not flagged.
- **limb length**: a connection far longer than the same connection on the dataset's other
  objects, both measured relative to the object's size (the square root of its box's area);
  the usual length and spread are the median and MAD of the log lengths over the dataset, so a
  few wrong labels do not move them.
- **model disagreement** (optional): the deployed model finds the object with confidence but
  its keypoints are far from the labels (low OKS between label and prediction).

The flagged tasks are tagged in Label Studio (the task data field `poseops_checks`, a Data
Manager column to filter on), listed in the pull's artifact, and more of them than
`pull.max_flagged` (a share of the labeled tasks) refuses the pull.
"""

from __future__ import annotations

import math
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from poseops.conversion.poses import Pose
from poseops.oks import object_area
from poseops.oks import oks as object_keypoint_similarity
from poseops.skeleton import Skeleton, SkeletonClass

CHECK_SWAP = "left_right_swap"
CHECK_LIMB = "limb_length"
CHECK_MODEL = "model_disagrees"
TASK_FIELD = "poseops_checks"  # the Label Studio task data field the flags are written to

MIN_SAMPLES = 8  # a connection's usual length needs this many objects with both ends labeled
MIN_SCALE_PX = 32.0  # smaller objects (√(box area) in pixels) are not checked: their labels are too coarse
# ... nor are objects cut by the image's border or with fewer than half their keypoints labeled (their box is not
# their size)
BORDER = 0.005  # a box this close to the image's edge (of its width or height) is cut by it
MIN_SPREAD = 0.15  # floor of a connection's robust spread of log length (1.4826 · MAD)
LIMB_Z = 3.0  # a connection this many spreads longer than usual ...
LIMB_RATIO = 2.0  # ... and at least this many times its usual length is a limb-length outlier
SWAP_Z = 3.0  # a flip pair is swapped when, as labeled, a connection is this many spreads too long,
SWAP_OK_Z = 2.0  # exchanged, none is more than this, ...
SWAP_GAIN = 4.0  # ... and the exchange cuts the pair's excess length by this factor
MIN_PAIR_SEPARATION = 0.05  # of the object's size: two labels on top of each other cannot be told swapped
SIDE_SEPARATION = 0.15  # a pair this far apart (of the object's size) shows which way its left and right lie
SIDE_PAIRS = 2  # the other pairs needed to say which way is right
SIDE_AGREEMENT = 0.8  # how well they must agree (length of their mean direction)
SIDE_AGAINST = 0.5  # a pair pointing against them (cosine below minus this) is the other way round
MODEL_MIN_CONF = 0.5  # the model check counts detections at least this confident ...
MODEL_MAX_OKS = 0.3  # ... whose OKS with the label is below this
MODEL_MIN_IOU = 0.5  # and whose box overlaps the label's at least this much


@dataclass(frozen=True)
class LabeledObject:
    """One labeled object in pixels: its task, its place in the task's labels, its size and its points."""

    task_id: Any
    index: int
    class_name: str
    box: tuple[float, float, float, float]  # x, y (top-left), width, height in pixels
    points: tuple[tuple[float, float] | None, ...]  # model order; None: not labeled
    cut: bool = False  # the box touches the image's border: the object goes on outside, its box is not its size

    @property
    def scale(self) -> float:
        """The object's size: √(area) of its box."""
        return math.sqrt(max(self.box[2], 0.0) * max(self.box[3], 0.0))

    @property
    def labeled(self) -> int:
        return sum(p is not None for p in self.points)


@dataclass(frozen=True)
class Flag:
    """One label that is probably wrong: which task and object, which check, and why in words."""

    task_id: Any
    object_index: int
    class_name: str
    check: str
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class LabelChecks:
    """What the checks found in one pull."""

    checked_tasks: int = 0
    checked_objects: int = 0
    flags: list[Flag] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what could not be checked, and why

    @property
    def flagged_tasks(self) -> list[Any]:
        return sorted({f.task_id for f in self.flags}, key=str)

    def counts(self) -> dict[str, int]:
        """Flagged tasks per check."""
        return dict(Counter(check for check, _ in {(f.check, f.task_id) for f in self.flags}))

    def tag_of(self, task_id: Any) -> str:
        """The task's Label Studio tag: its checks, comma-separated ('' when none flagged it)."""
        return ",".join(sorted({f.check for f in self.flags if f.task_id == task_id}))

    def summary(self) -> str:
        counts = ", ".join(f"{n} {check.replace('_', ' ')}" for check, n in sorted(self.counts().items())) or "none"
        return (f"{len(self.flagged_tasks)} of {self.checked_tasks} labeled task(s) flagged ({counts}; "
                f"{self.checked_objects} object(s) checked)")

    def to_dict(self) -> dict[str, Any]:
        return {"checked_tasks": self.checked_tasks, "checked_objects": self.checked_objects,
                "flagged_tasks": self.flagged_tasks, "counts": self.counts(),
                "flags": [f.to_dict() for f in self.flags], "notes": list(self.notes)}


# --- the labels as objects in pixels ---------------------------------------------------------------


def labeled_object(task_id: Any, index: int, pose: Pose, width: float, height: float) -> LabeledObject:
    """A normalized `Pose` (a pull's or a COCO file's) in pixels."""
    x, y, w, h = pose.box
    points = tuple((kx * width, ky * height) if v else None for kx, ky, v in pose.keypoints)
    cut = min(x, y) < BORDER or max(x + w, y + h) > 1 - BORDER
    return LabeledObject(task_id, index, pose.class_name, (x * width, y * height, w * width, h * height), points, cut)


def task_objects(skeleton: Skeleton, tasks: Iterable[dict], images: Mapping[Any, Path]) -> list[LabeledObject]:
    """The objects of each labeled task's chosen annotation, read as the converter reads them, in pixels."""
    from PIL import Image

    from poseops.conversion.annotations import choose_annotation
    from poseops.conversion.results import results_to_poses

    objects: list[LabeledObject] = []
    for task in tasks:
        annotation, _ = choose_annotation(task)
        path = images.get(task.get("id"))
        if annotation is None or path is None:
            continue
        poses, _ = results_to_poses(skeleton, annotation.get("result"), task["id"])
        with Image.open(path) as im:  # the header only
            width, height = im.size
        objects += [labeled_object(task["id"], i, pose, width, height) for i, pose in enumerate(poses)]
    return objects


# --- the geometry checks -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Usual:
    """A connection's usual log length (relative to object size) and its robust spread."""

    median: float
    spread: float

    def z(self, length: float, scale: float) -> float:
        return (math.log(max(length, 1e-9) / scale) - self.median) / self.spread


def _distance(p: tuple[float, float], q: tuple[float, float]) -> float:
    return math.hypot(p[0] - q[0], p[1] - q[1])


def _checked(objects: Iterable[LabeledObject]) -> list[LabeledObject]:
    """The objects big and complete enough to judge: a truncated or mostly hidden one's box says little of its size."""
    return [o for o in objects
            if not o.cut and o.scale >= MIN_SCALE_PX and o.labeled >= max(2, math.ceil(len(o.points) / 2))]


def usual_lengths(cls: SkeletonClass, objects: list[LabeledObject]) -> dict[tuple[int, int], _Usual]:
    """Per connection of the class (as keypoint indices) with enough samples: its usual log length and spread."""
    usual = {}
    for c in cls.connections:
        a, b = cls.index(c.a), cls.index(c.b)
        logs = [math.log(max(_distance(o.points[a], o.points[b]), 1e-9) / o.scale)
                for o in objects if o.points[a] is not None and o.points[b] is not None]
        if len(logs) >= MIN_SAMPLES:
            median = statistics.median(logs)
            mad = statistics.median(abs(v - median) for v in logs)
            usual[(a, b)] = _Usual(median, max(1.4826 * mad, MIN_SPREAD))
    return usual


def check_labels(skeleton: Skeleton, objects: Iterable[LabeledObject]) -> LabelChecks:
    """Left/right swaps and limb-length outliers among the objects, per class of the spec."""
    objects = list(objects)
    checks = LabelChecks(checked_tasks=len({o.task_id for o in objects}))
    for cls in skeleton.classes:
        mine = _checked(o for o in objects if o.class_name == cls.name)
        checks.checked_objects += len(mine)
        usual = usual_lengths(cls, mine)
        short = [f"{c.a}-{c.b}" for c in cls.connections if (cls.index(c.a), cls.index(c.b)) not in usual]
        if short:
            checks.notes.append(f"class {cls.name!r}: connection(s) {', '.join(short)} not checked (fewer than "
                                f"{MIN_SAMPLES} {cls.name} objects of at least {MIN_SCALE_PX:g} px, inside the image, with "
                                "half their keypoints labeled, have both ends)")
        for obj in mine:
            swapped = _swaps(cls, obj, usual)
            checks.flags += swapped
            explained = {i for f in swapped for i in _pair_indices(cls, f.detail)}
            checks.flags += _long_limbs(cls, obj, usual, explained)
    checks.flags.sort(key=lambda f: (str(f.task_id), f.object_index, f.check))
    return checks


def _neighbours(usual: Mapping[tuple[int, int], _Usual], i: int, exclude: int) -> list[tuple[int, _Usual]]:
    return [(b if a == i else a, u) for (a, b), u in usual.items() if i in (a, b) and exclude not in (a, b)]


def _swaps(cls: SkeletonClass, obj: LabeledObject, usual: Mapping[tuple[int, int], _Usual]) -> list[Flag]:
    """The flip pairs of one object whose exchanged labels fit the rest of its skeleton much better.

    Two signs, either enough: the pair's connections are far too long as labeled and ordinary
    exchanged; or the pair lies the other way round from all the object's other pairs (its right
    point on the side where the others have their left) while exchanging it makes no connection
    longer than usual.
    """
    flags = []
    across = _across(cls, obj)
    for n, (left, right) in enumerate(cls.flip_pairs):
        a, b = cls.index(left), cls.index(right)
        pa, pb = obj.points[a], obj.points[b]
        if pa is None or pb is None or _distance(pa, pb) < MIN_PAIR_SEPARATION * obj.scale:
            continue
        as_labeled, exchanged = [], []
        for me, other, where in ((a, b, pa), (b, a, pb)):
            for k, u in _neighbours(usual, me, other):
                if obj.points[k] is not None:
                    as_labeled.append(u.z(_distance(where, obj.points[k]), obj.scale))
                    exchanged.append(u.z(_distance(pb if me == a else pa, obj.points[k]), obj.scale))
        worst, worst_exchanged = max(as_labeled, default=0.0), max(exchanged, default=0.0)
        by_length = worst >= SWAP_Z and worst_exchanged <= SWAP_OK_Z and _excess(as_labeled) >= SWAP_GAIN * _excess(exchanged)
        by_side = _reversed(across, n) and worst_exchanged <= max(worst, SWAP_OK_Z)
        if by_length:
            flags.append(Flag(obj.task_id, obj.index, cls.name, CHECK_SWAP,
                              f"{left}/{right} look swapped: as labeled a connection is {worst:.1f} spreads "
                              f"longer than usual, exchanged at most {worst_exchanged:.1f}"))
        elif by_side:
            flags.append(Flag(obj.task_id, obj.index, cls.name, CHECK_SWAP,
                              f"{left}/{right} look swapped: the pair lies the other way round from the object's "
                              f"other left/right pairs"))
    return flags


def _across(cls: SkeletonClass, obj: LabeledObject) -> list[tuple[float, float] | None]:
    """Per flip pair: the unit vector from its left to its right point (None: not labeled, or too close to tell)."""
    out: list[tuple[float, float] | None] = []
    for left, right in cls.flip_pairs:
        pa, pb = obj.points[cls.index(left)], obj.points[cls.index(right)]
        d = _distance(pa, pb) if pa is not None and pb is not None else 0.0
        out.append(((pb[0] - pa[0]) / d, (pb[1] - pa[1]) / d) if d >= SIDE_SEPARATION * obj.scale else None)
    return out


def _reversed(across: list[tuple[float, float] | None], n: int) -> bool:
    """Whether pair n points against the other pairs, which agree among themselves (at least SIDE_PAIRS of them)."""
    mine = across[n]
    others = [v for i, v in enumerate(across) if i != n and v is not None]
    if mine is None or len(others) < SIDE_PAIRS:
        return False
    cx, cy = sum(v[0] for v in others), sum(v[1] for v in others)
    norm = math.hypot(cx, cy)
    if norm < SIDE_AGREEMENT * len(others):  # the other pairs do not agree on a direction (a side view, a twist)
        return False
    return (mine[0] * cx + mine[1] * cy) / norm < -SIDE_AGAINST


def _excess(zs: list[float]) -> float:
    return sum(max(z - 1.0, 0.0) ** 2 for z in zs)


def _pair_indices(cls: SkeletonClass, detail: str) -> set[int]:
    left, right = detail.split(" look swapped", 1)[0].split("/", 1)
    return {cls.index(left), cls.index(right)}


def _long_limbs(cls: SkeletonClass, obj: LabeledObject, usual: Mapping[tuple[int, int], _Usual],
                explained: set[int]) -> list[Flag]:
    """The object's connections far longer than usual (but those a flagged swap already explains)."""
    flags = []
    for (a, b), u in usual.items():
        pa, pb = obj.points[a], obj.points[b]
        if pa is None or pb is None or {a, b} & explained:
            continue
        length = _distance(pa, pb)
        z = u.z(length, obj.scale)
        ratio = length / obj.scale / math.exp(u.median)
        if z > LIMB_Z and ratio > LIMB_RATIO:
            name_a, name_b = cls.keypoint_names[a], cls.keypoint_names[b]
            flags.append(Flag(obj.task_id, obj.index, cls.name, CHECK_LIMB,
                              f"{name_a}-{name_b} is {ratio:.1f}x its usual length for the object's size "
                              f"({z:.1f} spreads above the dataset's median)"))
    return flags


# --- the model's opinion (optional) ------------------------------------------------------------------------


def oks(label: LabeledObject, predicted: Mapping[int, tuple[float, float]], sigmas: list[float]) -> float | None:
    """COCO's object keypoint similarity of a prediction (keypoint index → pixels) with a label; None: nothing shared.

    The object's area is its box's times AREA_FACTOR, as Ultralytics' validator (and `poseops.sigmas`) take it."""
    return object_keypoint_similarity(((p, predicted[i], sigmas[i]) for i, p in enumerate(label.points)
                                       if p is not None and i in predicted), object_area(label.box[2], label.box[3]))


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = w * h
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def model_flags(skeleton: Skeleton, objects: Iterable[LabeledObject],
                detect: Callable[[Any], list[dict[str, Any]]]) -> list[Flag]:
    """Labels a confident detection of the same class overlaps but whose keypoints it places elsewhere.

    `detect(task_id)` gives the service's detections of the task's image (pixels, as `/detect`
    answers). Objects the model does not find with confidence are not judged.
    """
    sigmas, flags = skeleton.oks_sigmas, []
    by_task: dict[Any, list[LabeledObject]] = defaultdict(list)
    for o in objects:
        by_task[o.task_id].append(o)
    for task_id, labels in by_task.items():
        detections = [d for d in detect(task_id) if float(d.get("confidence", 0)) >= MODEL_MIN_CONF]
        for label in labels:
            cls = skeleton.get(label.class_name)
            best = None
            for d in detections:
                box = (float(d["x"]), float(d["y"]), float(d["width"]), float(d["height"]))
                if d.get("class") != label.class_name or _iou(box, label.box) < MODEL_MIN_IOU:
                    continue
                found = {k["name"]: k for k in d.get("keypoints") or []}
                predicted = {i: (float(found[n]["x"]), float(found[n]["y"])) for i, n in enumerate(cls.keypoint_names)
                             if n in found}
                score = oks(label, predicted, sigmas)
                if score is not None and (best is None or score > best[0]):
                    best = (score, float(d["confidence"]))
            if best is not None and best[0] < MODEL_MAX_OKS:
                flags.append(Flag(task_id, label.index, label.class_name, CHECK_MODEL,
                                  f"the model (confidence {best[1]:.2f}) places the keypoints elsewhere: OKS "
                                  f"{best[0]:.2f} between label and prediction"))
    return flags


# --- at pull time ---------------------------------------------------------------------------------------------


def run_checks(skeleton: Skeleton, labeled: list[dict], images: Mapping[Any, Path],
               model_url: str | None = None) -> LabelChecks:
    """Every check on a pull's labeled tasks (and the deployed model's opinion, with `model_url`; its API key, when
    it asks for one, from POSEOPS_API_KEY)."""
    objects = task_objects(skeleton, labeled, images)
    checks = check_labels(skeleton, objects)
    checks.checked_tasks = len(labeled)
    if model_url:
        from poseops.client import DetectClient

        with DetectClient(model_url, api_key=os.environ.get("POSEOPS_API_KEY")) as client:  # as `poseops detect`
            checks.flags += model_flags(skeleton, objects, lambda task_id: client.detect(images[task_id].read_bytes()))
        checks.flags.sort(key=lambda f: (str(f.task_id), f.object_index, f.check))
    return checks


def tag_tasks(client, tasks: Iterable[dict], checks: LabelChecks) -> int:
    """Write each task's flags into its data field `poseops_checks` (cleared where none is left); how many changed.

    Only the task's data changes: its annotations, predictions and image stay as they are.
    """
    changed = 0
    for task in tasks:
        data = task.get("data") or {}
        wanted = checks.tag_of(task["id"])
        if (data.get(TASK_FIELD) or "") == wanted:
            continue
        client.json("PATCH", f"/api/tasks/{task['id']}", json={"data": {**data, TASK_FIELD: wanted}})
        changed += 1
    return changed


def refusal(checks: LabelChecks, max_flagged: float, dataset: str) -> str | None:
    """Why the pull stops (more flagged tasks than `pull.max_flagged` allows), or None."""
    flagged = checks.flagged_tasks
    if not checks.checked_tasks or len(flagged) <= max_flagged * checks.checked_tasks:
        return None
    ids = ", ".join(map(str, flagged[:30])) + (" ..." if len(flagged) > 30 else "")
    return (f"label checks: {checks.summary()} in {dataset!r}, more than pull.max_flagged = {max_flagged:g} of them "
            f"(task ids: {ids}). They are tagged in Label Studio: filter the Data Manager on the column "
            f"{TASK_FIELD!r}, fix the labels there, then pull again; if the labels are right, raise pull.max_flagged "
            "in params.yaml (1: never refuse).")
