"""Pull a Label Studio project into a validated, DVC-versioned YOLO-pose dataset.

The steps, each a plain function (the Prefect flow in `flows/pull_labels.py` runs them
as tasks): export a snapshot, check the labels are ready, fetch the images through a
content-addressed cache, convert into a temporary directory, swap it into place, and
record the result with DVC (pushed to the configured remote) and git.

A failed pull leaves the previous dataset untouched: nothing is written to
`data/<name>` until the new dataset is complete. Two pulls of one dataset at once:
the second fails at once, saying so.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote

import httpx

from poseops.conversion.report import ConversionReport
from poseops.dvc import DvcError, run_dvc
from poseops.errors import PoseopsError
from poseops.labelstudio import LabelStudioClient, LabelStudioError
from poseops.params import PullParams
from poseops.pull_results import DatasetManifest, PullRecord, PullResult
from poseops.safepaths import check_dataset_name, inside_project, open_lock_file, scratch_dir, swap_into_place
from poseops.settings import Settings
from poseops.skeleton import Skeleton


class NotReady(PoseopsError, RuntimeError):
    """The labels are not ready to train on; the message says why and what to do."""


class PullError(PoseopsError, RuntimeError):
    pass


class DvcPushError(PullError):
    """The dataset was built and recorded locally, but the DVC remote did not take it."""


_DEFAULTS = PullParams()


@dataclass(frozen=True)
class PullOptions:
    """The `pull` section of params.yaml (defaults there) plus what one pull decides."""

    min_images: int = _DEFAULTS.min_images
    min_images_recommended: int = _DEFAULTS.min_images_recommended
    val_fraction: float = _DEFAULTS.val_fraction
    allow_unlabeled: bool = _DEFAULTS.allow_unlabeled
    data_root: Path = Path(_DEFAULTS.data_root)
    workers: int = _DEFAULTS.workers
    version: bool = True  # record with DVC (+ push) and git
    commit: bool = True  # commit the .dvc file to git


def pull_options(section: PullParams, **overrides) -> PullOptions:
    """Options from the (validated) `pull` section of params.yaml, then explicit overrides (None = keep)."""
    values = {**dataclasses.asdict(section), **{k: v for k, v in overrides.items() if v is not None}}
    values["data_root"] = Path(values["data_root"])
    return PullOptions(**values)


@dataclass
class Snapshot:
    project_id: int
    export_id: int
    tasks: list[dict]


# --- export ------------------------------------------------------------------------------


def export_snapshot(client: LabelStudioClient, project_id: int, timeout: float = 600.0) -> Snapshot:
    """Create an export snapshot of every task (labeled or not), wait for it, download its JSON."""
    sdk = client.sdk
    try:
        export = sdk.projects.exports.create(project_id, title=f"poseops pull {datetime.now(UTC):%Y-%m-%d %H:%M:%S}")
        deadline = time.monotonic() + timeout
        status = export.status
        while status not in ("completed", "failed"):
            if time.monotonic() > deadline:
                raise LabelStudioError(f"export snapshot {export.id} of project {project_id} not ready after {timeout:.0f} s")
            time.sleep(0.5)
            status = sdk.projects.exports.get(project_id, export.id).status
        if status == "failed":
            raise LabelStudioError(f"Label Studio failed to build export snapshot {export.id}; see its log")
        raw = b"".join(sdk.projects.exports.download(project_id, export.id, export_type="JSON"))
    except LabelStudioError:
        raise
    except Exception as e:  # the SDK raises its own HTTP and connection errors
        raise LabelStudioError(
            f"exporting project {project_id} from Label Studio at {client.url} failed ({type(e).__name__}: "
            f"{str(e)[:300]}). Is it running? `poseops labelstudio status`"
        ) from None
    from poseops.convert import ExportError, check_tasks

    try:
        tasks = check_tasks(json.loads(raw), f"export snapshot {export.id} of project {project_id}")
    except json.JSONDecodeError as e:
        raise LabelStudioError(f"export snapshot {export.id} is not JSON ({e})") from None
    except ExportError as e:
        raise LabelStudioError(str(e)) from None
    return Snapshot(project_id, export.id, tasks)


# --- the ready gate ------------------------------------------------------------------------


@dataclass
class Readiness:
    labeled: list[dict]
    unlabeled_ids: list[int]
    skipped_ids: list[int]
    warnings: list[str]


def check_ready(tasks: list[dict], options: PullOptions, dataset: str, skeleton: Skeleton | None = None) -> Readiness:
    """Which tasks are training data; refuse (NotReady) when the project is not ready to train on.

    With the skeleton, labeled keypoints that would reach no object (no box, no derived box) refuse too.
    """
    from poseops.convert import choose_annotation

    labeled, unlabeled, skipped = [], [], []
    for task in tasks:
        annotation, problem = choose_annotation(task)
        if annotation is not None:
            labeled.append(task)
        elif problem is not None and problem.kind == "cancelled":  # skipped by the annotator: not training data
            skipped.append(task["id"])
        else:
            unlabeled.append(task["id"])
    unfetchable = [(task["id"], why) for task in labeled if (why := image_url_problem(task)) is not None]
    if unfetchable:
        listed = "; ".join(f"task {task_id}: {why}" for task_id, why in unfetchable[:20])
        raise NotReady(f"{len(unfetchable)} labeled task(s) of {dataset!r} have no image poseops can download "
                       f"({listed}{' ...' if len(unfetchable) > 20 else ''}). Images are fetched over HTTP from Label "
                       "Studio: fix or delete those tasks there (`poseops dataset upload` imports images the right "
                       "way), then pull again.")
    warnings: list[str] = []
    if unlabeled:
        ids = ", ".join(map(str, unlabeled[:50])) + (" ..." if len(unlabeled) > 50 else "")
        message = f"{len(unlabeled)} of {len(tasks)} tasks of {dataset!r} are not labeled (task ids: {ids})"
        if not options.allow_unlabeled:
            raise NotReady(f"{message}. Label them all in Label Studio (or skip the ones that should not be used), "
                           "then pull again; to train on the labeled ones only, pass --allow-unlabeled.")
        warnings.append(f"{message}; going on without them (--allow-unlabeled)")
    if skeleton is not None:
        from poseops.conversion.unplaced import unplaced_keypoints

        unplaced = unplaced_keypoints(skeleton, labeled)
        if unplaced:
            raise NotReady(f"{dataset!r}: {unplaced.message(skeleton.source, 'pull again')}")
    if len(labeled) < options.min_images:
        raise NotReady(f"{dataset!r} has {len(labeled)} labeled images; at least {options.min_images} are needed "
                       f"(params.yaml pull.min_images). Upload and label more: `poseops dataset upload {dataset} PATH`.")
    if len(labeled) < options.min_images_recommended:
        warnings.append(f"only {len(labeled)} labeled images; {options.min_images_recommended} or more are recommended "
                        "for a model that generalizes")
    return Readiness(labeled, unlabeled, skipped, warnings)


# --- images ---------------------------------------------------------------------------------


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
        tmp = self.index_path.with_suffix(".tmp")
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


# --- the dataset directory --------------------------------------------------------------------


@contextmanager
def dataset_lock(data_root: Path, name: str) -> Iterator[None]:
    """One pull per dataset at a time: the second fails clearly instead of mixing two datasets.

    The name and the data root are checked before anything is made: a bad name, or a data
    root outside the project, is refused with nothing created or changed.
    """
    check_dataset_name(name)
    inside_project(data_root, "pull.data_root")
    data_root.mkdir(parents=True, exist_ok=True)
    ignore_scratch_files(data_root)
    with open_lock_file(data_root / f".{name}.lock") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise PullError(f"another pull of {name!r} is running ({holder}); wait for it to finish, then pull again") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


SCRATCH_PATTERNS = ("/.*.lock", "/.*.tmp", "/.*.old")


def ignore_scratch_files(data_root: Path) -> None:
    """Keep pull's lock and temporary folders out of git (DVC adds its own lines to the same file)."""
    ignore = data_root / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    missing = [p for p in SCRATCH_PATTERNS if p not in lines]
    if missing:
        ignore.write_text("\n".join([*lines, *missing]) + "\n")


