"""Boxes derived from keypoints (`box: derived` or `either` in the skeleton spec).

Keypoints that no drawn box holds are grouped into instances: points linked by Label
Studio relations (`type: relation`, `from_id` → `to_id`) or by `parentID` naming another
keypoint form one instance; the points of a class linked to no other point together form
one more instance of that class (one animal per image needs no links at all). Each
instance's box is the min/max of its labeled points, widened on each side by the class's
`box_padding` times the points' extent on that axis, and clipped to the image.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from poseops.conversion.poses import MISSING, Keypoint, Pose
from poseops.conversion.report import DROPPED_KEYPOINT, DROPPED_OBJECT, Problem
from poseops.conversion.vocab import Vocab

MIN_POINTS = 2  # a box is derived from at least this many labeled keypoints


@dataclass(slots=True)
class LoosePoint:
    """A keypoint that joined no drawn box and may belong to a class with derived boxes."""

    id: Any
    label: str
    index: int
    x: float
    y: float
    v: int
    parent: Any = None  # the keypoint its parentID names, if any


@dataclass
class Loose:
    """An annotation's loose keypoints and the links between keypoints (relations, keypoint parentIDs)."""

    keypoint_ids: set = field(default_factory=set)  # every keypoint region's id in the annotation
    linked: set = field(default_factory=set)  # ids of keypoints in a link: they never join a box by containment
    edges: list[tuple[Any, Any]] = field(default_factory=list)
    points: list[LoosePoint] = field(default_factory=list)


def derive_box(points: list[tuple[float, float]], padding: float) -> tuple[float, float, float, float]:
    """x, y, w, h (normalized) of the points' min/max widened by `padding` × their extent per side, clipped to 0..1."""
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    x0, x1, y0, y1 = min(xs), max(xs), min(ys), max(ys)
    px, py = padding * (x1 - x0), padding * (y1 - y0)
    x0, x1 = max(0.0, x0 - px), min(1.0, x1 + px)
    y0, y1 = max(0.0, y0 - py), min(1.0, y1 + py)
    return x0, y0, x1 - x0, y1 - y0


def derived_pose(v: Vocab, cls: str, kps: list[Keypoint | None], task_id: Any, where: str) -> tuple[Pose | None, Problem | None]:
    """The pose of one instance with its derived box; None and the problem when no box can be derived."""
    labeled = [(k[0], k[1]) for k in kps if k is not None and k[2] > 0]
    if len(labeled) < MIN_POINTS:
        return None, Problem(task_id, "too_few_keypoints", f"{where} of class {cls!r} has {len(labeled)} labeled keypoint(s); "
                             f"its box is derived from at least {MIN_POINTS}: label more of its points, link them to "
                             "the animal's other points, or delete it", dropped=DROPPED_OBJECT)
    box = derive_box(labeled, v.derivable[cls])
    if box[2] <= 0 or box[3] <= 0:
        return None, Problem(task_id, "empty_box", f"{where} of class {cls!r}: its keypoints lie on one line, so the "
                             "derived box has no area; label more of its points", dropped=DROPPED_OBJECT)
    return Pose(cls, box, tuple(k if k is not None else MISSING for k in kps)), None


def loose_instances(v: Vocab, loose: Loose, task_id: Any) -> tuple[list[Pose], list[Problem]]:
    """The instances of the loose keypoints, in the order of their first point, and what could not be used."""
    groups = _components(loose)
    problems: list[Problem] = []
    instances: list[tuple[str, list[LoosePoint]]] = []
    rest: dict[str, list[LoosePoint]] = {}  # per class: the points linked to no other point
    for group in groups:
        classes = set(v.derivable)
        for p in group:
            classes &= v.label_classes[p.label]
        ids = ", ".join(repr(p.id) for p in group)
        if len(classes) != 1:
            why = "belong to no one class with derived boxes" if not classes else \
                f"fit several classes ({', '.join(sorted(classes))})"
            problems.append(Problem(task_id, "ambiguous_instance", f"keypoint(s) {ids} ({', '.join(p.label for p in group)}) "
                                    f"{why}; link each animal's points only to its own points", label=group[0].label,
                                    region_id=group[0].id, dropped=DROPPED_OBJECT))
            continue
        (cls,) = classes
        if len(group) == 1:
            rest.setdefault(cls, []).append(group[0])
        else:
            instances.append((cls, group))
    for cls, points in rest.items():
        labels = [p.label for p in points]
        repeated = sorted({label for label in labels if labels.count(label) > 1})
        if repeated:
            problems.append(Problem(task_id, "unlinked_instances", f"{len(points)} keypoints of class {cls!r} are linked "
                                    f"to no other point and repeat {', '.join(map(repr, repeated))}: the image shows "
                                    "several animals; link each animal's points with relations (see docs/labeling.md)",
                                    label=repeated[0], region_id=points[0].id, dropped=DROPPED_OBJECT))
            continue
        instances.append((cls, points))
    first = {id(p): n for n, p in enumerate(loose.points)}
    instances.sort(key=lambda item: min(first[id(p)] for p in item[1]))
    poses = []
    for cls, points in instances:
        pose = _instance(v, cls, points, task_id, problems)
        if pose is not None:
            poses.append(pose)
    return poses, problems


def _instance(v: Vocab, cls: str, points: list[LoosePoint], task_id: Any, problems: list[Problem]) -> Pose | None:
    kps: list[Keypoint | None] = [None] * v.keypoint_count
    for p in points:
        if kps[p.index] is not None:
            problems.append(Problem(task_id, "duplicate_keypoint", f"keypoint {p.id!r} ({p.label}) is the second "
                                    f"{p.label!r} of its instance; the first one is kept", label=p.label,
                                    region_id=p.id, dropped=DROPPED_KEYPOINT))
            continue
        kps[p.index] = (p.x, p.y, p.v)
    pose, problem = derived_pose(v, cls, kps, task_id, f"the instance of keypoint {points[0].id!r}")
    if problem is not None:
        problems.append(Problem(task_id, problem.kind, problem.message, label=points[0].label, region_id=points[0].id,
                                dropped=problem.dropped))
    return pose


def _components(loose: Loose) -> list[list[LoosePoint]]:
    """The loose points connected by links among themselves, each group in annotation order."""
    by_id = {p.id: p for p in loose.points}
    root: dict[Any, Any] = {pid: pid for pid in by_id}

    def find(a: Any) -> Any:
        while root[a] != a:
            root[a] = root[root[a]]
            a = root[a]
        return a

    links = list(loose.edges) + [(p.id, p.parent) for p in loose.points if p.parent is not None]
    for a, b in links:
        if a in by_id and b in by_id:
            root[find(a)] = find(b)
    groups: dict[Any, list[LoosePoint]] = {}
    for p in loose.points:
        groups.setdefault(find(p.id), []).append(p)
    return list(groups.values())
