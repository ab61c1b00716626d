"""Reading a Label Studio JSON export (Export → JSON): its tasks, checked for shape, and
the image file of each task in a local folder.
"""

from __future__ import annotations

import gc
import json
import re
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from poseops.conversion.vocab import ID_TYPES
from poseops.errors import PoseopsError


class ExportError(PoseopsError, ValueError):
    """A Label Studio export file that cannot be read; the message says what to do."""


def load_export(path: str | Path) -> list[dict]:
    """The tasks of a Label Studio JSON export file (Export → JSON), checked for shape."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(f"{path}: no such file; export the project from Label Studio as JSON and pass that file") from None
    except OSError as e:
        raise ExportError(f"{path}: cannot be read ({e})") from None
    try:
        with gc_paused():
            tasks = _json_loads(data)
    except json.JSONDecodeError as e:
        raise ExportError(f"{path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); the download may be "
                          "cut off: export it again") from None
    except UnicodeDecodeError as e:
        raise ExportError(f"{path}: not UTF-8 text ({e}); is it a ZIP or image export? Export as JSON") from None
    if isinstance(tasks, dict) and "id" in tasks and "data" in tasks:
        tasks = [tasks]  # the export of a single task
    return check_tasks(tasks, str(path))


def check_tasks(tasks: Any, where: str) -> list[dict]:
    """`tasks` if it is a list of Label Studio tasks (each a dict with an int or text id and its
    annotations), else an ExportError naming the first bad item. The regions are checked later, one by one."""
    if not isinstance(tasks, list):
        raise ExportError(f"{where}: expected a JSON list of tasks (Label Studio's 'JSON' export), found a "
                          f"{type(tasks).__name__}")
    first_item: dict[Any, int] = {}
    for i, task in enumerate(tasks):
        if not isinstance(task, dict) or "id" not in task or not ("annotations" in task or "completions" in task):
            raise ExportError(f"{where}: item #{i} is not a task with 'id' and 'annotations'; is this a JSON-MIN, CSV "
                              "or COCO export? Export the project as 'JSON', which keeps region ids and parentID")
        task_id = task["id"]
        if type(task_id) not in ID_TYPES:
            raise ExportError(f"{where}: item #{i} has the id {task_id!r}, not a number or text; the file is not a "
                              "Label Studio export as it was written: export the project as 'JSON' again")
        if task_id in first_item:  # its image and labels could not be told apart from the other's
            raise ExportError(f"{where}: items #{first_item[task_id]} and #{i} are both task {task_id!r}; are two "
                              "exports joined? Export the project as 'JSON' again, one project per file")
        first_item[task_id] = i
    return tasks


@contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building many small objects (JSON tasks, poses).

    They hold no reference cycles, yet each allocation burst triggers a full scan of
    them: pausing it makes reading a large export 3-4x faster. Restored on exit.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _json_loads(data: bytes) -> Any:
    """`orjson.loads` where installed (about 3x faster on big exports), else the standard library's."""
    try:
        import orjson
    except ImportError:
        return json.loads(data)
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)  # the same error, with the standard library's line and column


# --- matching an export's tasks to a folder of images -----------------------------------

_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")


def match_images(tasks: Iterable[dict], images_dir: str | Path) -> tuple[dict[Any, Path], list[Any]]:
    """Task id → image file in `images_dir`, by the task's file name; and the ids with no such file.

    Tried in order: `data.source` (set by `poseops dataset upload`), the base name of
    `data.image`, and that name without Label Studio's `<8 hex>-` upload prefix. Only base
    names are used, so no task can point outside `images_dir`.
    """
    root = Path(images_dir).resolve()
    found: dict[Any, Path] = {}
    missing: list[Any] = []
    for task in tasks:
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        names = []
        for value in (data.get("source"), data.get("image")):
            if isinstance(value, str) and value:
                for text in dict.fromkeys((value, unquote(value))):  # Label Studio URL-encodes upload names
                    base = text.replace("\\", "/").rsplit("/", 1)[-1].split("?", 1)[0]
                    names += [base, _UPLOAD_PREFIX.sub("", base)]
        for name in names:
            if name in ("", ".", "..") or "\x00" in name:
                continue
            candidate = root / name
            if candidate.is_file() and candidate.resolve().parent == root:
                found[task.get("id")] = candidate
                break
        else:
            missing.append(task.get("id"))
    return found, missing
