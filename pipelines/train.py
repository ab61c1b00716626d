"""DVC stage `train`: train YOLO-pose with Ultralytics, tracked in MLflow.

    python pipelines/train.py <prepared dir> <train dir> <epochs csv>

Reads `train`, `device` and `mlflow` from params.yaml. Writes Ultralytics' run folder
(weights/best.pt, weights/last.pt, results.csv, plots) to <train dir> with the MLflow run
id in <train dir>/poseops.json, and one row per epoch (fitness, pose and box mAP, losses)
to <epochs csv>. An interrupted run with the same params resumes from its last.pt.
"""

import argparse
from pathlib import Path

from poseops.params import load_params
from poseops.training.fit import train
from poseops.training.layout import Layout, run_stage
from poseops.training.yolo import preload_libraries


def main() -> None:
    parser = argparse.ArgumentParser(description="Train YOLO-pose.")
    parser.add_argument("prepared", type=Path, help="the prepare stage's folder, e.g. data/prepared")
    parser.add_argument("out", type=Path, help="Ultralytics' run folder, e.g. runs/train")
    parser.add_argument("epochs_csv", type=Path, help="per-epoch metrics for DVC plots, e.g. reports/epochs.csv")
    args = parser.parse_args()

    def step() -> None:
        preload_libraries()  # torch, Ultralytics and MLflow, out of the garbage collector's way
        result = train(load_params(), layout=Layout(prepared=args.prepared, train=args.out, epochs_csv=args.epochs_csv))
        last = result.epochs[-1] if result.epochs else {}
        print(f"MLflow run {result.run_id}{' (resumed)' if result.resumed else ''}: {len(result.epochs)} epochs, "
              f"last fitness {last.get('fitness', float('nan')):.4f}")

    run_stage(step)


if __name__ == "__main__":
    main()
