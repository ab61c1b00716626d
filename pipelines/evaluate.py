"""DVC stage `evaluate`: validate best.pt on the val split.

    python pipelines/evaluate.py <prepared dir> <train dir> <eval dir> <metrics json> [<keypoints json> <images csv>]

Reads `evaluate`, `train.imgsz` and `device` from params.yaml. Writes <metrics json>
(fitness, pose and box precision, recall, mAP50, mAP50-95), <keypoints json> (per keypoint:
OKS AP, PCK@0.05/0.1/0.2, RMSE, visibility accuracy), <images csv> (per-image OKS), and
Ultralytics' validation plots and the error gallery to <eval dir>, and logs them to the
training's MLflow run.
"""

import argparse
import json
from pathlib import Path

from poseops.params import load_params
from poseops.training.evaluation import evaluate
from poseops.training.layout import Layout, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate the trained model.")
    parser.add_argument("prepared", type=Path)
    parser.add_argument("train", type=Path)
    parser.add_argument("out", type=Path, help="validation plots, e.g. runs/evaluate")
    parser.add_argument("metrics", type=Path, help="e.g. reports/metrics.json")
    parser.add_argument("keypoints", type=Path, nargs="?", default=Layout.keypoints, help="e.g. reports/keypoints.json")
    parser.add_argument("images", type=Path, nargs="?", default=Layout.images_oks, help="e.g. reports/images_oks.csv")
    args = parser.parse_args()

    def step() -> None:
        layout = Layout(prepared=args.prepared, train=args.train, evaluate=args.out, metrics=args.metrics,
                        keypoints=args.keypoints, images_oks=args.images)
        print(json.dumps(evaluate(load_params(), layout=layout).metrics, indent=2))

    run_stage(step)


if __name__ == "__main__":
    main()
