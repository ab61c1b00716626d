"""Entry point of the `improvement-loop` flow (poseops.flows.loop): python flows/loop.py NAME"""

import sys

from poseops.cli import app

if __name__ == "__main__":
    app(["loop", *sys.argv[1:]])
