"""Where the poseops checkout's own files are: the one place that reaches outside the package.

The pipeline (dvc.yaml, pipelines/), the service's files (bentos/) and the bundled skeleton
specs (label_config/) live in the checkout beside `src/`; `make install` installs the package
from it in editable mode, so they are found from the package's own location.
"""

from __future__ import annotations

from pathlib import Path

from poseops.errors import PoseopsError

CHECKOUT = Path(__file__).resolve().parents[2]


def checkout_path(*parts: str) -> Path:
    """A file or folder of the checkout; a clear error when poseops runs without one."""
    path = CHECKOUT.joinpath(*parts)
    if not path.exists():
        raise PoseopsError(f"{path} is missing: this needs the poseops checkout (its {parts[0]}/ folder), "
                           "installed with `make install`; run from a clone of the repository")
    return path
