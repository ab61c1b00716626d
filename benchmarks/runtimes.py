"""Runtimes: OpenVINO against ONNX Runtime on the same model and images, and INT8 against f32, in one run.

    .venv/bin/python -m benchmarks.runtimes [--imgsz 640] [--seconds 6] [--cycles 3] [--no-int8]

1. The bare networks on the same preprocessed input (no letterbox, no NMS): ONNX Runtime (one call after the
   other: its latency and throughput), OpenVINO in latency mode (one after the other) and in throughput mode
   (one call after the other, and an async queue of its optimal number of requests). Each side runs `--seconds`, interleaved over `--cycles`.
2. The models as poseops runs them (`PoseModel.detect`, Ultralytics' letterbox and NMS) on the same 4 images:
   ONNX Runtime, OpenVINO f32 compiled for latency (as `poseops predict` and autolabel load it) and for throughput
   (as the service loads it), each one image after the other (one caller) and from 4 threads (4 callers).
3. INT8 (OpenVINO's post-training quantization, calibrated on coco8-pose's train split) against f32 OpenVINO:
   the same two speeds, and each one's pose mAP50-95 on the val split against best.pt with the same square input.
Prints both sides of every ratio.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.common import PERSON_SPEC, RESULTS, SHARED, prepare

COCO8 = SHARED / "datasets" / "coco8-pose"
DATA_YAML = (f"path: {COCO8}\ntrain: images/train\nval: images/val\nkpt_shape: [17, 3]\n"
             "flip_idx: [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]\nnames:\n  0: person\n")


def rate(run: Callable[[], int], seconds: float) -> tuple[float, list[float]]:
    """Items per second of `run` (which returns how many it did) repeated for `seconds`, and each call's seconds."""
    done, calls = 0, []
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        t = time.perf_counter()
        done += run()
        calls.append(time.perf_counter() - t)
    return done / (time.perf_counter() - start), calls


def interleaved_rates(sides: dict[str, Callable[[], int]], seconds: float, cycles: int) -> dict[str, dict[str, float]]:
    """Each side's images/s (its cycles pooled) and median seconds per call, run in turn `cycles` times."""
    rates: dict[str, list[float]] = {k: [] for k in sides}
    calls: dict[str, list[float]] = {k: [] for k in sides}
    order = list(sides)
    for cycle in range(cycles):
        for name in order if cycle % 2 == 0 else reversed(order):
            r, c = rate(sides[name], seconds)
            rates[name].append(r)
            calls[name] += c
    return {k: {"per_s": statistics.fmean(rates[k]), "p50_ms": statistics.median(calls[k]) * 1000} for k in sides}


