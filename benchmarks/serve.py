"""Serving overhead: the model in-process versus the BentoML service, on the same images in one run.

    .venv/bin/python benchmarks/serve.py [--rounds 4] [--runtime onnx] [--out FILE.json]

Measures three phases, one after the other (never at the same time, so they do not share the CPU):
1. raw: `PoseModel.detect` in this process on decoded images (latency per image, throughput);
2. the service (`poseops serve`, i.e. `bentoml serve`, on 127.0.0.1) with 1 client, then
3. with 4 concurrent clients, each posting the image files to POST /detect (decode, HTTP and JSON included).
The three phases are repeated `--cycles` times, interleaved, so that load from other work on a
shared machine spreads over all of them; each phase's figures pool its cycles.
Prints p50/p99 latencies, throughputs and the ratios service@4 / raw and p50(1 client) - p50(raw).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

from poseops.loadtest import percentile

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("raw", "service_1_client", "service_4_clients")
DEFAULT_IMAGES = Path(os.environ.get("POSEOPS_SAMPLE_IMAGES", ROOT.parent / "shared" / "datasets" / "coco8-pose" / "images"))


def summary(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    return {
        "requests": len(latencies_s),
        "p50_ms": round(percentile(latencies_s, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies_s, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies_s) * 1000, 1),
        "throughput_per_s": round(len(latencies_s) / wall_s, 2),
    }


def load_raw(args: argparse.Namespace):
    from poseops.inference import PoseModel
    from poseops.skeleton import load_skeleton

    return PoseModel(args.weights, load_skeleton(args.skeleton), args.runtime)


def bench_raw(model, decoded: list, rounds: int) -> tuple[list[float], float]:
    latencies: list[float] = []
    start = time.perf_counter()
    for _ in range(rounds):
        for image in decoded:
            t = time.perf_counter()
            model.detect(image, 0.25, 0.45)
            latencies.append(time.perf_counter() - t)
    return latencies, time.perf_counter() - start


def bench_service(url: str, images: list[Path], clients: int, per_client: int) -> tuple[list[float], float]:
    import httpx

    payloads = [(p.name, p.read_bytes()) for p in images]
    latencies: list[float] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(offset: int) -> None:
        with httpx.Client(timeout=120) as http:
            for i in range(per_client):
                name, data = payloads[(offset + i) % len(payloads)]
                t = time.perf_counter()
                r = http.post(url + "/detect", files={"image": (name, data, "image/jpeg")}, data={"conf_thres": "0.25", "iou_thres": "0.45"})
                elapsed = time.perf_counter() - t
                with lock:
                    if r.status_code == 200:
                        latencies.append(elapsed)
                    else:
                        failures.append(r.text)

    threads = [threading.Thread(target=client, args=(k * 3,)) for k in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - start
    if failures:
        raise RuntimeError(f"{len(failures)} requests failed, e.g. {failures[0]}")
    return latencies, wall


def start_service(args: argparse.Namespace):
    """The service as poseops deploys it (`deploy.service_server`), on a free port, state in a fresh folder."""
    import tempfile

    from poseops.deploy import service_server
    from poseops.detector import ServiceConfig
    from poseops.settings import Settings
    from poseops.weights import resolve_weights

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    settings = Settings(home=Path(tempfile.mkdtemp(prefix="poseops-bench-serve-")), service_url=f"http://127.0.0.1:{port}")
    config = ServiceConfig(weights=str(Path(resolve_weights(args.weights)).resolve()), skeleton=args.skeleton,
                           runtime=args.runtime)
    server = service_server(settings, config)
    print(f"service log: {server.log_file}", file=sys.stderr)
    server.up(timeout=300)
    return server


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The images, weights, skeleton and runtime options this benchmark and benchmarks/load.py share."""
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of .jpg images (searched recursively)")
    parser.add_argument("--weights", default="yolo11n-pose.pt")
    parser.add_argument("--skeleton", type=Path, default=ROOT / "label_config" / "skeletons" / "person.yaml")
    parser.add_argument("--runtime", default="onnx", choices=["onnx", "torch"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the images per phase and cycle")
    parser.add_argument("--cycles", type=int, default=3, help="times the three phases are repeated, interleaved")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "true")
    if (ROOT.parent / "shared" / "weights").is_dir():  # the bundled weights, as the Makefile does
        os.environ.setdefault("POSEOPS_WEIGHTS_DIR", str(ROOT.parent / "shared" / "weights"))
    images = sorted(args.images.rglob("*.jpg"))
    if not images:
        raise SystemExit(f"no .jpg images under {args.images}")

    import cv2

    n = len(images) * args.rounds
    results: dict[str, object] = {"images": len(images), "rounds": args.rounds, "cycles": args.cycles,
                                  "runtime": args.runtime, "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()[0]}  # fmt: skip
    model = load_raw(args)
    decoded = [cv2.imread(str(p)) for p in images]
    for image in decoded[:2]:
        model.detect(image)
    latencies: dict[str, list[float]] = {name: [] for name in PHASES}
    walls = dict.fromkeys(PHASES, 0.0)
    server = start_service(args)
    url = server.url
    try:
        bench_service(url, images, 1, len(images))  # warm-up
        for _ in range(args.cycles):
            for name, (seen, wall) in (
                ("raw", bench_raw(model, decoded, args.rounds)),
                ("service_1_client", bench_service(url, images, 1, n)),
                ("service_4_clients", bench_service(url, images, 4, n // 2)),
            ):
                latencies[name] += seen
                walls[name] += wall
    finally:
        server.down()
    for name in PHASES:
        results[name] = summary(latencies[name], walls[name])
    results["loadavg_after"] = os.getloadavg()[0]
    raw, one, four = results["raw"], results["service_1_client"], results["service_4_clients"]
    results["ratios"] = {
        "service4_throughput_over_raw": round(four["throughput_per_s"] / raw["throughput_per_s"], 3),  # type: ignore[index]
        "service1_throughput_over_raw": round(one["throughput_per_s"] / raw["throughput_per_s"], 3),  # type: ignore[index]
        "p50_service1_minus_raw_ms": round(one["p50_ms"] - raw["p50_ms"], 1),  # type: ignore[index]
    }
    print(f"{'phase':<20}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}{'img/s':>8}")
    for name in PHASES:
        r = results[name]
        print(f"{name:<20}{r['requests']:>9}{r['p50_ms']:>9}{r['p99_ms']:>9}{r['mean_ms']:>9}{r['throughput_per_s']:>8}")  # type: ignore[index]
    print(json.dumps(results["ratios"]), f"load average {results['loadavg_before']:.1f} -> {results['loadavg_after']:.1f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
