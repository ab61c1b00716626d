"""Run every benchmark and write their figures to docs/benchmarks.md.

    make bench        (or: python benchmarks/run_all.py)

Each benchmark measures against its own baseline in the same run and prints ratios; this
collects what each printed, with the command that produced it and the machine it ran on.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = [
    ("Conversion: poseops vs the Label Studio SDK's YOLO export", ["benchmarks/convert.py"]),
    ("Pull: nothing changed vs the first pull and the bare export", ["benchmarks/pull_nochange.py"]),
    ("Serving: the service vs raw in-process inference", ["benchmarks/serve.py"]),
    ("Load: 4 clients for 60 s against the service", ["benchmarks/load.py"]),
    ("Autolabel: the flow vs the raw model", ["benchmarks/autolabel.py"]),
    ("Training: the DVC pipeline vs Ultralytics called directly", ["benchmarks/train_overhead.py"]),
    ("Fine-tuning on coco-mini-train, measured on coco8-pose val: Ultralytics' defaults (optimizer=auto)",
     ["benchmarks/finetune_coco_mini.py"]),
    ("Fine-tuning on coco-mini-train, measured on coco8-pose val: gentle SGD (recommended for short fine-tunes)",
     ["benchmarks/finetune_coco_mini.py", "--optimizer", "SGD", "--lr0", "0.001", "--warmup-epochs", "0"]),
]
NOISE = ("| INFO", "WARNING |", "Ultralytics", "Downloading", "it/s]", "Loading ", "Using ONNX", "ONNX:", "PyTorch:",
         "Export complete", "Results saved", "Predict:", "Validate:", "Visualize:", "summary (fused)", "Update Settings",
         "starting Label Studio", "━", "Class ", " all ", "Optimizer stripped", "Validating", "Speed:", "MLflow:",
         "val:", "train:", "epochs completed", "Epoch ", "Closing dataloader", "Starting training", "Logging results",
         "Image sizes", "Plotting", "AMP:", "Transferred", "Prefect", "prefect")
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def main() -> int:
    lines = ["# Benchmarks", "",
             f"Written by `make bench` on {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, {platform.machine()}, "
             f"{os.cpu_count()} CPU cores, Python {platform.python_version()}. Each figure is a ratio against a "
             "baseline measured in the same run; absolute times depend on the machine's load.", ""]
    failed = 0
    for title, script in BENCHMARKS:
        command = [sys.executable, *script]
        print(f"== {title}", flush=True)
        started = time.perf_counter()
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        output = [ANSI.sub("", ln) for ln in result.stdout.splitlines()]
        output = [ln for ln in output if ln.strip() and not any(n in ln for n in NOISE)]
        print("\n".join(output[-25:]), flush=True)
        lines += [f"## {title}", "", f"`python {' '.join(script)}` ({seconds:.0f} s, exit {result.returncode})", "",
                  "```", *output[-25:], "```", ""]
        if result.returncode != 0:
            failed += 1
            lines += ["Failed:", "", "```", *result.stderr.splitlines()[-15:], "```", ""]
    (ROOT / "docs" / "benchmarks.md").write_text("\n".join(lines))
    print(f"wrote docs/benchmarks.md ({failed} failed)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
