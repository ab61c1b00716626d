"""Labeled images as Label Studio annotations: the result regions of one image, or whole tasks as in an export."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from poseops.conversion.results import poses_to_results
from poseops.importing.labeled import LabeledImage
from poseops.skeleton import Skeleton


def image_results(skeleton: Skeleton, image: LabeledImage) -> list[dict]:
    """The Label Studio result regions of one labeled image (for `annotations.create(result=...)`)."""
    return poses_to_results(skeleton, list(image.poses), image.width, image.height)


def to_label_studio_tasks(
    skeleton: Skeleton,
    images: Iterable[LabeledImage],
    *,
    first_id: int = 1,
    image_url: Callable[[LabeledImage], str] | None = None,
) -> list[dict]:
    """Label Studio tasks (as in a JSON export), one per image, each with one annotation of its poses.

    Task and annotation ids count from `first_id`; `data.image` is `image_url(image)`,
    by default the file name.
    """
    tasks = []
    for n, image in enumerate(images):
        tid = first_id + n
        tasks.append({
            "id": tid,
            "data": {"image": image_url(image) if image_url else image.file_name},
            "annotations": [{"id": tid, "result": image_results(skeleton, image), "was_cancelled": False,
                             "ground_truth": False}],
        })
    return tasks
