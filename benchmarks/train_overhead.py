"""What the pipeline costs over training with Ultralytics directly: wall time, runs taken in turn and repeated.

    python -m benchmarks.train_overhead --dataset path/to/coco8-pose [--epochs 3 --imgsz 320 --repeat 3]

Builds a throw-away git+DVC project around a copy of the dataset (YOLO-pose layout:
images/ and labels/ with train/ and val/), then times, each in a fresh process:

  direct     YOLO(weights).train(...) with the very arguments the train stage passes
  pipeline   `dvc exp run -S train.epochs=… -S train.imgsz=…` (what `poseops train -S …` runs): prepare →
             train → evaluate (which goes on to export in the same process), MLflow logging (SQLite store),
             the checked exports and model registration

The two sides take turns (direct, pipeline, then pipeline, direct, ...) `--repeat` times, each
time in a fresh project and MLflow store made outside the timing, so that the machine's other load
falls on both alike. DVC's output is read as it comes, so each part of a pipeline run is timed:
DVC's start-up (to its first stage), each stage's command (from DVC's `Running stage` to the
command's last line), DVC's own work after each command (hashing and caching the outputs, the lock
file) and its end. The per-epoch time is Ultralytics' own (results.csv's `time` after the last epoch,
over the epochs) on both sides. Prints every run's times, the medians, the pipeline's fixed cost
(pipeline minus direct) and the per-epoch ratio, pipeline / direct, and the load average before and after:
on a shared machine the seconds grow with the load, so compare runs made at a similar load. The CPU seconds
of each side (its processes and all they started, user + system) are printed too: they grow far less with
the machine's other load than wall time does.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import RESULTS, SHARED, interleaved, prepare

FLIP_IDX = [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]

DIRECT = """
import json, sys
from poseops.training import configure_ultralytics
configure_ultralytics()
from ultralytics import YOLO
args = json.loads(sys.argv[1])
YOLO(args.pop("model")).train(**args)
"""


def make_project(root: Path, dataset: Path, params_update: dict[str, object]) -> None:
    """A user's checkout (`poseops.demo.make_workspace`) with the dataset committed in it."""
    from poseops.demo import make_workspace

    make_workspace(root, params_update)
    copy_dataset(dataset, root / "data" / "coco8-pose")
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "benchmark dataset"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)


def copy_dataset(src: Path, dest: Path) -> None:
    for part in ("images", "labels"):
        shutil.copytree(src / part, dest / part, ignore=shutil.ignore_patterns("*.cache"))
    (dest / "data.yaml").write_text(yaml.safe_dump({"path": str(dest.resolve()), "train": "images/train", "val": "images/val",
                                                    "names": {0: "person"}, "kpt_shape": [17, 3], "flip_idx": FLIP_IDX}))


def children_cpu() -> float:
    """CPU seconds (user + system) of this process's finished children and everything they waited for."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed(cmd: list[str], cwd: Path, env: dict[str, str], cpu: list[float] | None = None
          ) -> tuple[float, list[tuple[float, str]]]:
    """Seconds the command took, and each line of its output (stdout and stderr) with the second it came; its CPU
    seconds are appended to `cpu`."""
    cpu_before = children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, errors="replace")
    lines = [(time.perf_counter() - start, line.rstrip()) for line in proc.stdout]
    proc.wait()
    elapsed = time.perf_counter() - start
    if cpu is not None:
        cpu.append(children_cpu() - cpu_before)
    if proc.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n" + "\n".join(text for _, text in lines[-60:]))
    return elapsed, lines


def stage_times(lines: list[tuple[float, str]], total: float) -> dict[str, float]:
    """DVC's start-up, each stage's command and DVC's work after it, from the timed lines of `dvc exp run`."""
    marks = [(t, text.split("'")[1]) for t, text in lines if text.startswith("Running stage '")]
    if not marks:
        return {}
    parts = {"dvc start-up": marks[0][0]}
    for i, (started, stage) in enumerate(marks):
        ends = marks[i + 1][0] if i + 1 < len(marks) else total
        own = [t for t, text in lines if started < t < ends and text.strip() and not _dvc_line(text)]
        command_end = max(own, default=started)
        parts[f"{stage}: command"] = command_end - started
        parts[f"{stage}: dvc after it"] = ends - command_end
    return parts


def _dvc_line(text: str) -> bool:
    return text.startswith(("Updating lock file", "Generating lock file", "Ran experiment", "Experiment ", "To ",
                            "WARNING: No file hash", "Stage '", "Use `dvc", "Reproduced experiment"))


def per_epoch(results_csv: Path) -> float:
    """Ultralytics' own seconds per epoch: results.csv's `time` (cumulative) after the last epoch, over the epochs."""
    import csv

    rows = list(csv.DictReader(results_csv.open()))
    return float(rows[-1]["time"]) / len(rows)


def bench_env(home: Path) -> dict[str, str]:
    return {**os.environ, "POSEOPS_HOME": str(home), "MLFLOW_TRACKING_URI": f"sqlite:///{home / 'mlflow.db'}",
            "YOLO_CONFIG_DIR": str(home / "ultralytics"), "YOLO_OFFLINE": os.environ.get("YOLO_OFFLINE", "true"),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}


