"""The diversity quota on the labeling queue: the lowest scores are not all one picture.

Label Studio serves the lowest prediction `score` first. Fifty frames of one still stretch of
video, or a burst of near-identical photos, would all score alike and fill the top of the queue.
After an autolabel run, its tasks are taken in score order; a task with `quota` or more
near-identical tasks before it (the grey-thumbnail distance of `poseops.frames`, the one it
chooses video frames with, below its `NEAR_DUPLICATE`) moves back one tier per `quota` of them: its written
score becomes `tier + score`. Tier 0 (the scores as measured, in [0, 1]) holds at most `quota`
of any group of near-identical pictures, tier 1 the next `quota` of each group, and so on: the
queue goes round the groups instead of through one of them.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from poseops.frames import NEAR_DUPLICATE, distances

CHUNK = 1024  # rows of the distance matrix computed at once (memory: CHUNK x tasks)


def tiers(scores: Mapping[int, float], thumbnails: Mapping[int, np.ndarray], quota: int,
          distance: float = NEAR_DUPLICATE) -> dict[int, int]:
    """Each task's tier: how many `quota`s of near-identical tasks come before it in score order (lowest first).

    Tasks without a thumbnail are compared with none (tier 0); `quota` 0 turns the quota off (all tier 0).
    Thumbnails of different sizes (pictures of other proportions) are never near-identical.
    """
    order = sorted(scores, key=lambda t: (scores[t], t))
    out = dict.fromkeys(order, 0)
    if quota <= 0:
        return out
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for task in order:
        if task in thumbnails:
            by_shape.setdefault(np.shape(thumbnails[task]), []).append(task)
    for tasks in by_shape.values():  # in score order
        x = np.asarray([thumbnails[t] for t in tasks], dtype=np.float64)
        for start in range(0, len(tasks), CHUNK):
            near = distances(x[start:start + CHUNK], x) < distance
            for i, row in enumerate(near, start):
                before = int(np.count_nonzero(row[:i]))  # near-identical tasks earlier in score order
                out[tasks[i]] = before // quota
    return out


def queue_scores(scores: Mapping[int, float], thumbnails: Mapping[int, np.ndarray], quota: int) -> dict[int, float]:
    """The scores to write: `tier + score` (unchanged for tier 0)."""
    tier = tiers(scores, thumbnails, quota)
    return {task: tier[task] + score for task, score in scores.items()}


def rewrite_scores(client, changed: Mapping[int, float], model_version: str, workers: int = 4) -> int:
    """Set the score of each task's prediction of `model_version` to the queue's; how many were changed.

    Label Studio has no bulk update of predictions: two requests a task (find its prediction, set the score),
    `workers` tasks at a time."""
    from concurrent.futures import ThreadPoolExecutor

    def one(task_id: int) -> int:
        done = 0
        for prediction in client.json("GET", "/api/predictions/", params={"task": task_id}):
            if prediction.get("model_version") == model_version:
                client.json("PATCH", f"/api/predictions/{prediction['id']}", json={"score": changed[task_id]})
                done += 1
        return done

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        return sum(pool.map(one, changed))


def apply_quota(client, scores: Mapping[int, float], thumbnails: Mapping[int, np.ndarray], quota: int,
                model_version: str) -> tuple[dict[int, float], int]:
    """The run's scores with the quota applied, written to the tasks it moved back; (scores, tasks moved back)."""
    queued = queue_scores(scores, thumbnails, quota)
    moved = {task: score for task, score in queued.items() if score != scores[task]}
    rewrite_scores(client, moved, model_version)
    return queued, len(moved)
