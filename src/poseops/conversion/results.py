"""One annotation's Label Studio `result` list ↔ poses, both directions.

Writing (`pose_to_results`): a pose becomes its box region, then one region per labeled
keypoint (`parentID` = the box), each occluded one followed by its visibility choice. A
pose of a class with `box: derived` gets no box region: its keypoints are tied to its
first labeled keypoint by `parentID` (one instance).
Reading (`results_to_poses`) is the exact inverse, and reports every region it cannot use;
boxes of derived classes are derived from their keypoints (`derived`).
The regions of each tag are written and read in its own module: `rectangle`, `keypoint`,
`visibility`, `relation`.
"""

from __future__ import annotations

from typing import Any

from poseops.conversion import keypoint, rectangle, relation, visibility
from poseops.conversion.derived import Loose, derived_pose, loose_instances
from poseops.conversion.poses import MISSING, Pose
from poseops.conversion.rectangle import Box
from poseops.conversion.report import DROPPED_REGION, DROPPED_TASK, Problem
from poseops.conversion.vocab import ID_TYPES, Vocab, vocab
from poseops.label_config import IMAGE
from poseops.skeleton import Skeleton

# --- writing ---------------------------------------------------------------------------


def pose_to_results(
    skeleton: Skeleton,
    pose: Pose,
    original_width: int,
    original_height: int,
    region_id: str,
) -> list[dict]:
    """The Label Studio result regions of one pose: its box, then its labeled keypoints (parentID = box).

    A class with `box: derived` has no box region: its keypoints' parentID is the pose's first labeled keypoint.
    """
    common = {"to_name": IMAGE, "original_width": original_width, "original_height": original_height, "image_rotation": 0}
    cls = skeleton.get(pose.class_name)
    results = [rectangle.box_region(pose, region_id, common)] if cls.box_drawn else []
    parent: str | None = region_id if cls.box_drawn else None
    for i, (kx, ky, v) in enumerate(pose.keypoints):
        if v <= 0:
            continue
        kp_id = f"{region_id}_{i}"
        geometry = keypoint.keypoint_geometry(kx, ky)
        label = skeleton.keypoint_label(cls.name, cls.keypoints[i].name)
        score = pose.keypoint_confidences[i] if pose.keypoint_confidences is not None else None
        region = keypoint.keypoint_region(kp_id, parent or "", label, geometry, common, score)
        if parent is None:
            del region["parentID"]  # the instance's first keypoint; the others name it
            parent = kp_id
        results.append(region)
        if v == 1:
            results.append(visibility.occluded_choice(kp_id, geometry, common))
    return results


def poses_to_results(skeleton: Skeleton, poses: list[Pose], original_width: int, original_height: int,
                     prefix: str = "r") -> list[dict]:
    """Regions of several poses, ids `<prefix><n>` for the boxes and `<prefix><n>_<k>` for their keypoints."""
    results: list[dict] = []
    for n, pose in enumerate(poses):
        results += pose_to_results(skeleton, pose, original_width, original_height, f"{prefix}{n}")
    return results


# --- reading ---------------------------------------------------------------------------


def results_to_poses(skeleton: Skeleton, results: Any, task_id: Any = None) -> tuple[list[Pose], list[Problem]]:
    """The poses of one annotation's Label Studio `result` list, and what could not be used.

    Boxes come in result order. Keypoints join their box through `parentID`; one without
    `parentID` joins the one box of a class that has its label and contains it. A problem
    with `dropped == "task"` (a rotated image) means no poses are returned at all.
    """
    return convert_results(vocab(skeleton), results, task_id)


class _Regions:
    """An annotation's regions sorted by tag: boxes read, keypoints waiting for every box to be known."""

    __slots__ = ("boxes", "dropped_boxes", "keypoints", "orphans", "occluded", "loose")

    def __init__(self) -> None:
        self.loose = Loose()  # keypoints no drawn box holds, and the links between keypoints
        self.boxes: dict[Any, Box] = {}
        self.dropped_boxes: set[Any] = set()
        self.keypoints: list[dict] = []  # with parentID
        self.orphans: list[dict] = []  # without: placed after those with one, so an explicit link wins over a guess
        self.occluded: set[Any] = set()  # ids of keypoint regions with the visibility choice "occluded"


