"""Labels in the source's own names mapped onto a dataset's skeleton, by class and keypoint name.

Every class of the source must reach a class of the skeleton (same name; or the only class
when both sides have one; or `old=new`), and its keypoint names must be exactly the class's:
a name missing on either side is an error that lists both sides. `old=new` renames a class
or keypoint, `old=` leaves it out on purpose. Keypoints without names (a YOLO data.yaml
without `kpt_names`) are taken in the skeleton's order, when their number matches.

Boxes: a class whose boxes are drawn keeps the source's box; a `derived` class gets its
points only (the pull derives the box), an `either` class without source boxes a box
derived here by the same rule. An object that cannot have a box (fewer than two labeled
points, or all on one line) leaves its image out, counted, since the pull would leave it out.
"""

from __future__ import annotations

from dataclasses import dataclass

from poseops.conversion.derived import MIN_POINTS, derive_box
from poseops.conversion.poses import MISSING, Pose
from poseops.importing.labeled import DatasetError, LabeledImage, LabeledSet, Skip
from poseops.skeleton import Skeleton, SkeletonClass

Renames = dict[str, str | None]  # source name -> skeleton name; None: left out


def parse_renames(items: list[str] | None) -> Renames:
    """`["old=new", "gone="]` -> {"old": "new", "gone": None}; DatasetError on anything else."""
    renames: Renames = {}
    for item in items or []:
        old, sep, new = item.partition("=")
        if not sep or not old.strip():
            raise DatasetError(f"--map {item!r}: write OLD=NEW to rename a class or keypoint, or OLD= to leave it out")
        if old.strip() in renames:
            raise DatasetError(f"--map names {old.strip()!r} twice")
        renames[old.strip()] = new.strip() or None
    return renames


@dataclass(frozen=True)
class ClassMapping:
    source: str
    target: SkeletonClass | None  # None: the class is left out (`--map NAME=`)
    indices: tuple[int | None, ...]  # per source keypoint: its index in the target class, None when left out


def plan(labeled: LabeledSet, skeleton: Skeleton, renames: Renames, class_name: str | None = None) -> dict[str, ClassMapping]:
    """How each source class maps onto the skeleton; DatasetError saying what does not fit and how to map it."""
    unused = set(renames)
    plans = {}
    for source, names in labeled.schema.items():
        target = _target_class(source, labeled, skeleton, renames, class_name)
        unused.discard(source)
        if target is None:
            plans[source] = ClassMapping(source, None, ())
            continue
        if not labeled.has_boxes and target.box == "labeled":
            raise DatasetError(f"{labeled.format} labels have points only, no boxes, and class {target.name!r} of "
                               f"{skeleton.source} draws its boxes (box: labeled): set `box: derived` (or `either`) for "
                               "it in the spec, so its boxes are derived from the points")
        if all(n is None for n in names):
            plans[source] = ClassMapping(source, target, _by_position(source, len(names), target, skeleton))
            continue
        unused -= set(names)
        plans[source] = ClassMapping(source, target, _by_name(source, names, target, skeleton, renames))
    if unused:
        raise DatasetError(f"--map names {', '.join(sorted(map(repr, unused)))}, which the labels do not have "
                           f"(classes: {_listed(labeled.schema)}; keypoints: "
                           f"{_listed({n for names in labeled.schema.values() for n in names if n})})")
    return plans


def _target_class(source: str, labeled: LabeledSet, skeleton: Skeleton, renames: Renames,
                  class_name: str | None) -> SkeletonClass | None:
    shown = repr(source) if source else f"of the {labeled.format} labels"
    if source in renames:
        if renames[source] is None:
            return None
        name = renames[source]
    elif class_name is not None:
        name = class_name
    elif source in skeleton.class_names:
        name = source
    elif len(skeleton.classes) == 1 and len(labeled.schema) == 1:
        name = skeleton.class_names[0]
    else:
        raise DatasetError(f"class {shown} is not in {skeleton.source} (classes: {', '.join(skeleton.class_names)}): "
                           + ("name the class with --class NAME" if not source else f"map it with --map {source}=CLASS"))
    try:
        return skeleton.get(name)  # type: ignore[arg-type]
    except KeyError as e:
        raise DatasetError(e.args[0]) from None