# --- DVC and git -------------------------------------------------------------------------------------


def _run(cmd: list[str], cwd: Path, what: str) -> str:
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if r.returncode != 0:
        lines = [line for line in (r.stderr or r.stdout).splitlines() if line.strip() and "dvc.org/support" not in line]
        raise PullError(f"{what} failed: {chr(10).join(lines)[-1500:]}")
    return r.stdout


def dvc(args: list[str], cwd: Path, what: str) -> str:
    try:
        return run_dvc(args, cwd, what).stdout
    except DvcError as e:
        raise PullError(str(e)) from None


def repo_root(path: Path) -> Path:
    r = subprocess.run(["git", "rev-parse", "--show-toplevel"], cwd=path, capture_output=True, text=True)
    if r.returncode != 0:
        raise PullError(f"{path.resolve()} is not inside a git repository; DVC versions datasets in git. "
                        "Run `git init` there (or pass --no-version).")
    return Path(r.stdout.strip())


def ensure_dvc(root: Path, settings: Settings) -> None:
    """DVC initialized in the repository, with a default remote (a local folder on first use)."""
    if not (root / ".dvc").is_dir():
        dvc(["init", "-q"], root, "dvc init")
    if not dvc(["remote", "list"], root, "dvc remote list").strip():
        remote = (settings.home / "dvc-remote").resolve()
        remote.mkdir(parents=True, exist_ok=True)
        dvc(["remote", "add", "-d", "local", str(remote)], root, "dvc remote add")