def bare_networks(onnx_file: Path, openvino_dir: Path, imgsz: int) -> dict[str, Callable[[], int]]:
    import numpy as np
    import onnxruntime as ort
    import openvino as ov

    from poseops.runtimes import EXACT

    x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    core = ov.Core()
    xml = next(openvino_dir.glob("*.xml"))
    latency = core.compile_model(str(xml), "CPU", {**EXACT, "PERFORMANCE_HINT": "LATENCY"})
    throughput = core.compile_model(str(xml), "CPU", {**EXACT, "PERFORMANCE_HINT": "THROUGHPUT"})
    queue = ov.AsyncInferQueue(throughput, int(throughput.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")))
    same = float(np.abs(session.run(None, {name: x})[0] - latency(x)[0]).max())
    modes = float(np.abs(latency(x)[0] - throughput(x)[0]).max())
    print(f"bare networks: largest output difference ONNX Runtime vs OpenVINO f32: {same:.2e}, OpenVINO latency vs "
          f"throughput: {modes:.2e} (coordinates in pixels)")

    def async_batch() -> int:
        for _ in range(8):
            queue.start_async({0: x})
        queue.wait_all()
        return 8

    return {"onnxruntime": lambda: (session.run(None, {name: x}), 1)[1],
            "openvino_latency": lambda: (latency(x), 1)[1],
            "openvino_throughput_one_caller": lambda: (throughput(x), 1)[1],
            "openvino_throughput": async_batch}


def pipelines(models: dict, images: list) -> dict[str, Callable[[], int]]:
    """Each model one image after the other (the images in turn) and from 4 threads (4 images at once)."""
    sides: dict[str, Callable[[], int]] = {}
    pool = ThreadPoolExecutor(4)
    for name, model in models.items():
        turn = itertools.cycle(images)
        sides[f"{name}_sequential"] = lambda m=model, t=turn: (m.detect(next(t)), 1)[1]
        sides[f"{name}_4_threads"] = lambda m=model: len(list(pool.map(m.detect, images)))
    return sides


def largest_difference(models: dict, images: list) -> dict[str, float]:
    """Each model's largest difference from ONNX Runtime's detections on the images (pixels, confidence)."""
    import numpy as np

    def values(detections: list[dict]) -> np.ndarray:
        return np.array([[d["x"], d["y"], d["width"], d["height"], d["confidence"],
                          *(v for k in d["keypoints"] for v in (k["x"], k["y"]))] for d in detections])

    expected = [values(models["onnxruntime"].detect(im)) for im in images]
    out = {}
    for name, model in models.items():
        got = [values(model.detect(im)) for im in images]
        same = all(g.shape == e.shape for g, e in zip(got, expected, strict=True))
        out[name] = max(float(np.abs(g - e).max(initial=0)) for g, e in zip(got, expected, strict=True)) if same else float("inf")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--seconds", type=float, default=6.0, help="per side and cycle")
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--no-int8", dest="int8", action="store_false", help="leave out the INT8 export (about 30 s)")
    args = parser.parse_args()
    prepare()
    import cv2

    from poseops.inference import export_cached, load_model
    from poseops.skeleton import load_skeleton
    from poseops.weights import resolve_weights

    work = Path(tempfile.mkdtemp(prefix="poseops-runtimes-"))
    weights = Path(resolve_weights("yolo11n-pose.pt"))
    cache = work / "onnx"
    onnx_file = export_cached(weights, "onnx", args.imgsz, cache)
    openvino_dir = export_cached(weights, "openvino", args.imgsz, cache)
    spec = load_skeleton(PERSON_SPEC)
    models = {"onnxruntime": load_model(onnx_file, spec, "onnx"),
              "openvino_latency": load_model(openvino_dir, spec, performance="latency"),
              "openvino_throughput": load_model(openvino_dir, spec, performance="throughput")}
    quality: dict[str, float] = {}
    if args.int8:
        int8_dir, quality = int8_and_accuracy(weights, openvino_dir, args.imgsz, work)
        models["openvino_int8"] = load_model(int8_dir, spec)
    images = [cv2.imread(str(p)) for p in sorted((COCO8 / "images").rglob("*.jpg"))][:4]
    differences = largest_difference(models, images)
    load_before = os.getloadavg()[0]
    bare = interleaved_rates(bare_networks(onnx_file, openvino_dir, args.imgsz), args.seconds, args.cycles)
    full = interleaved_rates(pipelines(models, images), args.seconds, args.cycles)
    report(args, bare, full, quality, {k: m.info().get("openvino", {}) for k, m in models.items()}, differences)
    print(f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f}")


def int8_and_accuracy(weights: Path, openvino_dir: Path, imgsz: int, work: Path) -> tuple[Path, dict[str, float]]:
    """The INT8 export (calibrated on coco8-pose's train split) and pose mAP50-95 on its val split: best.pt (square
    input), f32 OpenVINO, INT8 OpenVINO."""
    from ultralytics import YOLO

    from poseops.params import load_params
    from poseops.runtimes import install_exact_openvino
    from poseops.training.evaluation import validate

    data = work / "data.yaml"
    data.write_text(DATA_YAML)
    copy = work / "int8" / weights.name
    copy.parent.mkdir()
    copy.write_bytes(weights.read_bytes())
    started = time.perf_counter()
    int8_dir = Path(YOLO(str(copy)).export(format="openvino", quantize=8, data=str(data), split="train", imgsz=imgsz,
                                           verbose=False))
    print(f"INT8 export (NNCF, 4 train images): {time.perf_counter() - started:.1f} s")
    install_exact_openvino()
    params = load_params(overrides={"train.imgsz": imgsz, "evaluate.batch": 4})
    quality = {"best.pt": validate(weights, data, params, work / "val-pt", rect=False)["pose_mAP50-95"],
               "openvino_f32": validate(openvino_dir, data, params, work / "val-f32")["pose_mAP50-95"],
               "openvino_int8": validate(int8_dir, data, params, work / "val-int8")["pose_mAP50-95"]}
    return int8_dir, quality


def report(args, bare: dict, full: dict, quality: dict[str, float], compiled: dict, differences: dict) -> None:
    print(RESULTS)
    print(f"yolo11n-pose at {args.imgsz} px; {args.cycles} cycles of {args.seconds:.0f} s per side, interleaved")
    print("bare network (same input tensor)       p50 ms    images/s")
    for name, r in bare.items():
        print(f"  {name:<36}{r['p50_ms']:>8.1f}{r['per_s']:>12.2f}")
    print("as poseops runs it (letterbox, NMS)   p50 ms    images/s")
    for name, r in full.items():
        print(f"  {name:<36}{r['p50_ms']:>8.1f}{r['per_s']:>12.2f}")
    for name in ("openvino_latency", "openvino_throughput"):
        print(f"{name} compiled: {json.dumps(compiled.get(name, {}))}")
    print("largest difference from ONNX Runtime's detections (px, confidence): "
          + ", ".join(f"{k} {v:.1e}" for k, v in differences.items() if k != "onnxruntime"))

    def per_s(a: str, b: str) -> float:
        return round(full[a]["per_s"] / full[b]["per_s"], 3)

    ort, ov_lat, ov_thr = bare["onnxruntime"], bare["openvino_latency"], bare["openvino_throughput"]
    ratios = {
        "bare_latency_onnxruntime_over_openvino": round(ort["p50_ms"] / ov_lat["p50_ms"], 3),
        "bare_throughput_openvino_streams_over_onnxruntime": round(ov_thr["per_s"] / ort["per_s"], 3),
        "detect_sequential_openvino_latency_over_onnxruntime": per_s("openvino_latency_sequential",
                                                                     "onnxruntime_sequential"),
        "detect_sequential_openvino_throughput_over_onnxruntime": per_s("openvino_throughput_sequential",
                                                                        "onnxruntime_sequential"),
        "detect_sequential_openvino_latency_over_throughput": per_s("openvino_latency_sequential",
                                                                    "openvino_throughput_sequential"),
        "detect_4_threads_openvino_throughput_over_latency": per_s("openvino_throughput_4_threads",
                                                                   "openvino_latency_4_threads"),
        "detect_4_threads_openvino_throughput_over_onnxruntime_sequential": per_s("openvino_throughput_4_threads",
                                                                                  "onnxruntime_sequential"),
    }
    if quality:
        ratios["int8_over_f32_4_threads"] = per_s("openvino_int8_4_threads", "openvino_throughput_4_threads")
        ratios["int8_over_f32_sequential"] = per_s("openvino_int8_sequential", "openvino_throughput_sequential")
        print("pose mAP50-95 on coco8-pose val (4 images; square input): "
              + ", ".join(f"{k} {v:.4f}" for k, v in quality.items()))
        print(f"pose mAP50-95 lost against best.pt: f32 {quality['best.pt'] - quality['openvino_f32']:+.4f}, "
              f"INT8 {quality['best.pt'] - quality['openvino_int8']:+.4f}")
    print(json.dumps(ratios))


if __name__ == "__main__":
    main()
