"""What the pipeline costs over training with Ultralytics directly: wall time, one run each.

    python benchmarks/train_overhead.py --dataset path/to/coco8-pose [--epochs 3 --imgsz 320]

Builds a throw-away git+DVC project around a copy of the dataset (YOLO-pose layout:
images/ and labels/ with train/ and val/), then times, each in a fresh process:

  direct     YOLO(weights).train(...) with the very arguments the train stage passes
  pipeline   `dvc exp run -S train.epochs=… -S train.imgsz=…`: prepare → train → evaluate → export,
             MLflow logging (SQLite store), ONNX export and model registration; the train stage
             alone is timed too (`dvc exp run train`, then the rest)

and prints the times and the ratios pipeline / direct. The machine's other load adds noise:
compare ratios from the same run, and repeat on a quiet machine for numbers to keep.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
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


def main() -> None:
    default_dataset = os.environ.get("POSEOPS_BENCH_DATASET") or (
        str(Path(os.environ["POSEOPS_SAMPLE_IMAGES"]).parent) if os.environ.get("POSEOPS_SAMPLE_IMAGES") else None)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, default=default_dataset, required=default_dataset is None,
                        help="a YOLO-pose dataset folder with 17 COCO keypoints (images/, labels/)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--keep", action="store_true", help="keep the work folder and print its path")
    args = parser.parse_args()

    from poseops.params import load_params
    from poseops.training import ultralytics_train_args
    from poseops.weights import resolve_weights

    work = Path(tempfile.mkdtemp(prefix="poseops-bench-"))
    env = {**os.environ, "POSEOPS_HOME": str(work / "home"), "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'home' / 'mlflow.db'}",
           "YOLO_CONFIG_DIR": str(work / "home" / "ultralytics"), "YOLO_OFFLINE": os.environ.get("YOLO_OFFLINE", "true"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    base = {"train": {"workers": 0, "batch": args.batch}, "mlflow": {"experiment": "benchmark"}, "device": args.device}
    overrides = {"train.epochs": args.epochs, "train.imgsz": args.imgsz}
    try:
        repo = work / "repo"
        make_project(repo, args.dataset, base)
        params = load_params(repo / "params.yaml", overrides)

        # direct: the same Ultralytics arguments as the train stage, on its own copy of the dataset
        direct_data = work / "direct" / "data"
        copy_dataset(args.dataset, direct_data)
        train_args = {**ultralytics_train_args(params), "model": resolve_weights(params.train.model),
                      "data": str(direct_data / "data.yaml"), "project": str(work / "direct"), "name": "train"}
        direct = timed([sys.executable, "-c", DIRECT, json.dumps(train_args)], work, env)

        # a deployment's MLflow store exists already: create it (tables, experiment) outside the timing
        init = "from poseops import tracking; tracking.experiment_id(tracking.client(), 'benchmark')"
        subprocess.run([sys.executable, "-c", init], env=env, check=True, capture_output=True)
        sets = [a for k, v in overrides.items() for a in ("-S", f"{k}={v}")]
        dvc = [sys.executable, "-m", "dvc", "exp", "run"]
        upto_train = timed([*dvc, "train", *sets], repo, env)  # prepare + train
        rest = timed([*dvc, *sets], repo, env)  # evaluate + export (+ registration); prepare/train are skipped
        pipeline = upto_train + rest
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"dataset {args.dataset}, {args.epochs} epochs, imgsz {args.imgsz}, batch {args.batch}, device {args.device}")
    print(f"{'direct Ultralytics train':<44} {direct:8.1f} s")
    print(f"{'pipeline: prepare + train (dvc exp run train)':<44} {upto_train:8.1f} s")
    print(f"{'pipeline: evaluate + export + register':<44} {rest:8.1f} s")
    print(f"{'pipeline: total':<44} {pipeline:8.1f} s")
    print(f"ratio train stage / direct: {upto_train / direct:.2f}")
    print(f"ratio full pipeline / direct: {pipeline / direct:.2f}")
    if args.keep:
        print(f"work folder: {work}")


if __name__ == "__main__":
    main()
