"""Entry point of the `pull-labels` flow (poseops.flows.pull_labels): python flows/pull_labels.py NAME"""

import sys

from poseops.cli import app

if __name__ == "__main__":
    app(["pull", *sys.argv[1:]])
