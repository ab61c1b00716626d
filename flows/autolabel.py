"""Entry point of the `autolabel` flow (poseops.flows.autolabel): python flows/autolabel.py NAME --url URL"""

import sys

from poseops.cli import app

if __name__ == "__main__":
    app(["autolabel", *sys.argv[1:]])
