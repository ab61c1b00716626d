"""The long load test: the service under several clients for 60 s, against raw inference in the same run.

    .venv/bin/python -m benchmarks.load [--seconds 60] [--clients 4]      (or: make load)

Starts the service as `poseops deploy` runs it (on 127.0.0.1, a free port, a fresh home),
warms it up, then runs `poseops.loadtest` (the code behind `poseops load-test`) for `--seconds`
with `--clients` clients (at most `--max-requests`), between two 5 s measurements of raw
in-process inference (the baseline: their mean). Prints failed requests, p50/p99, throughput, the service's RSS (process
and workers) before and after, and the ratios: throughput under load / raw, RSS after / before.
Exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from benchmarks.common import RESULTS, add_model_arguments, load_raw, model_images, prepare, service
from poseops.loadtest import run_load


def raw_throughput(model, decoded: list, seconds: float) -> float:
    """Images per second of the model in this process, one after the other for `seconds`."""
    started, done = time.perf_counter(), 0
    while time.perf_counter() - started < seconds:
        model.detect(decoded[done % len(decoded)], 0.25, 0.45)
        done += 1
    return done / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--max-requests", type=int, default=5000)
    args = parser.parse_args()
    prepare()
    images = model_images(args)

    import cv2

    model = load_raw(args)
    decoded = [cv2.imread(str(p)) for p in images]
    with service(args) as server:
        pid = server.status().pid
        warm = run_load(server.url, images, clients=2, seconds=10, max_requests=2 * len(images))
        before = raw_throughput(model, decoded, 5.0)
        result = run_load(server.url, images, args.clients, args.seconds, args.max_requests, pid=pid)
        after = raw_throughput(model, decoded, 5.0)
    raw_per_s = (before + after) / 2  # measured on both sides of the load, so that both see the machine alike
    summary = result.summary()
    print(RESULTS)
    print(f"warm-up: {warm.requests} requests, {len(warm.failures)} failed")
    print(f"raw in-process: {raw_per_s:.2f} images/s (5 s before the load: {before:.2f}, 5 s after: {after:.2f})")
    print(f"service, {args.clients} clients, {summary['seconds']} s: {summary['requests']} requests, "
          f"{summary['failed']} failed, p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms, "
          f"{summary['throughput_per_s']} images/s")
    print(f"service RSS: {summary['rss_before_mb']} MiB before, {summary['rss_after_mb']} MiB after")
    print(json.dumps({"throughput_under_load_over_raw": round(summary["throughput_per_s"] / raw_per_s, 3),
                      "rss_after_over_before": round(result.rss_after_mb / result.rss_before_mb, 3)}))
    for failure in result.failures[:5]:
        print(f"failed: {failure}", file=sys.stderr)
    return 1 if result.failures or warm.failures else 0


if __name__ == "__main__":
    sys.exit(main())
