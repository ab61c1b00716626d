"""Entry point serving every flow as a Prefect deployment (poseops.flows.serve): python flows/serve.py"""

import sys

from poseops.cli import app

if __name__ == "__main__":
    app(["serve-flows", *sys.argv[1:]])
