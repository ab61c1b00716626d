"""Pull a Label Studio project into a validated, DVC-versioned YOLO-pose dataset.

The steps, each a plain function (the Prefect flow in `poseops.flows.pull_labels` runs them
as tasks): export a snapshot, check the labels are ready, fetch the images through a
content-addressed cache (`poseops.imagecache`), convert into a temporary directory, swap it
into place, and record the result with DVC (pushed to the configured remote) and git
(`poseops.versioning`). The results and errors are typed in `poseops.pull_results`.

A failed pull leaves the previous dataset untouched: nothing is written to
`data/<name>` until the new dataset is complete. Two pulls of one dataset at once:
the second fails at once, saying so.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from poseops.conversion.report import ConversionReport
from poseops.imagecache import ImageCache, fetch_images, image_sha256, image_suffix, image_url_problem  # noqa: F401
from poseops.labelstudio import LabelStudioClient, LabelStudioError
from poseops.params import PullParams
from poseops.pull_results import (  # noqa: F401 - the pull's errors and results, importable from here
    DatasetManifest,
    DvcPushError,
    NotReady,
    PullError,
    PullRecord,
    PullResult,
    pull_record_path,
    write_pull_record,
)
from poseops.safepaths import check_dataset_name, inside_project, scratch_dir, swap_into_place
from poseops.settings import Settings, load_settings
from poseops.skeleton import Skeleton
from poseops.versioning import dvc, dvc_md5, ensure_dvc, remote_outdated, repo_root, version_dataset  # noqa: F401

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
    max_flagged: float = _DEFAULTS.max_flagged  # label checks (poseops.labelchecks)
    check_model_url: str | None = _DEFAULTS.check_model_url
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
    export_id: int | None  # None: the tasks as Label Studio's direct export gives them, no snapshot kept
    tasks: list[dict]


# --- export ------------------------------------------------------------------------------


def export_snapshot(client: LabelStudioClient, project_id: int, timeout: float = 600.0) -> Snapshot:
    """Create an export snapshot of every task (labeled or not), wait for it, download its JSON.

    Plain API calls through `client` (its connection and its errors), not the SDK's client of its own.
    """
    exports = f"/api/projects/{project_id}/exports"
    export = client.json("POST", f"{exports}/", json={"title": f"poseops pull {datetime.now(UTC):%Y-%m-%d %H:%M:%S}"})
    deadline = time.monotonic() + timeout
    while (status := export.get("status")) not in ("completed", "failed"):
        if time.monotonic() > deadline:
            raise LabelStudioError(f"export snapshot {export['id']} of project {project_id} not ready after {timeout:.0f} s")
        time.sleep(0.5)
        export = client.json("GET", f"{exports}/{export['id']}")
    if status == "failed":
        raise LabelStudioError(f"Label Studio failed to build export snapshot {export['id']}; see its log")
    raw = client.request("GET", f"{exports}/{export['id']}/download", params={"exportType": "JSON"}).content
    return Snapshot(project_id, export["id"], _exported_tasks(raw, f"export snapshot {export['id']} of project {project_id}"))


def export_tasks(client: LabelStudioClient, project_id: int) -> Snapshot:
    """Every task (labeled or not) in one request, Label Studio's direct export: the same JSON as a snapshot's,
    but no snapshot is made or kept (what the no-change check reads, `poseops.pull_unchanged`)."""
    raw = client.request("GET", f"/api/projects/{project_id}/export",
                         params={"exportType": "JSON", "download_all_tasks": "true"}).content
    return Snapshot(project_id, None, _exported_tasks(raw, f"the export of project {project_id}"))


def _exported_tasks(raw: bytes, what: str) -> list[dict]:
    from poseops.convert import ExportError, check_tasks

    try:
        return check_tasks(json.loads(raw), what)
    except json.JSONDecodeError as e:
        raise LabelStudioError(f"{what} is not JSON ({e})") from None
    except ExportError as e:
        raise LabelStudioError(str(e)) from None


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


# --- the dataset directory --------------------------------------------------------------------


@contextmanager
def dataset_lock(data_root: Path, name: str, settings: Settings | None = None) -> Iterator[None]:
    """One pull per dataset at a time: the second fails at once, clearly, instead of mixing two datasets.

    The lock (`poseops.locks`, `pull-<name>`) is `data/.<name>.lock` on the embedded profile and a
    Prefect global concurrency limit on the server profile, so pulls on two machines exclude each other.
    The name and the data root are checked before anything is made: a bad name, or a data
    root outside the project, is refused with nothing created or changed.
    """
    from poseops.locks import LockBusy, exclusive

    check_dataset_name(name)
    inside_project(data_root, "pull.data_root")
    data_root.mkdir(parents=True, exist_ok=True)
    ignore_scratch_files(data_root)
    with ExitStack() as held:
        try:
            held.enter_context(exclusive(settings, f"pull-{name}", wait_s=0, lock_file=data_root / f".{name}.lock"))
        except LockBusy as e:
            raise PullError(f"another pull of {name!r} is running ({e.holder}); wait for it to finish, then pull "
                            "again") from None
        yield


SCRATCH_PATTERNS = ("/.*.lock", "/.*.tmp", "/.*.old")


def ignore_scratch_files(data_root: Path) -> None:
    """Keep pull's lock and temporary folders out of git (DVC adds its own lines to the same file)."""
    ignore = data_root / ".gitignore"
    lines = ignore.read_text().splitlines() if ignore.is_file() else []
    missing = [p for p in SCRATCH_PATTERNS if p not in lines]
    if missing:
        ignore.write_text("\n".join([*lines, *missing]) + "\n")


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
    When the labeled tasks and their images are those the last version was made of, nothing is rebuilt:
    the result is that version (`unchanged`).
    """
    target = options.data_root / name
    kept = kept_version(name, skeleton, options, snapshot, ready, images, say)
    if kept is not None:
        return kept
    digest = inputs_sha256(name, skeleton, options, snapshot, ready, images)
    manifest = convert_into_place(name, skeleton, options, snapshot, ready, images)
    result = PullResult(target, manifest, pull_record(name, label_studio_url, snapshot, ready),
                        warnings=[*ready.warnings, *conversion_warnings(manifest.conversion, target)])
    record_path = pull_record_path(target)
    if options.version:
        message = f"pull {name}: Label Studio snapshot {snapshot.export_id}, {len(ready.labeled)} labeled images"
        result.dvc_md5, result.pushed, result.git_commit = version_dataset(
            target, settings, message, dataclasses.replace(result.pull_record, inputs_sha256=digest), options.commit, say)
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
    from poseops.conversion.coco_export import write_coco_export
    from poseops.conversion.dataset import task_split, video_count
    from poseops.convert import convert_export

    by_id = {task["id"]: task for task in ready.labeled}
    split = {task_id: task_split(by_id.get(task_id), image_sha256(path), options.val_fraction)
             for task_id, path in images.items()}
    n_val = sum(1 for s in split.values() if s == "val")
    if n_val == 0 or n_val == len(split):
        videos = video_count(by_id.get(task_id) for task_id in split)
        raise NotReady(
            f"the split of {len(split)} images gives {n_val} for validation and {len(split) - n_val} for training "
            f"(pull.val_fraction = {options.val_fraction}); both need images: label more images or change val_fraction"
            + (f". The frames of one video stay in one split and these come from {videos} video(s): label frames of "
               "more videos (`poseops dataset add-video`)" if videos else "")
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
        write_coco_export(skeleton, tmp)  # the same labels as COCO keypoints JSON, versioned beside them
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


# --- nothing changed ---------------------------------------------------------------------------------


# What a pull writes, by number: raised whenever the files of a version change for the same labels
# (2: the COCO keypoints export beside the YOLO files; frames split by their video), so the next pull rebuilds.
DATASET_FORMAT = 2


def inputs_sha256(name: str, skeleton: Skeleton, options: PullOptions, snapshot: Snapshot, ready: Readiness,
                  images: dict[int, Path]) -> str:
    """What a dataset version is made of, hashed: every labeled task's id, the regions of the annotation it
    contributes and its image's content hash, plus the skeleton spec, the split, the place and poseops' version.

    Two pulls with the same digest build the same dataset.
    """
    from poseops import __version__
    from poseops.conversion.dataset import split_key
    from poseops.convert import choose_annotation

    h = hashlib.sha256(json.dumps({
        "poseops": __version__, "format": DATASET_FORMAT, "dataset": name, "project": snapshot.project_id,
        "dir": (options.data_root / name).as_posix(), "val_fraction": options.val_fraction,
        "skeleton": repr(dataclasses.replace(skeleton, source="")),
    }, sort_keys=True).encode())
    for task in sorted(ready.labeled, key=lambda t: json.dumps(t["id"])):
        annotation, _ = choose_annotation(task)
        path = images.get(task["id"])
        h.update(json.dumps([task["id"], image_sha256(path) if path else None, (annotation or {}).get("result"),
                             split_key(task, "")], sort_keys=True, separators=(",", ":")).encode())
    return h.hexdigest()


def kept_version(name: str, skeleton: Skeleton, options: PullOptions, snapshot: Snapshot, ready: Readiness,
                 images: dict[int, Path], say: Callable[[str], None] = lambda _: None,
                 whole: PullResult | None = None) -> PullResult | None:
    """The last version, when these labeled tasks and images are what it was made of (and it is whole); else None.

    `whole`: the last version, already found whole (`whole_version`); then only the digests are compared.
    """
    digest = inputs_sha256(name, skeleton, options, snapshot, ready, images)
    if whole is not None:
        kept = whole if options.version and whole.pull_record.inputs_sha256 == digest else None
    else:
        kept = unchanged_version(options.data_root / name, options, digest)
    if kept is not None:
        kept.warnings[:0] = ready.warnings
        say(f"no change since the last pull: DVC version {kept.dvc_md5} kept, nothing rebuilt")
    return kept


def unchanged_version(target: Path, options: PullOptions, digest: str) -> PullResult | None:
    """The version the last pull left in `target` when it was made of these very inputs (`digest`) and is whole
    (`whole_version`). None: build it."""
    if not options.version:
        return None
    record = last_record(target)
    if record is None or record.inputs_sha256 != digest:
        return None
    return whole_version(target, options, record)


def last_record(target: Path) -> PullRecord | None:
    """The record of the version in `target` (`<name>.pull.json`); None when there is none or it is not ours."""
    record_path = pull_record_path(target)
    try:
        return PullRecord.from_record(json.loads(record_path.read_text()), str(record_path))
    except (OSError, ValueError, LookupError, TypeError):
        return None


def whole_version(target: Path, options: PullOptions, record: PullRecord) -> PullResult | None:
    """`record`'s version as the result of a pull when it is whole: recorded with DVC and pushed, its folder in
    place, its .dvc file at the recorded hash, the .dvc file and the record committed (when pulls commit).
    None: build it.
    """
    import yaml

    if record.dvc_md5 is None or remote_outdated(target, load_settings()):  # a new POSEOPS_DVC_REMOTE: push there
        return None
    try:
        if dvc_md5(target.with_name(f"{target.name}.dvc")) != record.dvc_md5:
            return None
        manifest = DatasetManifest.from_dict(json.loads((target / "manifest.json").read_text()), target)
    except (OSError, ValueError, LookupError, TypeError, yaml.YAMLError):  # missing, broken or not ours: build
        return None
    images = sum(1 for split in ("train", "val") for p in (target / "images" / split).glob("*") if p.is_file())
    if images != manifest.train_images + manifest.val_images:
        return None
    git_commit = None
    if options.commit:
        git_commit = committed(target.parent, [f"{target.name}.dvc", pull_record_path(target).name])
        if git_commit is None:
            return None
    return PullResult(target, manifest, record, warnings=conversion_warnings(manifest.conversion, target),
                      dvc_md5=record.dvc_md5, pushed=True, git_commit=git_commit, unchanged=True)


def committed(folder: Path, files: list[str]) -> str | None:
    """The HEAD commit when `files` (in `folder`) are committed as they are; None otherwise (one git call)."""
    status = subprocess.run(["git", "status", "--porcelain=v2", "--branch", "--", *files], cwd=folder,
                            capture_output=True, text=True)
    lines = status.stdout.splitlines()
    head = next((ln.split()[2] for ln in lines if ln.startswith("# branch.oid ")), "(initial)")
    if status.returncode or head == "(initial)" or any(not ln.startswith("#") for ln in lines):
        return None
    return head


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


def conversion_summary(problems: list, shown: int = 10) -> str:
    """`task 12: unknown_label, task 15: no_image, ...` for a warning line."""
    listed = ", ".join(f"task {p.task_id}: {p.kind}" for p in problems[:shown])
    return listed + (f" and {len(problems) - shown} more" if len(problems) > shown else "")


def relocate_data_yaml(data_yaml: Path, target: Path) -> None:
    """Point data.yaml at the dataset's final place, relative (`data/<name>`): the same on every clone.

    Training runs from the repository root (as `dvc repro` does), where this path resolves.
    """
    import yaml

    data = yaml.safe_load(data_yaml.read_text())
    data["path"] = target.as_posix()
    data_yaml.write_text(yaml.safe_dump(data, sort_keys=False, default_flow_style=None))
