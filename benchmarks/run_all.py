"""Run every benchmark and write their figures to docs/benchmarks.md.

    make bench        (or: python -m benchmarks.run_all)

Each benchmark measures against its own baseline in the same run and prints its figures, both
sides of every ratio included, after a results line (`benchmarks.common.RESULTS`); this publishes
everything each printed after that line, unfiltered, with the command that produced it and the
machine it ran on. (What the libraries log while a benchmark runs comes before that line.)
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime

from benchmarks.common import RESULTS, ROOT

BENCHMARKS = [
    ("Conversion: poseops vs the Label Studio SDK's YOLO export", ["benchmarks.convert"]),
    ("Pull: nothing changed vs the first pull and the bare export", ["benchmarks.pull_nochange"]),
    ("Import: 1,000 labeled images (COCO) vs uploading them unlabeled, time and Label Studio requests",
     ["benchmarks.import_labels"]),
    ("Serving: the service vs raw in-process inference", ["benchmarks.serve"]),
    ("Runtimes: OpenVINO vs ONNX Runtime, INT8 vs f32", ["benchmarks.runtimes"]),
    ("Load: 4 clients for 60 s against the service", ["benchmarks.load"]),
    ("Video: poseops predict with tracking vs the raw model on the same frames", ["benchmarks.predict_video"]),
    ("Autolabel: the flow vs the raw model at 16, 80 and 1,000 tasks", ["benchmarks.autolabel"]),
    ("ML backend: /predict as a task opens vs the raw model", ["benchmarks.ml_backend"]),
    ("Video ingestion: frames ingested per second vs decoding the same video alone", ["benchmarks.ingest_video"]),
    ("Training: the DVC pipeline vs Ultralytics called directly", ["benchmarks.train_overhead"]),
    ("Evaluation: the evaluate stage (per-keypoint metrics, gallery) vs Ultralytics' val alone", ["benchmarks.evaluate"]),
    ("Fine-tuning on coco-mini-train, measured on coco8-pose val (photos from the pretraining set): "
     "Ultralytics' defaults (optimizer=auto)", ["benchmarks.finetune_coco_mini"]),
    ("Fine-tuning on coco-mini-train, measured on coco8-pose val (photos from the pretraining set): "
     "gentle SGD (recommended for short fine-tunes)",
     ["benchmarks.finetune_coco_mini", "--optimizer", "SGD", "--lr0", "0.001", "--warmup-epochs", "0"]),
    ("Training a new keypoint head (dlc-reaching, 5 keypoints): the fine-tune recipe vs train.new_head",
     ["benchmarks.recipe_new_skeleton", "--epochs", "40"]),
    ("Profiles: one improvement loop on the server profile (PostgreSQL, S3, a work pool) vs embedded", ["benchmarks.profiles"]),
]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def figures(stdout: str) -> list[str]:
    """What a benchmark printed after its results line (all of it), or its last lines if it never got there."""
    output = [ANSI.sub("", ln).rstrip() for ln in stdout.splitlines()]
    if RESULTS in output:
        return [ln for ln in output[len(output) - output[::-1].index(RESULTS):] if ln]
    return ["(no results: the benchmark stopped before printing them; its last lines:)", *output[-15:]]


def main() -> int:
    lines = ["# Benchmarks", "",
             f"Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
             f"{os.cpu_count()} CPU cores, Python {platform.python_version()}. Each figure is a ratio against a "
             "baseline measured in the same run; absolute times depend on the machine's load.", ""]
    failed = 0
    for title, script in BENCHMARKS:
        command = [sys.executable, "-m", *script]
        print(f"== {title}", flush=True)
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        output = figures(result.stdout)
        print("\n".join(output), flush=True)
        lines += [f"## {title}", "", f"`python -m {' '.join(script)}` ({seconds:.0f} s, exit {result.returncode})", "",
                  "```", *output, "```", ""]
        if result.returncode != 0:
            failed += 1
            lines += ["Failed:", "", "```", *result.stderr.splitlines()[-15:], "```", ""]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(lines))
    print(f"wrote docs/benchmarks.md ({failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
