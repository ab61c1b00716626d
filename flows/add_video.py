"""Entry point of the `add-video` flow (poseops.flows.add_video): python flows/add_video.py NAME VIDEO... --frames 20"""

import sys

from poseops.cli import app

if __name__ == "__main__":
    app(["dataset", "add-video", *sys.argv[1:]])
