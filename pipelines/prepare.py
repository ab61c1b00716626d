"""DVC stage `prepare`: check the dataset against the skeleton spec and write what training reads.

    python pipelines/prepare.py <out dir>

Reads `dataset`, `skeleton` and `prepare` from params.yaml; writes <out>/data.yaml (names,
kpt_shape, flip_idx and keypoint names from the skeleton spec) and <out>/dataset.json
(the dataset's DVC hash, its Label Studio manifest, per-split and per-keypoint counts).
"""

import argparse
from pathlib import Path

from poseops.params import load_params
from poseops.training.dataset import prepare
from poseops.training.layout import Layout, run_stage


def main() -> None:
    parser = argparse.ArgumentParser(description="Prepare the dataset for training.")
    parser.add_argument("out", type=Path, help="output folder, e.g. data/prepared")
    args = parser.parse_args()

    def step() -> None:
        info = prepare(load_params(), layout=Layout(prepared=args.out))
        splits = ", ".join(f"{s}: {v.images} images, {v.instances} instances" for s, v in info.splits.items())
        print(f"prepared {info.name} ({info.dvc_hash}): {splits}")

    run_stage(step)


if __name__ == "__main__":
    main()
