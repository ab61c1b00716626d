"""The images of a pull or an autolabel run: fetched from Label Studio through a content-addressed cache.

A task's image is downloaded once; the cache keeps it under its SHA-256 (a lookup takes
only a hash, so a crafted task cannot point outside the cache), with an index from the
image URL to the hash, so a second pull of an unchanged project downloads nothing.
Each process that fetches (a pull, every Dask worker of an autolabel run) uses the cache in its own
POSEOPS_HOME: a worker on another machine downloads what its tasks need into its own cache, and
processes that share a disk share one cache safely.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import httpx

from poseops.labelstudio import LabelStudioClient, LabelStudioError
from poseops.pull_results import PullError


def image_url_problem(task: dict) -> str | None:
    """Why the task's `data.image` is no URL to download its image from (None when it is one).

    Label Studio serves uploads and local files under its own URL (`/data/...`); other
    http(s) URLs are fetched as they are. Anything else (a file path, `file://`, `s3://`
    without presigning) is refused, never read from this machine.
    """
    data = task.get("data")
    url = data.get("image") if isinstance(data, dict) else None
    if not isinstance(url, str) or not url:
        keys = ", ".join(map(str, data)) if isinstance(data, dict) else "none"
        return f"no image URL in data.image (its data keys: {keys})"
    if any(ord(c) < 32 for c in url):
        return f"its image URL {url[:200]!r} holds control characters"
    if not url.startswith(("/", "http://", "https://")) or url.startswith("//"):
        return f"its image URL {url[:200]!r} is neither a path on Label Studio (/data/...) nor an http(s) URL"
    path = unquote(url.split("?", 1)[0]).replace("\\", "/")
    if ".." in path.split("/"):
        return f"its image URL {url[:200]!r} climbs out of its folder ('..'); Label Studio never writes such URLs"
    return None


class ImageCache:
    """Images by content hash under `<home>/cache/images` (`<sha256>.<type>`), with the URL each came from."""

    def __init__(self, root: Path):
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.index_path = root / "urls.json"
        self.urls: dict[str, str] = json.loads(self.index_path.read_text()) if self.index_path.is_file() else {}

    def _find(self, sha256: str) -> Path | None:
        return next(iter((self.root / sha256[:2]).glob(f"{sha256}.*")), None)

    def lookup(self, task: dict) -> Path | None:
        data = task.get("data")
        data = data if isinstance(data, dict) else {}
        sha = data.get("sha256") or self.urls.get(str(data.get("image")))
        # only a real hash: a task's text never becomes a path (it could lead out of the cache)
        return self._find(sha) if isinstance(sha, str) and SHA256_HEX.fullmatch(sha) else None

    def store(self, url: str, content: bytes) -> Path:
        sha = hashlib.sha256(content).hexdigest()
        path = self._find(sha)
        if path is None:
            path = self.root / sha[:2] / f"{sha}{image_suffix(content, url)}"
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{sha}.{os.getpid()}.tmp")
            tmp.write_bytes(content)
            tmp.replace(path)
        self.urls[url] = sha
        return path

    def save_index(self) -> None:
        """Write the URL index, keeping what other processes on this cache (Dask workers, a pull) added meanwhile."""
        try:
            on_disk = json.loads(self.index_path.read_text()) if self.index_path.is_file() else {}
        except ValueError:
            on_disk = {}
        self.urls = {**on_disk, **self.urls}
        tmp = self.index_path.with_name(f".urls.{os.getpid()}.{threading.get_ident()}.tmp")  # one per writer
        tmp.write_text(json.dumps(self.urls))
        tmp.replace(self.index_path)


SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_PIL_SUFFIX = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif", "MPO": ".jpg"}


def image_suffix(content: bytes, url: str) -> str:
    """The file type of downloaded image bytes, from the content itself (the URL's suffix may lie)."""
    import io

    from PIL import UnidentifiedImageError

    from poseops.imageio import open_image

    try:
        with open_image(io.BytesIO(content)) as im:
            return _PIL_SUFFIX.get(im.format or "", ".bin")
    except (UnidentifiedImageError, OSError):
        return ".bin"  # not an image: the converter reports it


def fetch_images(
    client: LabelStudioClient, tasks: list[dict], cache: ImageCache, workers: int = 8,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[dict[int, Path], int]:
    """Each task's image as a local file (cache first). Returns (task id → path, number downloaded)."""
    paths: dict[int, Path] = {}
    missing: list[dict] = []
    for task in tasks:
        hit = cache.lookup(task)
        if hit is not None:
            paths[task["id"]] = hit
            if on_progress:
                on_progress(1)
        else:
            missing.append(task)

    def download(task: dict) -> tuple[int, Path]:
        problem = image_url_problem(task)
        if problem is not None:
            raise PullError(f"task {task['id']}: {problem}")
        url = task["data"]["image"]
        try:
            content = client.download(url)
        except (LabelStudioError, httpx.HTTPError) as e:
            kind = type(e) if isinstance(e, LabelStudioError) else LabelStudioError
            raise kind(f"downloading the image of task {task['id']} ({url[:200]}) failed: {e}") from None
        return task["id"], cache.store(url, content)

    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        for task_id, path in pool.map(download, missing):
            paths[task_id] = path
            if on_progress:
                on_progress(1)
    finally:
        pool.shutdown(cancel_futures=True)  # after a failure, the downloads not yet started never start
        cache.save_index()  # what did arrive stays cached for the next pull
    return paths, len(missing)


def image_sha256(path: Path) -> str:
    """The content hash of a cached image (its file name), or computed for any other file."""
    stem = path.stem
    if len(stem) == 64 and all(c in "0123456789abcdef" for c in stem):
        return stem
    return hashlib.sha256(path.read_bytes()).hexdigest()


