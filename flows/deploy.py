"""Entry point of the `deploy` flow (poseops.flows.deploy): python flows/deploy.py [--model models:/NAME@ALIAS]"""

import sys

from poseops.cli import app

if __name__ == "__main__":
    app(["deploy", *sys.argv[1:]])