def default_remote(root: Path) -> str:
    """`'name' (url)` of the DVC remote `dvc push` uses, for messages."""
    try:
        name = dvc(["remote", "default"], root, "dvc remote default").strip()
        return f"{name!r} ({dvc(['config', f'remote.{name}.url'], root, 'dvc config').strip()})"
    except PullError:
        return "(see `dvc remote list`)"


def dvc_md5(dvc_file: Path) -> str:
    import yaml

    outs = yaml.safe_load(dvc_file.read_text())["outs"]
    return outs[0]["md5"]


def version_dataset(
    dataset_dir: Path, settings: Settings, message: str, record: PullRecord, commit: bool = True
) -> tuple[str, bool, str | None]:
    """`dvc add` + `dvc push` the dataset and commit its .dvc file and pull record.

    The pull record is rewritten only when the data changed, so it always describes the
    version it sits beside. Returns (DVC hash, pushed, git commit). When the remote does not
    take the data, the version is still recorded and committed locally, then DvcPushError says so.
    """
    root = repo_root(dataset_dir.parent)
    ensure_dvc(root, settings)
    rel = dataset_dir.resolve().relative_to(root)
    dvc_file = root / f"{rel}.dvc"
    before = dvc_md5(dvc_file) if dvc_file.is_file() else None
    dvc(["add", "-q", str(rel)], root, f"dvc add {rel}")
    md5 = dvc_md5(dvc_file)
    record_path = pull_record_path(dataset_dir)
    if md5 != before or not record_path.is_file():
        write_pull_record(record_path, dataclasses.replace(record, dvc_md5=md5))
    push_failure = None
    try:
        dvc(["push", str(dvc_file.relative_to(root))], root, "dvc push")  # not -q: that hides its error
    except PullError as e:
        push_failure = str(e)  # the version is in the local DVC cache: committed below, pushed later
    git_commit = None
    if commit:
        paths = [str(dvc_file.relative_to(root)), str(record_path.resolve().relative_to(root)),
                 str(rel.parent / ".gitignore"), ".dvc/config", ".dvcignore", ".dvc/.gitignore"]
        paths = [p for p in paths if (root / p).exists()]
        _run(["git", "add", "--", *paths], root, "git add")
        staged = subprocess.run(["git", "diff", "--cached", "--quiet", "--", *paths], cwd=root)
        if staged.returncode != 0:
            _run(["git", "commit", "-q", "-m", message, "--", *paths], root, "git commit")
        git_commit = _run(["git", "rev-parse", "HEAD"], root, "git rev-parse").strip()
    if push_failure is not None:
        dvc_rel = dvc_file.relative_to(root)
        kept = f"committed to git ({git_commit[:12]})" if git_commit else "not committed to git (--no-commit)"
        raise DvcPushError(
            f"{rel} was built and recorded with DVC locally (version {md5}, {kept}), but the DVC remote "
            f"{default_remote(root)} did not take it: {push_failure[-600:]}\nThe dataset is usable on this machine; "
            f"nobody else can fetch it yet. Make the remote reachable, then run `dvc push {dvc_rel}` in {root} "
            "(or pull again: it pushes the same version)."
        )
    return md5, True, git_commit


# --- the whole pull ----------------------------------------------------------------------------------


def build_dataset(
    settings: Settings,
    name: str,
    skeleton: Skeleton,
    options: PullOptions,
    snapshot: Snapshot,
    ready: Readiness,
    images: dict[int, Path],
    label_studio_url: str,
    say: Callable[[str], None] = lambda _: None,
) -> PullResult:
    """Split, convert into a temporary directory, swap it into `data/<name>`, version it with DVC.

    Call inside `dataset_lock`. Nothing under `data/<name>` changes unless the new dataset is complete.
    """
    target = options.data_root / name
    manifest = convert_into_place(name, skeleton, options, snapshot, ready, images)
    result = PullResult(target, manifest, pull_record(name, label_studio_url, snapshot, ready),
                        warnings=[*ready.warnings, *conversion_warnings(manifest.conversion, target)])
    record_path = pull_record_path(target)
    if options.version:
        message = f"pull {name}: Label Studio snapshot {snapshot.export_id}, {len(ready.labeled)} labeled images"
        result.dvc_md5, result.pushed, result.git_commit = version_dataset(
            target, settings, message, result.pull_record, options.commit)
        say(f"DVC version {result.dvc_md5}, pushed")
    else:
        write_pull_record(record_path, result.pull_record)
    try:  # the record beside the dataset as it now stands (an unchanged version keeps its earlier record)
        result.pull_record = PullRecord.from_record(json.loads(record_path.read_text()), str(record_path))
    except ValueError as e:
        raise PullError(str(e)) from None
    return result