class Sides:
    """The two ways to train, each run in a fresh folder under `work`; only the training itself is timed."""

    def __init__(self, args: argparse.Namespace, work: Path):
        self.args, self.work, self.runs = args, work, 0
        self.base = {"train": {"workers": 0, "batch": args.batch}, "mlflow": {"experiment": "benchmark"},
                     "device": args.device}
        self.overrides = {"train.epochs": args.epochs, "train.imgsz": args.imgsz}
        self.stages: list[dict[str, float]] = []  # per pipeline run: the parts of `stage_times`
        self.epochs: dict[str, list[float]] = {"direct": [], "pipeline": []}  # seconds per epoch, per run
        self.cpu: dict[str, list[float]] = {"direct": [], "pipeline": []}  # CPU seconds, per run
        from poseops.demo import make_workspace
        from poseops.params import load_params

        # the parameters the train stage sees, read from a project like the pipeline's
        self.params = load_params(make_workspace(work / "params", self.base) / "params.yaml", self.overrides)

    def fresh(self, side: str) -> Path:
        self.runs += 1
        folder = self.work / f"{self.runs}-{side}"
        folder.mkdir()
        return folder

    def direct(self) -> float:
        """The same Ultralytics arguments as the train stage, on its own copy of the dataset."""
        from poseops.training import ultralytics_train_args
        from poseops.weights import resolve_weights

        folder = self.fresh("direct")
        copy_dataset(self.args.dataset, folder / "data")
        train_args = {**ultralytics_train_args(self.params), "model": resolve_weights(self.params.train.model),
                      "data": str(folder / "data" / "data.yaml"), "project": str(folder), "name": "train"}
        seconds, _ = timed([sys.executable, "-c", DIRECT, json.dumps(train_args)], folder, bench_env(folder / "home"),
                           self.cpu["direct"])
        self.epochs["direct"].append(per_epoch(folder / "train" / "results.csv"))
        return seconds

    def pipeline(self) -> float:
        folder = self.fresh("pipeline")
        make_project(folder / "repo", self.args.dataset, self.base)
        env = bench_env(folder / "home")
        # a deployment's MLflow store exists already: create it (tables, experiment) outside the timing
        init = "from poseops import tracking; tracking.experiment_id(tracking.client(), 'benchmark')"
        subprocess.run([sys.executable, "-c", init], env=env, check=True, capture_output=True)
        sets = [a for k, v in self.overrides.items() for a in ("-S", f"{k}={v}")]
        seconds, lines = timed([sys.executable, "-m", "dvc", "exp", "run", *sets], folder / "repo", env, self.cpu["pipeline"])
        self.stages.append(stage_times(lines, seconds))
        self.epochs["pipeline"].append(per_epoch(folder / "repo" / "runs" / "train" / "results.csv"))
        return seconds


def main() -> None:
    default_dataset = os.environ.get("POSEOPS_BENCH_DATASET") or (
        str(Path(os.environ["POSEOPS_SAMPLE_IMAGES"]).parent) if os.environ.get("POSEOPS_SAMPLE_IMAGES") else
        str(SHARED / "datasets" / "coco8-pose") if (SHARED / "datasets" / "coco8-pose").is_dir() else None)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=default_dataset, required=default_dataset is None,
                        help="a YOLO-pose dataset folder with 17 COCO keypoints (images/, labels/)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each side, taken in turn")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and print its path")
    args = parser.parse_args()
    prepare()

    work = Path(tempfile.mkdtemp(prefix="poseops-bench-"))
    load_before = os.getloadavg()[0]
    sides = Sides(args, work)
    try:
        seconds = interleaved({"direct": sides.direct, "pipeline": sides.pipeline}, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    direct, pipeline = statistics.median(seconds["direct"]), statistics.median(seconds["pipeline"])
    epoch = {side: statistics.median(runs) for side, runs in sides.epochs.items()}

    print(RESULTS)
    print(f"dataset {args.dataset}, {args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, device {args.device}; "
          f"median of {args.repeat} runs each, taken in turn")
    print(f"{'direct Ultralytics train':<44} {direct:8.1f} s   runs: {', '.join(f'{s:.1f}' for s in seconds['direct'])}")
    print(f"{'pipeline (dvc exp run), total':<44} {pipeline:8.1f} s   runs: {', '.join(f'{s:.1f}' for s in seconds['pipeline'])}")
    for part in sides.stages[0]:
        print(f"  {part:<42} {statistics.median(s.get(part, 0.0) for s in sides.stages):8.1f} s")
    print(f"pipeline fixed cost (pipeline - direct): {pipeline - direct:.1f} s")
    cpu = {side: statistics.median(runs) for side, runs in sides.cpu.items()}
    print(f"CPU seconds: direct {cpu['direct']:.1f}, pipeline {cpu['pipeline']:.1f}, "
          f"fixed {cpu['pipeline'] - cpu['direct']:.1f} (runs: direct {', '.join(f'{s:.1f}' for s in sides.cpu['direct'])}; "
          f"pipeline {', '.join(f'{s:.1f}' for s in sides.cpu['pipeline'])})")
    print(f"per epoch (Ultralytics' own): direct {epoch['direct']:.2f} s, pipeline {epoch['pipeline']:.2f} s, "
          f"ratio {epoch['pipeline'] / epoch['direct']:.3f}")
    print(f"ratio full pipeline / direct: {pipeline:.1f} s / {direct:.1f} s = {pipeline / direct:.2f}")
    print(f"load average (1 min) before {load_before:.1f}, after {os.getloadavg()[0]:.1f}, on {os.cpu_count()} CPUs")
    if args.keep:
        print(f"work folder: {work}")


if __name__ == "__main__":
    main()
