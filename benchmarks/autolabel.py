"""Autolabel's throughput against the raw model at 16, 80 and 1,000 tasks, in one run.

    python -m benchmarks.autolabel [--sizes 16 80 1000] [--repeat 2] [--label-studio-url URL --token TOKEN]

raw: the model's own detect over the project's images in this process, one after the other, on
images decoded beforehand: the very model object the flow runs (`autolabel.local_model`: the runtime
autolabel picks, compiled for one image at a time), loaded and warmed up first (its load time is printed
on its own).
autolabel: the Prefect flow with the model in-process (`poseops autolabel NAME --weights ...`):
find the tasks, fetch their images, decode, detect, write the predictions (128 or more a request),
the artifact; timed whole, start-up included. One Label Studio project per size. The images are
coco-mini-train's photos and, past its 80, the same photos re-encoded (other JPEG quality: other
bytes, so other tasks and cache entries; nearly the same pixels, so the same work for the model).
A project's first flow run downloads its images into poseops' image cache (printed as `first run`);
the measured runs label every task again under a new model version, raw and flow in turn
(`interleaved`), `--repeat` times; medians count. Each side's CPU seconds are counted too (this process,
Prefect's temporary server, Label Studio's server): on a shared machine their ratio says more than the wall
clock's. Without --label-studio-url a Label Studio is started for the run (its first start migrates for
about 90 s, not counted).
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
    """`count` images with distinct content: coco-mini-train's photos, then the same re-encoded at other qualities."""
    import cv2

    sources = sorted((SHARED / "datasets" / "coco-mini-train" / "images").rglob("*.jpg"))
    images = list(sources[:count])
    folder = work / "reencoded"
    folder.mkdir(parents=True, exist_ok=True)
    quality = 94
    while len(images) < count:
        for source in sources[: count - len(images)]:
            out = folder / f"{source.stem}-q{quality}.jpg"
            cv2.imwrite(str(out), cv2.imread(str(source)), [cv2.IMWRITE_JPEG_QUALITY, quality])
            images.append(out)
        quality -= 1
    return images


def cpu_seconds(others: list) -> float:
    """CPU seconds so far of this process, its children (Prefect's temporary server) and `others` (Label Studio)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for p in [me, *me.children(recursive=True), *others]:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def label_studio_process(url: str) -> list:
    """The process listening at the Label Studio URL's port (its CPU is part of autolabel's cost), if found."""
    import psutil

    port = int(url.rsplit(":", 1)[1].split("/")[0])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            return [psutil.Process(conn.pid)]
    return []


def timed(name: str, run, cpu: dict[str, list[float]], others: list):
    """`run`'s seconds, its CPU seconds (all the processes at work) noted in `cpu`, each printed as it ends."""
    def side() -> float:
        before, started = cpu_seconds(others), time.perf_counter()
        run()
        seconds = time.perf_counter() - started
        cpu.setdefault(name, []).append(cpu_seconds(others) - before)
        print(f"  {name}: {seconds:.2f} s, {cpu[name][-1]:.2f} CPU s, load average {os.getloadavg()[0]:.1f}",
              flush=True)
        return seconds
    return side


def raw_side(model, decoded: list):
    def run() -> None:
        for image in decoded:
            model.detect(image, 0.25, 0.45)
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
                             f"failed: {dict(list(summary['failed'].items())[:3])}")
        return seconds
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 80, 1000], help="tasks per project")
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--diversity-quota", type=int, default=0,
                        help="autolabel.diversity_quota for the runs (default 0: off; the images past 80 are re-encoded "
                             "copies, near-identical pictures the quota would move back one by one)")
    add_label_studio_arguments(parser)
    args = parser.parse_args()
    prepare()
    work = Path(tempfile.mkdtemp(prefix="poseops-bench-"))
    images = bench_images(max(args.sizes), work)

    with label_studio(args, work) as settings:
        import cv2

        from poseops.autolabel import local_model
        from poseops.datasets import create_dataset, upload_images
        from poseops.labelstudio import LabelStudioClient

        started = time.perf_counter()
        model = local_model("yolo11n-pose.pt", str(PERSON_SPEC.resolve()))  # the flow's own (its dataset's spec)
        load_s = time.perf_counter() - started
        decoded = [cv2.imread(str(p)) for p in images]
        model.detect(decoded[0])  # warm

        names = {size: f"bench-{size}-{uuid.uuid4().hex[:6]}" for size in args.sizes}
        started = time.perf_counter()
        with LabelStudioClient(settings) as client:
            for size, name in names.items():
                create_dataset(client, settings, name, PERSON_SPEC)
                upload_images(client, settings, name, images[:size])
        upload_s = time.perf_counter() - started
        from prefect.testing.utilities import prefect_test_harness

        os.chdir(work)
        (work / "params.yaml").write_text(f"autolabel:\n  diversity_quota: {args.diversity_quota}\n")
        rows = []
        load = os.getloadavg()[0]
        others = label_studio_process(settings.label_studio_url)
        with prefect_test_harness(server_startup_timeout=180):
            for size in args.sizes:
                flow = flow_side(names[size], size)
                first = flow()  # downloads the images into the cache; the model is loaded by the first of all
                cpu: dict[str, list[float]] = {}
                seconds = interleaved({"raw": timed("raw", raw_side(model, decoded[:size]), cpu, others),
                                       "autolabel": timed("autolabel", flow, cpu, others)}, args.repeat)
                rows.append((size, first, seconds, cpu))
                print(f"{size} tasks: first run {first:.2f} s, raw {seconds['raw']}, autolabel {seconds['autolabel']}",
                      flush=True)

    print(RESULTS)
    print(f"yolo11n-pose, runtime {model.runtime} {model.info().get('openvino', {}).get('performance_hint', '')}, "
          f"{os.cpu_count()} CPUs; {len(images)} images "
          f"(uploaded in {upload_s:.0f} s); median of {args.repeat}, raw and autolabel in turn; "
          f"model load {load_s:.2f} s, not counted; autolabel.diversity_quota {args.diversity_quota}")
    print(f"{'tasks':>6} {'raw img/s':>10} {'autolabel img/s':>16} {'ratio':>6} {'first run img/s':>16} "
          f"{'CPU s raw':>10} {'CPU s autolabel':>16} {'CPU ratio':>10}")
    for size, first, seconds, cpu in rows:
        raw, flow = size / statistics.median(seconds["raw"]), size / statistics.median(seconds["autolabel"])
        cpu_raw, cpu_flow = statistics.median(cpu["raw"]), statistics.median(cpu["autolabel"])
        print(f"{size:>6} {raw:>10.2f} {flow:>16.2f} {flow / raw:>6.2f} {size / first:>16.2f} "
              f"{cpu_raw:>10.1f} {cpu_flow:>16.1f} {cpu_raw / cpu_flow:>10.2f}")
    print("CPU s: this process, Prefect's server and Label Studio's" + ("" if others else " (not found: left out)")
          + "; CPU ratio = raw / autolabel (the wall ratio where the model has the cores to itself)")
    size, _, seconds, _ = rows[-1]
    ratio = statistics.median(seconds["raw"]) / statistics.median(seconds["autolabel"])
    print(f"ratio autolabel/raw at {size} tasks (whole runs, start-up included): {ratio:.2f}   "
          f"load average {load:.1f} -> {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
