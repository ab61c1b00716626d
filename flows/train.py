"""Entry point of the `train` flow (poseops.flows.train): python flows/train.py [-S train.epochs=3] [--no-dvc]"""

import sys

from poseops.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]])
