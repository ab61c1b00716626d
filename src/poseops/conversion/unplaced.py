"""Labeled keypoints that reach no object: the pull and `poseops convert` refuse them.

A keypoint of a class whose boxes are drawn (`box: labeled`) that has no parent box and
lies in no box of its class cannot become training data. Dropping it would lose what
was labeled (a class labeled the DeepLabCut way, points without boxes, would become an
empty dataset), so such labels are refused with the tasks concerned and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from poseops.conversion.annotations import choose_annotation
from poseops.conversion.results import convert_results
from poseops.conversion.vocab import vocab
from poseops.skeleton import Skeleton

UNPLACED_KINDS = frozenset({"orphan_keypoint"})
SHOWN_IDS = 20


@dataclass(frozen=True)
class Unplaced:
    """The keypoints that reach no object: how many, in which tasks, of which classes."""

    keypoints: int
    task_ids: tuple[Any, ...]
    classes: tuple[str, ...]  # the classes with those keypoints' labels, in spec order

    def __bool__(self) -> bool:
        return self.keypoints > 0

    def message(self, spec: str, then: str) -> str:
        """Why the labels are refused and what to do; `then` is the command to run again."""
        ids = ", ".join(map(str, self.task_ids[:SHOWN_IDS])) + (" ..." if len(self.task_ids) > SHOWN_IDS else "")
        classes = ", ".join(repr(c) for c in self.classes)
        return (f"{self.keypoints} labeled keypoint(s) in {len(self.task_ids)} task(s) reach no object (task ids: "
                f"{ids}): they have no parent box and lie in no box of their class ({classes}), so they would be "
                f"lost. Label the boxes (or attach each point to its box) in Label Studio, or, if the class is "
                f"labeled without boxes, set `box: derived` for class {classes} in {spec}; then {then}.")


def unplaced_keypoints(skeleton: Skeleton, tasks: Iterable[dict]) -> Unplaced:
    """The keypoints of the tasks' chosen annotations that reach no object (no box, no derivation)."""
    v = vocab(skeleton)
    count = 0
    task_ids: list[Any] = []
    labels: set[str] = set()
    for task in tasks:
        if type(task) is not dict:
            continue
        annotation, _ = choose_annotation(task)
        if annotation is None:
            continue
        _, problems = convert_results(v, annotation.get("result"), task.get("id"))
        lost = [p for p in problems if p.kind in UNPLACED_KINDS]
        if lost:
            count += len(lost)
            task_ids.append(task.get("id"))
            labels.update(p.label for p in lost if p.label)
    classes = tuple(c for c in skeleton.class_names if any(c in v.label_classes.get(label, ()) for label in labels))
    return Unplaced(count, tuple(task_ids), classes)
