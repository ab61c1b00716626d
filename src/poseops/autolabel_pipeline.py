"""Autolabel as a pipeline: image fetch, decoding, the model and the Label Studio write overlap.

    fetch (FETCH_AT_LEAST tasks or more at a time, `ahead` fetches in flight) → load (one thread: read, check, decode)
        → bounded queue → detect (the caller's thread: the one model of this process)
        → write (WRITE_AT_LEAST predictions or more at a time, at most `ahead` writes in flight)

The fetch and the write are given as functions that return futures (the autolabel flow submits its
Prefect tasks, with their retries), so this module knows nothing of Prefect. Only the model's
thread waits on the model: fetching the next batches, decoding their images and writing the last
ones happen meanwhile, so a run's steady state is bound by inference. The queue between the
loader and the model holds at most two batches of decoded images. Label Studio spends a fixed tens of
milliseconds of CPU on every write request (besides about a millisecond a prediction), and each fetch
or write is a Prefect task run, CPU the model shares on a small machine: so images are fetched and
predictions written many batches at a time (the first fetch is one batch, so the model starts at once).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poseops.autolabel import AutolabelOptions, AutolabelReport, Detections, keep_thumbnail, prediction_of, record_write
from poseops.datasets import image_size
from poseops.imageio import check_within_budget
from poseops.neighbour_frames import neighbours_of
from poseops.skeleton import Skeleton

Predicted = tuple[dict, list[dict], float]  # task, result regions, score
WRITE_AT_LEAST = 128  # predictions in one write request (the last one of a run: what is left)
FETCH_AT_LEAST = 64  # tasks in one fetch, whole batches (the first fetch: the first batch alone)


class PipelineModel:
    """What the pipeline runs: `load` (in the loader thread) makes a path ready for `detect` (in the model's)."""

    def load(self, path: Path) -> Any:
        raise NotImplementedError

    def detect(self, image: Any) -> Detections:
        raise NotImplementedError

    def mirrored(self, image: Any) -> Any:
        """The mirror image of a loaded image (for the flip score)."""
        import cv2

        return cv2.flip(image, 1)


class LocalModel(PipelineModel):
    """The model in this process: the loader decodes (OpenCV, EXIF orientation applied), the model only infers."""

    def __init__(self, model: Any, options: AutolabelOptions):
        self.model, self.options = model, options

    def load(self, path: Path) -> Any:
        import cv2
        import numpy as np

        content = path.read_bytes()
        check_within_budget(content)  # before OpenCV decodes anything: refused from its header, reported per task
        image = cv2.imdecode(np.frombuffer(content, np.uint8), cv2.IMREAD_COLOR)
        if image is None:
            raise ValueError(f"{path.name}: not an image OpenCV can decode")
        return image

    def detect(self, image: Any) -> Detections:
        return self.model.detect(image, self.options.conf_thres, self.options.iou_thres)

@dataclass
class PipelineTimes:
    """Where the model's thread spent a run: what is not waiting is the model's (and the regions' making)."""

    total: float = 0.0
    waiting_for_images: float = 0.0  # the loader (fetch, decode) was behind
    waiting_for_writes: float = 0.0  # more than `ahead` writes were in flight, or the last ones at the end

    def summary(self) -> str:
        busy = self.total - self.waiting_for_images - self.waiting_for_writes
        return (f"{self.total:.1f} s: the model busy {busy:.1f} s, waiting {self.waiting_for_images:.1f} s for images "
                f"and {self.waiting_for_writes:.1f} s for Label Studio's writes")


@dataclass
class _Loaded:
    task: dict
    image: Any = None
    size: tuple[int, int] = (0, 0)
    error: str | None = None


@dataclass
class _BatchEnd:
    batch: list[dict]
    error: BaseException | None = None  # the batch's fetch failed (after its retries)
    ends_fetch: bool = False  # the last batch of its fetch: time to ask for the next one


def fetch_groups(batches: list[list[dict]], at_least: int) -> list[list[list[dict]]]:
    """Consecutive batches fetched together, `at_least` tasks a fetch (the first: the first batch alone)."""
    groups: list[list[list[dict]]] = []
    group: list[list[dict]] = []
    for batch in batches:
        group.append(batch)
        if not groups or sum(map(len, group)) >= at_least:
            groups.append(group)
            group = []
    return [*groups, group] if group else groups


def run_pipeline(
    batches: list[list[dict]],
    fetch: Callable[[list[dict]], Future],  # → Future[dict[task id, Path]]
    write: Callable[[list[Predicted]], Future],  # → Future[None]
    model: PipelineModel,
    skeleton: Skeleton,
    options: AutolabelOptions,
    report: AutolabelReport,
    ahead: int = 2,
    on_batch: Callable[[int, int, int], None] | None = None,  # (batches done, batches, predicted in this one)
    write_at_least: int = WRITE_AT_LEAST,
    fetch_at_least: int = FETCH_AT_LEAST,
) -> PipelineTimes:
    """Label every batch; per-task failures (image, decode, detect, write) go into `report`, the rest goes on.

    A fetch that fails after its retries stops the run with its error, as a failed batch task did (the
    predictions made before it are written).
    """
    fetches: queue.Queue = queue.Queue()
    loaded: queue.Queue = queue.Queue(maxsize=2 * max(len(b) for b in batches) + 2) if batches else queue.Queue()
    stop = threading.Event()
    groups = fetch_groups(batches, fetch_at_least)
    submitted = 0

    def submit_fetch() -> None:  # on the caller's thread (a Prefect task is submitted from its flow's)
        nonlocal submitted
        if submitted < len(groups):
            group = groups[submitted]
            fetches.put((group, fetch([task for batch in group for task in batch])))
            submitted += 1

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                loaded.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def load(task: dict, paths: dict) -> _Loaded:
        item = _Loaded(task)
        path = paths.get(task["id"])
        try:
            if path is None:
                raise ValueError("its image was not fetched")
            item.size, item.image = image_size(path), model.load(path)
        except Exception as e:  # noqa: BLE001 - one bad image must not stop the run; it is reported
            item.error = f"{type(e).__name__}: {e}"
        return item

    def loader() -> None:
        for _ in groups:
            while True:
                try:
                    group, future = fetches.get(timeout=0.5)
                    break
                except queue.Empty:
                    if stop.is_set():
                        return
            try:
                paths = future.result()
            except BaseException as e:  # noqa: BLE001 - handed to the model's thread, which raises it
                put(_BatchEnd(group[0], e))
                return
            for batch in group:
                if not all(put(load(task, paths)) for task in batch):
                    return
                if not put(_BatchEnd(batch, ends_fetch=batch is group[-1])):
                    return

    for _ in range(ahead):
        submit_fetch()
    thread = threading.Thread(target=loader, name="autolabel-loader", daemon=True)
    thread.start()
    writes: deque[tuple[list[Predicted], Future]] = deque()  # in flight, oldest first
    times = PipelineTimes()
    started = time.perf_counter()
    try:
        predicted: list[Predicted] = []  # not written yet
        in_batch = done = 0
        while done < len(batches):
            waited = time.perf_counter()
            item = _next(loaded, thread)
            times.waiting_for_images += time.perf_counter() - waited
            if isinstance(item, _BatchEnd):
                if item.error is not None:
                    raise item.error
                done += 1
                if item.ends_fetch:
                    submit_fetch()
                if predicted and (len(predicted) >= write_at_least or done == len(batches)):
                    writes.append((predicted, write(predicted)))
                    predicted = []
                if on_batch:
                    on_batch(done, len(batches), in_batch)
                in_batch = 0
                waited = time.perf_counter()
                while len(writes) > ahead:
                    _collect(writes.popleft(), report)
                times.waiting_for_writes += time.perf_counter() - waited
                continue
            if item.error is None:
                try:
                    detections = model.detect(item.image)
                    image = item.image
                    result, score = prediction_of(skeleton, detections, *item.size, options,
                                                  lambda: model.detect(model.mirrored(image)),  # noqa: B023
                                                  neighbours_of(item.task.get("data"), lambda: image,  # noqa: B023
                                                                options.video_dirs, model.detect))
                    keep_thumbnail(report, item.task["id"], image, options)
                    predicted.append((item.task, result, score))
                    in_batch += 1
                    continue
                except Exception as e:  # noqa: BLE001 - reported per task, like a bad image
                    item.error = f"{type(e).__name__}: {e}"
            report.failed[item.task["id"]] = item.error
    finally:
        stop.set()
        thread.join(timeout=5)
        if predicted:  # stopped by a failed fetch: what was predicted before it is written still
            writes.append((predicted, write(predicted)))
        waited = time.perf_counter()
        while writes:
            _collect(writes.popleft(), report)
        times.waiting_for_writes += time.perf_counter() - waited
        times.total = time.perf_counter() - started
    return times


def _next(loaded: queue.Queue, loader: threading.Thread) -> Any:
    """The loader's next item; an error if it stopped without handing one over (it never should)."""
    while True:
        try:
            return loaded.get(timeout=1.0)
        except queue.Empty:
            if not loader.is_alive() and loaded.empty():
                raise RuntimeError("the autolabel loader thread stopped before the last batch") from None


def _collect(write: tuple[list[Predicted], Future], report: AutolabelReport) -> None:
    """Wait for one batch's write; a refused one (after its retries) is reported for each of its tasks."""
    predicted, future = write
    try:
        future.result()
    except Exception as e:  # noqa: BLE001 - reported per task, like a failed image
        record_write(report, predicted, e)
        return
    record_write(report, predicted)
