"""Lineage: the git commit the code ran from and the DVC hash of the dataset it trained on."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any


def git_info(root: Path) -> dict[str, str]:
    """The commit the code ran from and whether tracked files differed from it (`dirty`)."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": "none", "git_dirty": "unknown"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": "true" if dirty else "false", "git_branch": git("rev-parse", "--abbrev-ref", "HEAD")}


class _SkipUltralyticsCaches:
    """Without a DVC repo there is no .dvcignore: skip the label caches Ultralytics writes into the dataset."""

    def walk(self, fs: Any, path: str, **kwargs: Any):
        for root, dirs, files in fs.walk(path, **kwargs):
            yield root, dirs, [f for f in files if not f.endswith(".cache")]

    def find(self, fs: Any, path: str):
        for root, _, files in self.walk(fs, path):
            for f in files:
                yield f"{root}{fs.sep}{f}"


def dvc_hash(path: Path) -> str:
    """The DVC hash of a dataset directory (`<md5>.dir`), as `dvc add`/dvc.lock record it.

    Prefers the `<dir>.dvc` file the dataset pull wrote; else computes it, honouring the
    repository's .dvcignore when the directory is inside a DVC repository.
    """
    path = path.resolve()
    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.is_file():
        import yaml

        outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or []
        if outs and outs[0].get("md5"):
            return str(outs[0]["md5"])
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    odb = HashFileDB(MemoryFileSystem(), "/poseops-hash")
    repo_root = next((p for p in (path, *path.parents) if (p / ".dvc").is_dir()), None)
    if repo_root is not None:
        from dvc.repo import Repo

        with Repo(str(repo_root)) as repo:
            _, _, obj = build(odb, str(path), repo.fs, "md5", ignore=repo.dvcignore, dry_run=True)
    else:
        _, _, obj = build(odb, str(path), LocalFileSystem(), "md5", ignore=_SkipUltralyticsCaches(), dry_run=True)
    return str(obj.hash_info.value)