def convert_into_place(name: str, skeleton: Skeleton, options: PullOptions, snapshot: Snapshot, ready: Readiness,
                       images: dict[int, Path]) -> DatasetManifest:
    """Convert the labeled tasks into `data/.<name>.tmp`, then swap it into `data/<name>`; its manifest."""
    from poseops.convert import convert_export, split_for

    split = {task_id: split_for(image_sha256(path), options.val_fraction) for task_id, path in images.items()}
    n_val = sum(1 for s in split.values() if s == "val")
    if n_val == 0 or n_val == len(split):
        raise NotReady(
            f"the split of {len(split)} images gives {n_val} for validation and {len(split) - n_val} for training "
            f"(pull.val_fraction = {options.val_fraction}); both need images: label more images or change val_fraction"
        )
    target = options.data_root / name
    tmp = scratch_dir(options.data_root, name, ".tmp")  # this run's own: nothing else is removed
    try:
        report = convert_export(ready.labeled, skeleton, images, tmp, split)
        if not sum(report.objects.values()):
            raise NotReady(f"{name!r} holds no object at all in its {report.annotations_used} labeled image(s) "
                           f"({len(report.skipped_tasks)} task(s) left out: "
                           f"{conversion_summary(report.skipped_tasks) or 'none'}); a model cannot learn from that. "
                           "Label the objects in Label Studio, then pull again.")
        if not report.images["train"] or not report.images["val"]:
            raise NotReady(f"after leaving out {len(report.skipped_tasks)} task(s) the converter could not use, "
                           f"{report.images['train']} training and {report.images['val']} validation images are "
                           f"left; both need images: fix those tasks ({conversion_summary(report.skipped_tasks)})")
        relocate_data_yaml(tmp / "data.yaml", target)
        manifest = DatasetManifest(name, snapshot.project_id, len(ready.labeled), report)
        (tmp / "manifest.json").write_text(json.dumps(manifest.to_dict(), indent=2) + "\n")
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    swap_into_place(tmp, target)
    final = target.resolve()
    report = dataclasses.replace(report, out_dir=str(final), data_yaml=str(final / "data.yaml"))
    return dataclasses.replace(manifest, conversion=report)


def conversion_warnings(report: ConversionReport, target: Path) -> list[str]:
    """A warning for the tasks left out and one for the regions changed or left out, if any."""
    warnings = []
    if report.skipped_tasks:
        warnings.append(f"{len(report.skipped_tasks)} labeled task(s) left out of the dataset: "
                        f"{conversion_summary(report.skipped_tasks)}; see {target / 'manifest.json'}")
    if report.problems:
        warnings.append(f"{len(report.problems)} region(s) changed, doubtful or left out: "
                        f"{conversion_summary(report.problems)}; see {target / 'manifest.json'}")
    return warnings


def pull_record(name: str, label_studio_url: str, snapshot: Snapshot, ready: Readiness) -> PullRecord:
    """The record of this pull (its `dvc_md5` is set when the version is recorded with DVC)."""
    return PullRecord(
        dataset=name,
        label_studio_url=label_studio_url,
        label_studio_project_id=snapshot.project_id,
        export_snapshot_id=snapshot.export_id,
        pulled_at=datetime.now(UTC).isoformat(timespec="seconds"),
        tasks=len(snapshot.tasks),
        labeled_tasks=len(ready.labeled),
        unlabeled_task_ids=ready.unlabeled_ids,
        skipped_task_ids=ready.skipped_ids,
    )


def write_pull_record(path: Path, record: PullRecord) -> None:
    path.write_text(json.dumps(record.to_record(), indent=2) + "\n")


def conversion_summary(problems: list, shown: int = 10) -> str:
    """`task 12: unknown_label, task 15: no_image, ...` for a warning line."""
    listed = ", ".join(f"task {p.task_id}: {p.kind}" for p in problems[:shown])
    return listed + (f" and {len(problems) - shown} more" if len(problems) > shown else "")


def pull_record_path(dataset_dir: Path) -> Path:
    """`data/<name>.pull.json`: where the current dataset version came from (git-tracked, beside its .dvc file)."""
    return dataset_dir.with_name(f"{dataset_dir.name}.pull.json")


def relocate_data_yaml(data_yaml: Path, target: Path) -> None:
    """Point data.yaml at the dataset's final place, relative (`data/<name>`): the same on every clone.

    Training runs from the repository root (as `dvc repro` does), where this path resolves.
    """
    import yaml

    data = yaml.safe_load(data_yaml.read_text())
    data["path"] = target.as_posix()
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
