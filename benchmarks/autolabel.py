"""Autolabel's steady-state throughput against the raw model, and its fixed start-up cost, in one run.

    python -m benchmarks.autolabel [--images 32] [--repeat 3] [--label-studio-url URL --token TOKEN]

raw: the model's own detect over the images in this process, one after the other (model loaded
and warmed up first; its load time is printed on its own).
autolabel: the Prefect flow (find the tasks, fetch their images, detect, write the predictions in
one request a batch) with the model in-process, over two Label Studio projects of the same images:
a small one (a quarter of them) and the full one. A flow run costs a fixed start-up (flow and task
runs, the project's task list) plus a time per image; the two sizes give both: the steady-state
throughput is the extra images over the extra seconds, the start-up is what remains of the small
run. Every flow run labels all tasks of its project under a new model version (after a first run
of each project that is not counted: the images are then in poseops' image cache and the model is
loaded), and raw, small and full runs take turns `--repeat` times; medians count. Without --label-studio-url a
Label Studio is started for the run (its first start migrates for about 90 s, not counted).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import (
    PERSON_SPEC,
    RESULTS,
    SHARED,
    add_label_studio_arguments,
    interleaved,
    label_studio,
    prepare,
)


def bench_images(count: int, work: Path) -> list[Path]:
    from poseops.demo import mirrored_copies

    sources = sorted((SHARED / "datasets" / "coco-mini-train" / "images").glob("*.jpg"))[:count]
    images = sources if len(sources) >= count else sources + mirrored_copies(sources, work / "mirrored")
    return images[:count]


def raw_side(model, decoded: list):
    def run() -> float:
        started = time.perf_counter()
        for image in decoded:
            model.detect(image, 0.25, 0.45)
        return time.perf_counter() - started
    return run


def flow_side(dataset: str, images: int):
    from poseops.flows.autolabel import autolabel

    runs = iter(range(1_000_000))

    def run() -> float:
        version = f"bench-run-{next(runs)}"  # a version the tasks have no prediction of: every task is labeled
        started = time.perf_counter()
        summary = autolabel(dataset=dataset, weights="yolo11n-pose.pt", model_version=version)
        seconds = time.perf_counter() - started
        if summary["predicted"] != images or summary["failed"]:
            raise SystemExit(f"autolabel of {dataset}: {summary['predicted']} of {images} predicted, "
                             f"failed: {summary['failed']}")
        return seconds
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32, help="images in the full project (the small one: a quarter)")
    parser.add_argument("--repeat", type=int, default=3)
    add_label_studio_arguments(parser)
    args = parser.parse_args()
    prepare()
    work = Path(tempfile.mkdtemp(prefix="poseops-bench-"))
    images = bench_images(args.images, work)
    small = max(1, len(images) // 4)

    with label_studio(args, work) as settings:
        import cv2

        from poseops.datasets import create_dataset, upload_images
        from poseops.inference import PoseModel
        from poseops.labelstudio import LabelStudioClient
        from poseops.skeleton import load_skeleton

        started = time.perf_counter()
        model = PoseModel("yolo11n-pose.pt", load_skeleton(PERSON_SPEC))
        load_s = time.perf_counter() - started
        decoded = [cv2.imread(str(p)) for p in images]
        model.detect(decoded[0])  # warm

        names = {size: f"bench-{size}-{uuid.uuid4().hex[:6]}" for size in (small, len(images))}
        with LabelStudioClient(settings) as client:
            for size, name in names.items():
                create_dataset(client, settings, name, PERSON_SPEC)
                upload_images(client, settings, name, images[:size])
        from prefect.testing.utilities import prefect_test_harness

        os.chdir(work)
        with prefect_test_harness(server_startup_timeout=180):
            sides = {"raw": raw_side(model, decoded), "small": flow_side(names[small], small),
                     "full": flow_side(names[len(images)], len(images))}
            sides["small"](), sides["full"]()  # warm: the flow's model loaded, the images in the cache
            seconds = {name: statistics.median(runs) for name, runs in interleaved(sides, args.repeat).items()}

    raw = len(images) / seconds["raw"]
    steady = (len(images) - small) / (seconds["full"] - seconds["small"])
    startup = seconds["small"] - small / steady
    print(RESULTS)
    print(f"images: {len(images)} (small project: {small}); yolo11n-pose, ONNX Runtime, {os.cpu_count()} CPUs; "
          f"median of {args.repeat}, interleaved")
    print(f"raw model:              {raw:6.2f} images/s  ({seconds['raw']:.2f} s for {len(images)}; "
          f"model load {load_s:.2f} s, not counted)")
    print(f"autolabel, whole runs:  {small / seconds['small']:6.2f} images/s at {small}, "
          f"{len(images) / seconds['full']:6.2f} at {len(images)}  ({seconds['small']:.2f} s, {seconds['full']:.2f} s)")
    print(f"autolabel steady state: {steady:6.2f} images/s  (the {len(images) - small} extra images over the extra "
          f"{seconds['full'] - seconds['small']:.2f} s)")
    print(f"autolabel start-up per run: {startup:.2f} s (flow and task runs, the task list; model already loaded)")
    print(f"ratio steady-state autolabel/raw: {steady / raw:.2f}")


if __name__ == "__main__":
    main()
