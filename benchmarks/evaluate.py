"""The evaluate stage (with per-keypoint metrics, per-image OKS and the error gallery) vs Ultralytics' `val` alone.

    python -m benchmarks.evaluate [--repeat 1] [--imgsz 640]

Both sides validate the same best.pt on the same val split with the same settings (`evaluate` params,
`train.imgsz`, `train.plots`), each in a fresh process, taking turns: the baseline is
`YOLO(best.pt).val(...)` and nothing else; the stage is `python pipelines/evaluate.py …` as `dvc repro`
runs it (one validation pass that also keeps the predictions, the per-keypoint metrics, the per-image CSV,
the gallery, and logging it all to the MLflow run). The val split is coco-mini-train's 80 photos (COCO labels
converted by poseops); the model is yolo11n-pose after one near-zero-learning-rate epoch on coco8-pose's
train photos, trained by the train stage outside the timing, in a fresh workspace and MLflow store.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, prepare
from benchmarks.finetune_coco_mini import build_dataset

STAGE = ["pipelines/evaluate.py", "data/prepared", "runs/train", "runs/evaluate", "reports/metrics.json",
         "reports/keypoints.json", "reports/images_oks.csv"]
BASELINE = """
import sys, yaml
from ultralytics import YOLO
from poseops.params import load_params
p = load_params()
YOLO(sys.argv[1]).val(data=sys.argv[2], split=p.evaluate.split, imgsz=p.train.imgsz, batch=p.evaluate.batch,
                      conf=p.evaluate.conf, iou=p.evaluate.iou, device=p.device, plots=p.train.plots, workers=0,
                      project=sys.argv[3], name="val", exist_ok=True, verbose=False)
"""


def workspace(work: Path, imgsz: int) -> Path:
    """A workspace whose val split is coco-mini-train (80 photos), trained one gentle epoch by the train stage."""
    from poseops import training
    from poseops.demo import make_workspace
    from poseops.params import load_params

    dataset = work / "dataset"
    build_dataset(dataset)  # train: coco-mini-train, val: coco8-pose's 4; swapped below
    for kind in ("images", "labels"):
        (dataset / kind / "val").rename(dataset / kind / "small")
        (dataset / kind / "train").rename(dataset / kind / "val")
        (dataset / kind / "small").rename(dataset / kind / "train")
    for cache in dataset.rglob("*.cache"):
        cache.unlink()
    repo = make_workspace(work / "repo", {
        "dataset": {"name": "bench", "dir": "data/bench"}, "mlflow": {"experiment": "bench-evaluate"},
        "train": {"epochs": 1, "imgsz": imgsz, "batch": 4, "workers": 0, "optimizer": "SGD", "lr0": 0.00001,
                  "warmup_epochs": 0.0, "patience": 0}})
    shutil.move(str(dataset), repo / "data" / "bench")
    params = load_params(repo / "params.yaml")
    training.prepare(params, repo)
    training.train(params, repo)
    return repo


def timed(command: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=1, help="turns of each side (medians are printed)")
    parser.add_argument("--imgsz", type=int, default=640)
    args = parser.parse_args()
    prepare()
    work = Path(tempfile.mkdtemp(prefix="poseops-bench-evaluate-"))
    os.environ.update({"POSEOPS_HOME": str(work / "home"), "YOLO_CONFIG_DIR": str(work / "home" / "ultralytics"),
                       "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'home' / 'mlflow.db'}"})
    repo = workspace(work, args.imgsz)
    from poseops.training import resolved_data_yaml

    data_yaml = resolved_data_yaml(repo / "data" / "prepared" / "data.yaml", work / "data.yaml")
    best = repo / "runs" / "train" / "weights" / "best.pt"
    baseline = [sys.executable, "-c", BASELINE, str(best), str(data_yaml), str(work / "baseline")]
    stage = [sys.executable, *STAGE]
    val_images = len(list((repo / "data" / "bench" / "images" / "val").iterdir()))
    times: dict[str, list[float]] = {"val": [], "stage": []}
    for _ in range(args.repeat):
        times["val"].append(timed(baseline, repo))
        times["stage"].append(timed(stage, repo))
    val, stage_s = statistics.median(times["val"]), statistics.median(times["stage"])
    print(RESULTS)
    print(f"val split: {val_images} photos (coco-mini-train), imgsz {args.imgsz}, CPU, "
          f"{args.repeat} turn(s) each, fresh processes, medians")
    print(f"Ultralytics val alone:                                  {val:6.1f} s  {times['val']}")
    print(f"evaluate stage (+ per-keypoint, per-image OKS, gallery): {stage_s:6.1f} s  {times['stage']}")
    print(f"ratio evaluate stage / Ultralytics val: {stage_s / val:.2f} (target ≤ 1.3)")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
