"""DVC stage `evaluate`: validate best.pt on the val split, then export it, check the exports and register them.

    python pipelines/evaluate.py <prepared dir> <train dir> <eval dir> <metrics json> [<keypoints json> <images csv>]
                                 [--export <model dir>]

Reads `evaluate`, `train.imgsz` and `device` from params.yaml. Writes <metrics json>
(fitness, pose and box precision, recall, mAP50, mAP50-95), <keypoints json> (per keypoint:
OKS AP, PCK@0.05/0.1/0.2, RMSE, visibility accuracy), <images csv> (per-image OKS), and
Ultralytics' validation plots and the error gallery to <eval dir>, and logs them to the
training's MLflow run.

With `--export <model dir>` (as dvc.yaml runs it) it goes on in the same process, so that torch,
Ultralytics and MLflow load once: it exports best.pt to `export.formats` in <model dir>, checks each
export against best.pt on the val split, logs the model files to the run and registers them as a new
model version (`mlflow.registered_model`), writing <model dir>/model_version.json and skeleton.yaml.
"""

import argparse
import json
from pathlib import Path

from poseops.params import load_params
from poseops.training.evaluation import evaluate
from poseops.training.layout import Layout, run_stage
from poseops.training.register import export
from poseops.training.yolo import preload_libraries


def main() -> None:
    parser = argparse.ArgumentParser(description="Evaluate the trained model, then export and register it.")
    parser.add_argument("prepared", type=Path)
    parser.add_argument("train", type=Path)
    parser.add_argument("out", type=Path, help="validation plots, e.g. runs/evaluate")
    parser.add_argument("metrics", type=Path, help="e.g. reports/metrics.json")
    parser.add_argument("keypoints", type=Path, nargs="?", default=Layout.keypoints, help="e.g. reports/keypoints.json")
    parser.add_argument("images", type=Path, nargs="?", default=Layout.images_oks, help="e.g. reports/images_oks.csv")
    parser.add_argument("--export", type=Path, metavar="MODEL_DIR",
                        help="then export, check and register the model, its files in MODEL_DIR (e.g. models)")
    args = parser.parse_args()

    def step() -> None:
        preload_libraries()  # torch, Ultralytics and MLflow, out of the garbage collector's way
        params = load_params()
        layout = Layout(prepared=args.prepared, train=args.train, evaluate=args.out, metrics=args.metrics,
                        keypoints=args.keypoints, images_oks=args.images, model=args.export or Layout.model)
        print(json.dumps(evaluate(params, layout=layout).metrics, indent=2))
        if args.export:
            ref = export(params, layout=layout)
            print(f"registered {ref.uri} (run {ref.run_id})")

    run_stage(step)


if __name__ == "__main__":
    main()
