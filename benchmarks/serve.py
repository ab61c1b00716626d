"""Serving: the BentoML service against the model in-process, on the same images in one run.

    .venv/bin/python -m benchmarks.serve [--rounds 2] [--runtime auto] [--out FILE.json]

Measures four phases, one after the other (never at the same time, so they do not share the CPU):
1. raw: the service's runtime (`--runtime`, auto: OpenVINO on a CPU) in this process, `detect` on decoded
   images one after the other (latency per image, throughput);
2. raw_onnx: the same with ONNX Runtime, one after the other: the baseline the service is held to;
3. the service (`poseops serve`, i.e. `bentoml serve`, on 127.0.0.1) with 1 client, then
4. with 4 concurrent clients, each posting the image files to POST /detect (decode, HTTP and JSON included).
The phases are repeated `--cycles` times, interleaved, so that load from other work on a shared machine
spreads over all of them; each phase's figures pool its cycles. Prints p50/p99 latencies, throughputs and
the ratios service@4 / raw ONNX Runtime sequential (target >= 1.5), service@4 / raw and
p50(1 client) - p50(raw, same runtime) (target <= 10 ms).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from benchmarks.common import RESULTS, add_model_arguments, load_raw, model_images, prepare, service
from poseops.loadtest import percentile, run_load

PHASES = ("raw", "raw_onnx", "service_1_client", "service_4_clients")


def summary(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    return {
        "requests": len(latencies_s),
        "p50_ms": round(percentile(latencies_s, 50) * 1000, 1),
        "p99_ms": round(percentile(latencies_s, 99) * 1000, 1),
        "mean_ms": round(statistics.fmean(latencies_s) * 1000, 1),
        "throughput_per_s": round(len(latencies_s) / wall_s, 2),
    }


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
    """`clients` clients posting `per_client` images each (poseops' load client, bounded by the request count)."""
    result = run_load(url, images, clients, seconds=24 * 3600, max_requests=clients * per_client)
    if result.failures:
        raise RuntimeError(f"{len(result.failures)} requests failed, e.g. {result.failures[0]}")
    return result.latencies_s, result.seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--rounds", type=int, default=2, help="passes over the images per phase and cycle")
    parser.add_argument("--cycles", type=int, default=3, help="times the three phases are repeated, interleaved")
    parser.add_argument("--out", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()
    prepare()
    images = model_images(args)

    import cv2

    n = len(images) * args.rounds
    results: dict[str, object] = {"images": len(images), "rounds": args.rounds, "cycles": args.cycles,
                                  "runtime": args.runtime, "cpus": os.cpu_count(), "loadavg_before": os.getloadavg()[0]}  # fmt: skip
    model = load_raw(args)
    baseline = load_raw(args, "onnx")
    results["runtime"] = model.runtime
    decoded = [cv2.imread(str(p)) for p in images]
    for image in decoded[:2]:
        model.detect(image)
        baseline.detect(image)
    latencies: dict[str, list[float]] = {name: [] for name in PHASES}
    walls = dict.fromkeys(PHASES, 0.0)
    with service(args) as server:
        url = server.url
        bench_service(url, images, 1, len(images))  # warm-up
        for _ in range(args.cycles):
            for name, (seen, wall) in (
                ("raw", bench_raw(model, decoded, args.rounds)),
                ("raw_onnx", bench_raw(baseline, decoded, args.rounds)),
                ("service_1_client", bench_service(url, images, 1, n)),
                ("service_4_clients", bench_service(url, images, 4, n // 2)),
            ):
                latencies[name] += seen
                walls[name] += wall
    for name in PHASES:
        results[name] = summary(latencies[name], walls[name])
    results["loadavg_after"] = os.getloadavg()[0]
    raw, one, four = results["raw"], results["service_1_client"], results["service_4_clients"]
    onnx = results["raw_onnx"]
    results["ratios"] = {
        "service4_throughput_over_raw_onnx": round(four["throughput_per_s"] / onnx["throughput_per_s"], 3),  # type: ignore[index]
        "service4_throughput_over_raw": round(four["throughput_per_s"] / raw["throughput_per_s"], 3),  # type: ignore[index]
        "service1_throughput_over_raw": round(one["throughput_per_s"] / raw["throughput_per_s"], 3),  # type: ignore[index]
        "p50_service1_minus_raw_ms": round(one["p50_ms"] - raw["p50_ms"], 1),  # type: ignore[index]
    }
    print(RESULTS)
    print(f"service and raw on {results['runtime']}; raw_onnx: ONNX Runtime one image after the other (the baseline)")
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
