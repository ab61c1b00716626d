"""DVC stage `export`: ONNX export and the model version in the MLflow registry.

    python pipelines/export.py <prepared dir> <train dir> <metrics json> <model dir>

Reads `export`, `train.imgsz`, `device` and `mlflow.registered_model` from params.yaml.
Writes <model dir>/best.pt, model.onnx, skeleton.yaml and model_version.json, logs the
model files to the training's run and registers them as a new version with lineage tags.
"""

import argparse
from pathlib import Path

from poseops.params import load_params
from poseops.training.layout import Layout, run_stage
from poseops.training.register import export


def main() -> None:
    parser = argparse.ArgumentParser(description="Export ONNX and register the model version.")
    parser.add_argument("prepared", type=Path)
    parser.add_argument("train", type=Path)
    parser.add_argument("metrics", type=Path)
    parser.add_argument("out", type=Path, help="e.g. models")
    args = parser.parse_args()

    def step() -> None:
        ref = export(load_params(), layout=Layout(prepared=args.prepared, train=args.train, metrics=args.metrics,
                                                  model=args.out))
        print(f"registered {ref.uri} (run {ref.run_id})")

    run_stage(step)


if __name__ == "__main__":
    main()
