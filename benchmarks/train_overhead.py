"""What the pipeline costs over training with Ultralytics directly: wall time, runs taken in turn and repeated.

    python -m benchmarks.train_overhead --dataset path/to/coco8-pose [--epochs 3 --imgsz 320 --repeat 3]

Builds a throw-away git+DVC project around a copy of the dataset (YOLO-pose layout:
images/ and labels/ with train/ and val/), then times, each in a fresh process:

  direct     YOLO(weights).train(...) with the very arguments the train stage passes
  pipeline   `dvc exp run -S train.epochs=… -S train.imgsz=…`: prepare → train → evaluate → export,
             MLflow logging (SQLite store), ONNX export and model registration; the train stage
             alone is timed too (`dvc exp run train`, then the rest)

The two sides take turns (direct, pipeline, then pipeline, direct, ...) `--repeat` times, each
time in a fresh project and MLflow store made outside the timing, so that the machine's other load
falls on both alike. Prints every run's times, the medians and the ratios of the medians, pipeline / direct.
"""

from __future__ import annotations

import argparse
import json
import os
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


def timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return elapsed


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
        self.stages: list[tuple[float, float]] = []  # (prepare + train, evaluate + export + register) per pipeline run
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
        return timed([sys.executable, "-c", DIRECT, json.dumps(train_args)], folder, bench_env(folder / "home"))

    def pipeline(self) -> float:
        folder = self.fresh("pipeline")
        make_project(folder / "repo", self.args.dataset, self.base)
        env = bench_env(folder / "home")
        # a deployment's MLflow store exists already: create it (tables, experiment) outside the timing
        init = "from poseops import tracking; tracking.experiment_id(tracking.client(), 'benchmark')"
        subprocess.run([sys.executable, "-c", init], env=env, check=True, capture_output=True)
        sets = [a for k, v in self.overrides.items() for a in ("-S", f"{k}={v}")]
        dvc = [sys.executable, "-m", "dvc", "exp", "run"]
        upto_train = timed([*dvc, "train", *sets], folder / "repo", env)  # prepare + train
        rest = timed([*dvc, *sets], folder / "repo", env)  # evaluate + export (+ registration); the rest is skipped
        self.stages.append((upto_train, rest))
        return upto_train + rest


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
    sides = Sides(args, work)
    try:
        seconds = interleaved({"direct": sides.direct, "pipeline": sides.pipeline}, args.repeat)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    direct, pipeline = statistics.median(seconds["direct"]), statistics.median(seconds["pipeline"])
    upto_train = statistics.median(s[0] for s in sides.stages)
    rest = statistics.median(s[1] for s in sides.stages)

    print(RESULTS)
    print(f"dataset {args.dataset}, {args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, device {args.device}; "
          f"median of {args.repeat} runs each, taken in turn")
    print(f"{'direct Ultralytics train':<44} {direct:8.1f} s   runs: {', '.join(f'{s:.1f}' for s in seconds['direct'])}")
    print(f"{'pipeline: prepare + train (dvc exp run train)':<44} {upto_train:8.1f} s")
    print(f"{'pipeline: evaluate + export + register':<44} {rest:8.1f} s")
    print(f"{'pipeline: total':<44} {pipeline:8.1f} s   runs: {', '.join(f'{s:.1f}' for s in seconds['pipeline'])}")
    print(f"ratio train stage / direct: {upto_train:.1f} s / {direct:.1f} s = {upto_train / direct:.2f}")
    print(f"ratio full pipeline / direct: {pipeline:.1f} s / {direct:.1f} s = {pipeline / direct:.2f}")
    if args.keep:
        print(f"work folder: {work}")


if __name__ == "__main__":
    main()