def _by_position(source: str, count: int, target: SkeletonClass, skeleton: Skeleton) -> tuple[int | None, ...]:
    if count != len(target.keypoints):
        raise DatasetError(f"the labels' class {source!r} has {count} unnamed keypoints, class {target.name!r} of "
                           f"{skeleton.source} {len(target.keypoints)} ({', '.join(target.keypoint_names)}); unnamed "
                           "keypoints are taken in the skeleton's order, so the numbers must match (or name them: "
                           "kpt_names in data.yaml)")
    return tuple(range(count))


def _by_name(source: str, names: tuple, target: SkeletonClass, skeleton: Skeleton, renames: Renames) -> tuple[int | None, ...]:
    mapped = [renames.get(n, n) for n in names]
    kept = [n for n in mapped if n is not None]
    wanted = target.keypoint_names
    twice = sorted({n for n in kept if kept.count(n) > 1})
    missing = [n for n in wanted if n not in kept]
    extra = [n for n in kept if n not in wanted]
    if twice or missing or extra:
        shown = f"class {source!r}" if source else "the labels"
        raise DatasetError(
            f"the keypoints of {shown} do not fit class {target.name!r} of {skeleton.source}. "
            f"The labels' keypoints{' after --map' if renames else ''}: {', '.join(kept) or '(none)'}. "
            f"The skeleton's: {', '.join(wanted)}. "
            + (f"Missing in the labels: {', '.join(missing)}. " if missing else "")
            + (f"Not in the skeleton: {', '.join(extra)}. " if extra else "")
            + (f"Named twice: {', '.join(twice)}. " if twice else "")
            + "Rename a keypoint with --map OLD=NEW (repeatable), leave one out with --map OLD=, or change the spec")
    return tuple(None if n is None else target.index(n) for n in mapped)


def _listed(names) -> str:
    return ", ".join(sorted(n for n in names if n)) or "(unnamed)"


def map_onto(labeled: LabeledSet, skeleton: Skeleton, renames: Renames | None = None,
             class_name: str | None = None) -> tuple[list[LabeledImage], list[Skip]]:
    """The images with their poses in the skeleton's classes and keypoint order, and the images or objects left out."""
    plans = plan(labeled, skeleton, renames or {}, class_name)
    images, skipped = [], list(labeled.skipped)
    for image in labeled.images:
        poses, problem = _mapped_poses(image, plans, labeled.has_boxes, skipped)
        if problem is not None:
            skipped.append(problem)
        else:
            images.append(image._replace(poses=poses))
    return images, skipped


def _mapped_poses(image: LabeledImage, plans: dict[str, ClassMapping], has_boxes: bool,
                  skipped: list[Skip]) -> tuple[list[Pose], Skip | None]:
    poses = []
    for n, pose in enumerate(image.poses, 1):
        mapping = plans[pose.class_name]
        if mapping.target is None:
            skipped.append(Skip(image.file_name, "class_left_out", f"object {n} of class {pose.class_name!r}: left "
                                "out by --map"))
            continue
        cls = mapping.target
        keypoints = [MISSING] * len(cls.keypoints)
        for kp, index in zip(pose.keypoints, mapping.indices, strict=True):
            if index is not None:
                keypoints[index] = kp
        if not has_boxes and not any(v > 0 for _, _, v in keypoints):
            skipped.append(Skip(image.file_name, "points_left_out", f"object {n}: every labeled point of it is left out "
                                "by --map"))
            continue
        box = pose.box
        if cls.box == "derived" or (cls.box_derivable and not has_boxes):
            points = [(x, y) for x, y, v in keypoints if v > 0]
            box = derive_box(points, cls.box_padding) if len(points) >= MIN_POINTS else (0.0, 0.0, 0.0, 0.0)
            if len(points) < MIN_POINTS or box[2] <= 0 or box[3] <= 0:
                why = (f"has {len(points)} labeled keypoint(s)" if len(points) < MIN_POINTS else
                       "has its labeled keypoints on one line")
                return [], Skip(image.file_name, "no_derived_box", f"object {n} ({cls.name}) {why}; its box is derived "
                                f"from at least {MIN_POINTS} points not on one line, so the pull would leave the image "
                                "out: label more of its points, then import again")
        poses.append(Pose(cls.name, box, tuple(keypoints)))
    return poses, None