def convert_results(v: Vocab, results: Any, task_id: Any) -> tuple[list[Pose], list[Problem]]:
    """`results_to_poses` with the skeleton's vocabulary already computed."""
    if not isinstance(results, list):
        return [], [Problem(task_id, "bad_result", f"the annotation's 'result' is {type(results).__name__}, "
                            "not a list of regions; re-export the project as JSON", dropped=DROPPED_TASK)]
    problems: list[Problem] = []
    regions = _Regions()
    for n, r in enumerate(results):
        refused = _sort_region(v, n, r, task_id, regions, problems)
        if refused is not None:
            return [], [refused]
    loose = regions.loose
    loose.linked.update(r["parentID"] for r in regions.keypoints
                        if type(r["parentID"]) in ID_TYPES and r["parentID"] in loose.keypoint_ids)
    keypoint_ids: set[Any] = set()
    for r in regions.keypoints + regions.orphans:
        problem = keypoint.place_keypoint(v, r, task_id, regions.boxes, regions.dropped_boxes, regions.occluded,
                                          keypoint_ids, loose)
        if problem is not None:
            problems.append(problem)
    problems += visibility.stray_choices(task_id, regions.occluded, keypoint_ids)
    poses = _box_poses(v, regions, task_id, problems)
    if loose.points:
        more, loose_problems = loose_instances(v, loose, task_id)
        poses += more
        problems += loose_problems
    return poses, problems


def _box_poses(v: Vocab, regions: _Regions, task_id: Any, problems: list[Problem]) -> list[Pose]:
    """The poses of the drawn boxes, in result order; a box drawn for a `derived` class only groups its points."""
    poses = []
    for b in regions.boxes.values():
        if b.cls not in v.derived:
            poses.append(Pose(b.cls, (b.x, b.y, b.w, b.h), tuple(kp if kp is not None else MISSING for kp in b.kps)))
            continue
        pose, problem = derived_pose(v, b.cls, b.kps, task_id, f"box {b.id!r}")
        if problem is not None:
            problems.append(Problem(task_id, problem.kind, problem.message, label=b.cls, region_id=b.id,
                                    dropped=problem.dropped))
        else:
            poses.append(pose)  # type: ignore[arg-type]
    return poses


def _sort_region(v: Vocab, n: int, r: Any, task_id: Any, regions: _Regions, problems: list[Problem]) -> Problem | None:
    """Read result #n into `regions` (boxes at once); a Problem when it refuses the whole task (a rotated image)."""
    if type(r) is not dict:
        problems.append(Problem(task_id, "bad_region", f"result #{n} is {type(r).__name__}, not a region object",
                                dropped=DROPPED_REGION))
        return None
    rotation = r.get("image_rotation")
    if rotation:  # 0, 0.0, None and a missing field are all fine
        return Problem(task_id, "rotated_image",
                       f"region {r.get('id')!r} was drawn on the image rotated by {rotation!r} degrees; the converter "
                       "only takes unrotated images: rotate the image back to 0 in Label Studio and fix the regions, "
                       "or rotate the file itself before importing it", region_id=r.get("id"), dropped=DROPPED_TASK)
    kind = r.get("type")
    if kind == rectangle.REGION_TYPE:
        box = rectangle.read_box(v, r, task_id, problems, regions.boxes, regions.dropped_boxes)
        if box is not None:
            regions.boxes[box.id] = box
    elif kind == keypoint.REGION_TYPE:
        parent = r.get("parentID")
        (regions.orphans if parent is None or parent == "" else regions.keypoints).append(r)
        if type(r.get("id")) in ID_TYPES:
            regions.loose.keypoint_ids.add(r["id"])
    elif kind == relation.REGION_TYPE:
        problem = relation.read_relation(r, n, task_id, regions.loose.edges, regions.loose.linked)
        if problem is not None:
            problems.append(problem)
    elif visibility.is_visibility(r):
        problem = visibility.read_visibility(r, n, task_id, regions.occluded)
        if problem is not None:
            problems.append(problem)
    else:
        problems.append(Problem(task_id, "ignored_region",
                                f"region {r.get('id')!r} of type {kind!r} from {r.get('from_name')!r} is not a "
                                "box, keypoint or visibility choice; ignored", region_id=r.get("id"),
                                dropped=DROPPED_REGION))
    return None
