"""Safe names and paths for what poseops creates: dataset names, the data folder, lock files,
and replacing a dataset folder in one step.

A dataset name becomes a Label Studio project title, a record file, a folder under the
data root, a `.gitignore` line, a DVC file and a lock file: `check_dataset_name` is the one
validator, and everything that takes a name calls it before it creates anything anywhere.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO

from poseops.errors import PoseopsError

DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
MADE_BY_PULL = "manifest.json"  # a dataset folder poseops made holds this file


class UnsafePath(PoseopsError, ValueError):
    """A name or path that would put something outside where poseops keeps it, or break a file that lists it."""


def check_dataset_name(name: str) -> str:
    """`name` when it is a safe dataset name (1-64 letters, digits, '-', '_'; a letter or digit first); else UnsafePath."""
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        shown = repr(name) if len(str(name)) <= 80 else f"{str(name)[:80]!r}... ({len(str(name))} characters)"
        raise UnsafePath(f"bad dataset name {shown}: use 1 to 64 letters, digits, '-' and '_', starting with a letter "
                         "or digit (the name becomes a folder, a Label Studio project and a DVC file)")
    return name


def inside_project(path: Path, what: str, project: Path | None = None) -> Path:
    """`path` resolved, when it lies inside the project folder (default: the working directory); else UnsafePath."""
    project = (project or Path.cwd()).resolve()
    resolved = (project / path).resolve()
    if resolved != project and project not in resolved.parents:
        raise UnsafePath(f"{what} {path} is outside the project {project}: use a folder inside it "
                         "(datasets are versioned with the project's git and DVC)")
    return resolved


def open_lock_file(path: Path) -> IO[str]:
    """The lock file at `path`, opened for reading and writing (created 0600); a link planted there is refused."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise UnsafePath(f"cannot use the lock file {path} ({e.strerror}): if it is a link, remove it") from None
    return os.fdopen(fd, "r+")


def scratch_dir(parent: Path, name: str, suffix: str) -> Path:
    """A new, empty, hidden folder `.<name>.<random><suffix>` in `parent`, made for this run alone."""
    return Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=suffix, dir=parent))


def swap_into_place(new_dir: Path, target: Path) -> None:
    """Replace `target` with the complete `new_dir`: two renames, and only the folder moved aside is removed.

    A `target` that poseops did not make (no manifest) is refused, not replaced.
    """
    if target.is_symlink() or (target.exists() and not (target / MADE_BY_PULL).is_file()):
        raise UnsafePath(f"{target} exists and was not made by `poseops pull` (it has no {MADE_BY_PULL}); "
                         "move it away, or choose another dataset name or pull.data_root")
    if not target.exists():
        new_dir.rename(target)
        return
    old = scratch_dir(target.parent, target.name, ".old")
    moved = old / target.name
    target.rename(moved)
    new_dir.rename(target)
    shutil.rmtree(old)
