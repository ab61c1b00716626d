"""Datasets: a Label Studio project per dataset, made from a skeleton spec.

A dataset's local record (`<home>/datasets/<name>.json`) keeps the skeleton spec it
was made from and the template used for pre-labels. Each uploaded image becomes a
task whose data carries the image's content hash (`sha256`, used to skip
duplicates and to split the dataset) and its original file name, and a
prediction (model version `template`) that places one box and the whole skeleton
so the annotator drags points into place instead of placing them. Uploads into one
project create their tasks one upload at a time (a lock under `<home>/locks/`), each
checking the project's content hashes first, so the same image uploaded twice at once
becomes one task.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from poseops.constants import IMAGE_SUFFIXES, VIDEO_SUFFIXES
from poseops.errors import PoseopsError
from poseops.imageio import displayed_rgb, open_image
from poseops.label_config import label_config_xml
from poseops.labelstudio import LabelStudioClient, LabelStudioError, Project
from poseops.processes import file_lock
from poseops.regions import Template, pose_to_results, spec_template, template_from_pose, template_pose
from poseops.safepaths import check_dataset_name
from poseops.settings import Settings, secure_home
from poseops.skeleton import Skeleton, load_skeleton

# What Label Studio's editor (a browser) shows as it is; the other image types poseops reads (TIFF) are
# uploaded as PNG, losslessly, turned as shown.
CONTENT_TYPES = {".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".png": "image/png", ".webp": "image/webp", ".bmp": "image/bmp"}
VIDEO_HINT = ("a video, not an image: ingest diverse frames of it with `poseops dataset add-video NAME VIDEO --frames 20` "
              "(each frame a task that names its video, frame and time)")
TEMPLATE_VERSION = "template"
IMPORT_BATCH = 50
# EXIF orientations that turn the picture a quarter: width and height swap when shown.
_QUARTER_TURNS = {5, 6, 7, 8}


class DatasetError(PoseopsError, RuntimeError):
    pass


@dataclass
class DatasetRecord:
    name: str
    skeleton: str
    template_class: str
    template: dict | None = None

    def skeleton_spec(self) -> Skeleton:
        return load_skeleton(self.skeleton)

    def current_template(self, skeleton: Skeleton) -> Template:
        return Template.from_dict(self.template) if self.template else spec_template(skeleton, self.template_class)


def record_path(settings: Settings, name: str) -> Path:
    return settings.home / "datasets" / f"{check_dataset_name(name)}.json"


def load_record(settings: Settings, name: str) -> DatasetRecord:
    path = record_path(settings, name)
    if not path.is_file():
        raise DatasetError(f"no dataset {name!r} here: create it with `poseops dataset create {name} --skeleton SPEC.yaml`")
    return DatasetRecord(**json.loads(path.read_text(encoding="utf-8")))


def save_record(settings: Settings, record: DatasetRecord) -> None:
    path = record_path(settings, record.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(record), indent=2) + "\n", encoding="utf-8")
    tmp.replace(path)


def project_of(client: LabelStudioClient, name: str) -> Project:
    project = client.find_project(name)
    if project is None:
        raise DatasetError(
            f"Label Studio at {client.url} has no project {name!r}: run `poseops dataset create {name} --skeleton SPEC.yaml`"
        )
    return project


def create_dataset(
    client: LabelStudioClient, settings: Settings, name: str, skeleton_path: Path, template_class: str | None = None
) -> tuple[Project, bool]:
    """Create the dataset's project, or update its labeling config if it exists. Returns (project, created).

    The record keeps the spec's absolute path: later commands find it from any folder.
    """
    check_dataset_name(name)  # before anything is created anywhere
    skeleton_path = Path(skeleton_path).resolve()
    skeleton = load_skeleton(skeleton_path)
    template_class = template_class or skeleton.class_names[0]
    skeleton.get(template_class)  # fails clearly on an unknown class
    config = label_config_xml(skeleton)
    client.validate_config(config)
    project = client.find_project(name)
    description = f"poseops dataset {name}; skeleton {skeleton_path}"
    if project is None:
        project = client.create_project(name, config, description=description)
        client.update_project(project.id, show_collab_predictions=True)  # pre-labels shown in the editor
        created = True
    else:
        if project.label_config.strip() != config.strip():
            project = client.update_project(project.id, label_config=config, description=description)
        created = False
    previous = None
    if record_path(settings, name).is_file():
        previous = load_record(settings, name)
    template = previous.template if previous and previous.template_class == template_class else None
    save_record(settings, DatasetRecord(name, str(skeleton_path), template_class, template))
    return project, created


# --- images -------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageFile:
    path: Path
    content: bytes
    sha256: str
    width: int
    height: int
    content_type: str
    data: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)  # more task data (a video frame's)


def collect_images(paths: Iterable[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Image files under the given files and folders (by suffix), and paths that could not be used (videos named)."""
    found: list[Path] = []
    problems: list[tuple[Path, str]] = []
    for path in paths:
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            found += [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
            problems += [(p, VIDEO_HINT) for p in files if p.suffix.lower() in VIDEO_SUFFIXES]
        elif path.is_file():
            if path.suffix.lower() in IMAGE_SUFFIXES:
                found.append(path)
            elif path.suffix.lower() in VIDEO_SUFFIXES:
                problems.append((path, VIDEO_HINT))
            else:
                problems.append((path, f"not an image file name (use {', '.join(sorted(IMAGE_SUFFIXES))})"))
        else:
            problems.append((path, "no such file or folder"))
    return found, problems


def read_image(path: Path) -> ImageFile:
    """Read and check one image: it must decode completely. Raises ValueError saying why not.

    A type the browser does not show (TIFF) becomes the PNG of the picture as shown.
    """
    content = path.read_bytes()
    if not content:
        raise ValueError("empty file")
    content_type = CONTENT_TYPES.get(path.suffix.lower())
    try:
        with open_image(io.BytesIO(content)) as im:
            im.load()  # decodes every pixel: truncated files fail here
            width, height = displayed_size(im)
            if content_type is None:
                content, content_type = as_png(im), "image/png"
    except UnidentifiedImageError:
        raise ValueError("not an image: its content is in no format Pillow can decode") from None
    except Image.DecompressionBombError as e:
        raise ValueError(f"refused as a decompression bomb ({e})") from None
    except (OSError, SyntaxError) as e:
        raise ValueError(f"a broken image ({e})") from None
    return ImageFile(path, content, hashlib.sha256(content).hexdigest(), width, height, content_type)


def as_png(im: Image.Image) -> bytes:
    """The picture as shown (EXIF orientation applied, 8-bit RGB), as PNG."""
    out = io.BytesIO()
    displayed_rgb(im).save(out, format="PNG")
    return out.getvalue()


def displayed_size(im: Image.Image) -> tuple[int, int]:
    """Width and height as shown (browsers and Label Studio follow the EXIF orientation)."""
    width, height = im.size
    return (height, width) if im.getexif().get(0x0112, 1) in _QUARTER_TURNS else (width, height)


def image_size(source: Path | bytes) -> tuple[int, int]:
    """Width and height as shown, of an image file or its bytes (within the pixel budget)."""
    with open_image(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
        return displayed_size(im)


@dataclass
class UploadReport:
    project: Project
    uploaded: list[tuple[Path, int]] = field(default_factory=list)
    duplicates: list[tuple[Path, int]] = field(default_factory=list)
    unreadable: list[tuple[Path, str]] = field(default_factory=list)
    annotated: list[tuple[Path, int]] = field(default_factory=list)  # existing tasks that got the given labels
    repaired: list[int] = field(default_factory=list)  # existing unlabeled tasks that had lost their template pre-label


def template_prediction(skeleton: Skeleton, record: DatasetRecord, width: int, height: int) -> dict:
    pose = template_pose(record.template_class, record.current_template(skeleton))
    return {"model_version": TEMPLATE_VERSION, "score": 0.0, "result": pose_to_results(skeleton, pose, width, height, "t0")}


def existing_hashes(client: LabelStudioClient, project_id: int) -> dict[str, int]:
    return {
        t["data"]["sha256"]: t["id"]
        for t in client.iter_tasks(project_id, fields="task_only")
        if isinstance(t.get("data"), dict) and t["data"].get("sha256")
    }


def upload_images(
    client: LabelStudioClient,
    settings: Settings,
    name: str,
    paths: Iterable[Path],
    workers: int = 4,
    on_progress: Callable[[int], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    labels: Mapping[Path, list[dict]] | None = None,
) -> UploadReport:
    """Upload images as tasks with a template pre-label; skip duplicates by content; report unreadable files.

    `labels` maps an image path to Label Studio result regions that already exist for it
    (converted from COCO or YOLO labels): its task gets them as an annotation.
    """
    files, unreadable = collect_images(paths)
    if on_total:
        on_total(len(files))
    return _upload_all(client, settings, name, files, workers, on_progress, labels, unreadable)


def upload_image_files(client: LabelStudioClient, settings: Settings, name: str, images: Iterable[ImageFile],
                       workers: int = 4, on_progress: Callable[[int], None] | None = None) -> UploadReport:
    """Upload images already read and checked (a video's frames) the same way; each one's `data` joins its task's."""
    return _upload_all(client, settings, name, list(images), workers, on_progress, None, [])


def _upload_all(client: LabelStudioClient, settings: Settings, name: str, files: list[Path | ImageFile], workers: int,
                on_progress: Callable[[int], None] | None, labels: Mapping[Path, list[dict]] | None,
                unreadable: list[tuple[Path, str]]) -> UploadReport:
    record = load_record(settings, name)
    upload = _Upload(client, record, record.skeleton_spec(), project_of(client, name), labels, on_progress)
    upload.report.unreadable = unreadable
    upload.seen = existing_hashes(client, upload.project.id)
    # Files first, all of them; then the tasks. Label Studio drops the inline annotations and predictions
    # of a task import that runs while file uploads to the same project are still going on.
    stored = upload.store_files(files, workers)
    with file_lock(secure_home(settings.home) / "locks" / f"upload-project-{upload.project.id}.lock"):
        upload.seen.update(existing_hashes(client, upload.project.id))  # what another upload created meanwhile
        upload.import_tasks(stored)
    return upload.finish()


@dataclass
class _Upload:
    """One upload into one project: the files stored, then their tasks imported in batches."""

    client: LabelStudioClient
    record: DatasetRecord
    skeleton: Skeleton
    project: Project
    labels: Mapping[Path, list[dict]] | None
    on_progress: Callable[[int], None] | None
    report: UploadReport = field(init=False)
    seen: dict[str, int] = field(default_factory=dict)  # content hash → task id
    duplicates: list[tuple[Path, str]] = field(default_factory=list)
    sizes: dict[str, tuple[int, int]] = field(default_factory=dict)  # of the duplicates: to repair their pre-labels

    def __post_init__(self) -> None:
        self.report = UploadReport(self.project)

    def tick(self) -> None:
        if self.on_progress:
            self.on_progress(1)

    def duplicate(self, image: ImageFile) -> None:
        self.duplicates.append((image.path, image.sha256))
        self.sizes[image.sha256] = (image.width, image.height)
        self.tick()

    def store_files(self, files: list[Path | ImageFile], workers: int) -> list[tuple[ImageFile, dict]]:
        """Each new image's file in Label Studio, and the task that will point at it."""
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures, queued = [], set()
            for path in files:
                try:
                    image = path if isinstance(path, ImageFile) else read_image(path)
                except (ValueError, OSError) as e:
                    self.report.unreadable.append((path, str(e)))
                    self.tick()
                    continue
                if image.sha256 in self.seen or image.sha256 in queued:
                    self.duplicate(image)
                    continue
                queued.add(image.sha256)
                futures.append(pool.submit(self.store, image))
            return [future.result() for future in futures]

    def store(self, image: ImageFile) -> tuple[ImageFile, dict]:
        suffix = ".png" if image.content_type == "image/png" else image.path.suffix.lower()
        url = self.client.upload_file(self.project.id, f"{image.sha256[:12]}{suffix}", image.content, image.content_type)
        data = {"image": url, "sha256": image.sha256, "source": image.path.name, **image.data}
        task = {"data": data, "predictions": [template_prediction(self.skeleton, self.record, image.width, image.height)]}
        if self.labels is not None and image.path in self.labels:  # an empty result too: "nothing to label here"
            task["annotations"] = [{"result": self.labels[image.path]}]
        return image, task

    def import_tasks(self, stored: list[tuple[ImageFile, dict]]) -> None:
        pending: list[tuple[ImageFile, dict]] = []
        for image, task in stored:
            self.tick()
            if image.sha256 in self.seen:
                self.duplicate(image)
                continue
            pending.append((image, task))
            if len(pending) >= IMPORT_BATCH:
                self.flush(pending)
        self.flush(pending)

    def flush(self, pending: list[tuple[ImageFile, dict]]) -> None:
        if not pending:
            return
        ids = self.client.import_tasks(self.project.id, [task for _, task in pending])
        for (image, _), task_id in zip(pending, ids, strict=True):
            self.report.uploaded.append((image.path, task_id))
            self.seen[image.sha256] = task_id
        pending.clear()

    def finish(self) -> UploadReport:
        report = self.report
        report.duplicates = [(path, self.seen[sha]) for path, sha in self.duplicates]
        labeled = [(path, task_id) for path, task_id in report.duplicates if path in (self.labels or {})]
        if labeled:  # labels for images already there: annotate the tasks nobody annotated yet
            annotated = annotated_task_ids(self.client, self.project.id)  # one listing, not a request per image
            for path, task_id in labeled:
                if task_id not in annotated:
                    self.client.create_annotation(task_id, self.labels[path])  # type: ignore[index]
                    report.annotated.append((path, task_id))
        if self.sizes:
            report.repaired = repair_template_prelabels(self.client, self.project.id, self.skeleton, self.record,
                                                        self.sizes)
        if report.uploaded:
            show_predictions_of(self.client, self.project.id, TEMPLATE_VERSION, only_if_unset=True)
        return report


def annotated_task_ids(client: LabelStudioClient, project_id: int) -> set[int]:
    """The ids of the project's tasks with any annotation (submitted or skipped)."""
    return {t["id"] for t in client.iter_tasks(project_id, fields="task_only")
            if (t.get("total_annotations") or 0) + (t.get("cancelled_annotations") or 0) > 0}


def repair_template_prelabels(client: LabelStudioClient, project_id: int, skeleton: Skeleton, record: DatasetRecord,
                              sizes: Mapping[str, tuple[int, int]]) -> list[int]:
    """Give back the template pre-label to unlabeled tasks of these images (by content hash) that have none.

    Such tasks come from an upload interrupted between its import and its predictions, or
    from two uploads that raced before uploads into a project were serialized. Their ids.
    """
    repaired = []
    for task in client.iter_tasks(project_id):
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        size = sizes.get(str(data.get("sha256")))
        if size is None or task.get("annotations"):
            continue
        if any(p.get("model_version") == TEMPLATE_VERSION for p in task.get("predictions") or []):
            continue
        template = template_prediction(skeleton, record, *size)
        client.create_prediction(task["id"], template["result"], TEMPLATE_VERSION, score=0.0)
        repaired.append(task["id"])
    return repaired


def show_predictions_of(client: LabelStudioClient, project_id: int, model_version: str, only_if_unset: bool = False) -> None:
    """Make the editor pre-load this model version's predictions (Label Studio needs one to exist first)."""
    if only_if_unset and client.json("GET", f"/api/projects/{project_id}").get("model_version"):
        return
    client.update_project(project_id, model_version=model_version, show_collab_predictions=True)


# --- template from a hand-labeled task --------------------------------------------------


def set_template(client: LabelStudioClient, settings: Settings, name: str, task_id: int, apply: bool = True) -> tuple[Template, int]:
    """Make a hand-labeled task's pose the template for new pre-labels.

    With `apply`, tasks that nobody has annotated get their template pre-label replaced.
    Returns the template and how many tasks were refreshed.
    """
    from poseops.convert import choose_annotation, results_to_poses

    record = load_record(settings, name)
    skeleton = record.skeleton_spec()
    task = client.get_task(task_id)
    annotation, _ = choose_annotation(task)
    if annotation is None:
        raise DatasetError(f"task {task_id} has no (non-cancelled) annotation: label it by hand first, then set it as template")
    poses, _ = results_to_poses(skeleton, annotation["result"], task_id=task_id)
    poses = [p for p in poses if p.class_name == record.template_class]
    if not poses:
        raise DatasetError(f"task {task_id} has no {record.template_class!r} box with keypoints: label one, then try again")
    template = template_from_pose(poses[0], spec_template(skeleton, record.template_class))
    record.template = template.to_dict()
    save_record(settings, record)
    refreshed = 0
    if apply:
        project = project_of(client, name)
        for t in client.iter_tasks(project.id):
            if t.get("annotations") or not isinstance(t.get("data"), dict):
                continue
            old = [p for p in t.get("predictions") or [] if p.get("model_version") == TEMPLATE_VERSION]
            if not old:
                continue
            first = old[0]["result"][0] if old[0].get("result") else {}
            width, height = first.get("original_width"), first.get("original_height")
            if not width or not height:
                continue
            for p in old:
                client.request("DELETE", f"/api/predictions/{p['id']}")
            new = template_prediction(skeleton, record, width, height)
            client.create_prediction(t["id"], new["result"], TEMPLATE_VERSION, score=0.0)
            refreshed += 1
    return template, refreshed


def dataset_summary(client: LabelStudioClient, name: str) -> dict:
    project = project_of(client, name)
    total = labeled = 0
    for t in client.iter_tasks(project.id, fields="task_only"):
        total += 1
        labeled += bool(t.get("is_labeled"))
    return {"name": name, "project_id": project.id, "url": project.url, "tasks": total, "labeled": labeled}


__all__ = ["DatasetError", "LabelStudioError", "create_dataset", "upload_images", "upload_image_files", "set_template",
           "read_image"]
