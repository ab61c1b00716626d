"""Running DVC: one way for every part of poseops (the pull, the training pipeline, the demo workspace).

DVC runs as `python -m dvc` of this interpreter, with this interpreter's folder first on PATH,
so the stage commands in dvc.yaml (`python pipelines/….py`) run in the same environment.
It gets no secrets, except the AWS credentials for the commands that reach a remote (`dvc push`,
`dvc pull`, …), which an S3 remote needs (poseops.storage).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from poseops.errors import PoseopsError
from poseops.settings import child_env
from poseops.storage import s3_credentials

# The DVC commands that talk to a remote: only they get the S3 credentials (never the pipeline's stages).
REMOTE_COMMANDS = {"push", "pull", "fetch", "status", "gc", "import", "import-url", "get", "get-url", "ls", "ls-url",
                   "update"}


class DvcError(PoseopsError, RuntimeError):
    """A DVC command failed; the message names it and ends with DVC's own words."""


def run_dvc(args: list[str], cwd: Path, what: str | None = None, stream: bool = False) -> subprocess.CompletedProcess:
    """`dvc <args>` in `cwd`; raises `DvcError` naming `what` (default: the command) when it fails.

    `stream` shows DVC's output as it goes (a long `dvc repro`); else it is captured and returned,
    and the end of it goes into the error.
    """
    cmd = [sys.executable, "-m", "dvc", *args]
    env = child_env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                     **(s3_credentials() if args and args[0] in REMOTE_COMMANDS else {})})
    result = subprocess.run(cmd, cwd=cwd, text=True, capture_output=not stream, env=env)
    if result.returncode != 0:
        what = what or f"`dvc {' '.join(args)}`"
        lines = [line for line in f"{result.stdout or ''}\n{result.stderr or ''}".splitlines()
                 if line.strip() and "dvc.org/support" not in line]
        tail = f":\n{chr(10).join(lines)[-3000:]}" if lines else ""
        raise DvcError(f"{what} failed with exit code {result.returncode} in {cwd}{tail}")
    return result
