"""The demo: the whole system end to end on bundled defaults, reusing whatever already exists.

1. Label Studio, the Prefect server and the MLflow UI start (or are found) on 127.0.0.1.
2. A workspace (`<home>/demo`: the pipeline files, demo-sized params, git + DVC) is made once.
3. The `demo-people` dataset gets the sample images with their real labels as annotations
   (as if a person had labeled them), plus mirrored copies left unlabeled: new images.
4. The improvement loop runs: pull → DVC → train a few epochs on CPU → MLflow → register →
   promote → deploy the service → autolabel the new images.

Sample images come from `POSEOPS_SAMPLE_IMAGES` (a folder in Ultralytics' layout, labels
beside images); without it, Ultralytics' public coco8-pose dataset is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from poseops.coco import read_yolo_pose
from poseops.datasets import create_dataset, upload_images
from poseops.dvc import run_dvc
from poseops.labelstudio import LabelStudioClient
from poseops.paths import CHECKOUT, checkout_path
from poseops.regions import poses_to_results
from poseops.settings import _ENV_KEYS, Settings
from poseops.skeleton import Skeleton, load_skeleton
from poseops.training.layout import link_package

DEMO_DATASET = "demo-people"
PROJECT_FILES = ("dvc.yaml", "params.yaml", "pipelines", "label_config", ".dvcignore")
DEMO_PARAMS = {
    # a short fine-tune of pretrained weights: gentle SGD (optimizer=auto picks AdamW at lr 0.002, which
    # wrecks a pretrained model in a few steps: docs/training.md)
    "train": {"epochs": 3, "imgsz": 320, "batch": 8, "workers": 0, "patience": 0, "optimizer": "SGD", "lr0": 0.001,
              "warmup_epochs": 0.0},
    "pull": {"min_images": 4, "val_fraction": 0.25, "allow_unlabeled": True},
    "mlflow": {"experiment": "demo"},
}


@dataclass
class DemoResult:
    urls: dict[str, str] = field(default_factory=dict)
    facts: dict[str, object] = field(default_factory=dict)


def sample_images() -> Path:
    configured = os.environ.get("POSEOPS_SAMPLE_IMAGES")
    if configured:
        path = Path(configured)
        if not path.is_dir():
            raise FileNotFoundError(f"POSEOPS_SAMPLE_IMAGES={configured} is not a folder of images")
        return path
    from poseops.weights import prepare_ultralytics

    prepare_ultralytics()
    from ultralytics.data.utils import check_det_dataset

    data = check_det_dataset("coco8-pose.yaml")  # downloads it on first use
    return Path(data["path"]) / "images"


def sample_labels(images: Path, skeleton: Skeleton) -> dict[Path, list[dict]]:
    """The real labels of the sample images (Ultralytics layout: labels/ beside images/), as Label Studio results."""
    labels: dict[Path, list[dict]] = {}
    root = images.parent
    for split in ("train", "val"):
        if (root / "labels" / split).is_dir() and (images / split).is_dir():
            for image in read_yolo_pose(root, split, skeleton.class_names):
                labels[image.path] = poses_to_results(skeleton, image.poses, image.width, image.height)
    return labels


def mirrored_copies(images: list[Path], dest: Path) -> list[Path]:
    """New, unlabeled images for the autolabeler: the samples mirrored left to right."""
    from PIL import Image, ImageOps

    dest.mkdir(parents=True, exist_ok=True)
    out = []
    for path in images:
        target = dest / f"mirrored-{path.name}"
        if not target.exists():
            with Image.open(path) as im:
                ImageOps.mirror(ImageOps.exif_transpose(im)).save(target, quality=95)
        out.append(target)
    return out


def make_workspace(dest: Path, params_update: dict, source: Path = CHECKOUT) -> Path:
    """A checkout of the pipeline (dvc.yaml, params.yaml, pipelines/, label_config/) with git and DVC, made once.

    `params_update` maps a params.yaml section to the keys to change in it, or a top-level key to its value.
    """
    if (dest / ".dvc").is_dir():
        return dest
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = source / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
        elif src.exists():
            shutil.copy(src, dest / name)
    params = yaml.safe_load((dest / "params.yaml").read_text())
    for section, values in params_update.items():
        if isinstance(values, dict):
            params.setdefault(section, {}).update(values)
        else:  # a top-level key such as `device`
            params[section] = values
    (dest / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (dest / ".gitignore").write_text("runs/\n.poseops/\n.env\n")  # .env: the secrets poseops generates
    link_package(dest)  # dvc.yaml's stages depend on the package modules they run
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "demo@poseops.local"],
                ["git", "config", "user.name", "poseops demo"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    run_dvc(["init", "-q"], dest)
    for cmd in (["git", "add", "-A"], ["git", "commit", "-qm", "poseops workspace"]):
        subprocess.run(cmd, cwd=dest, check=True, capture_output=True)
    return dest


def export_settings(settings: Settings) -> None:
    """Put the settings in the environment (home made absolute), so flows find them from any folder."""
    for name, key in _ENV_KEYS.items():
        value = getattr(settings, name)
        if name in ("home", "label_studio_bin"):
            value = Path(value).resolve()
        if value not in ("", None):
            os.environ[key] = str(value)


def run_demo(settings: Settings, say: Callable[[str], None] = print) -> DemoResult:
    from poseops import stack

    result = DemoResult()
    export_settings(settings)
    home = settings.home.resolve()
    if not settings.server_profile:  # the server profile logs through its MLflow tracking server (tracking_uri())
        os.environ.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{home / 'mlflow.db'}")
    stack.stack_up(settings, say)  # the servers of the profile: PostgreSQL on the server one, then LS, MLflow, Prefect
    stack.connect_prefect(settings)

    spec = checkout_path("label_config", "skeletons", "person.yaml")
    skeleton = load_skeleton(spec)
    images = sample_images()
    labels = sample_labels(images, skeleton)
    new_images = mirrored_copies(sorted(labels)[:4], home / "demo-new-images")
    with LabelStudioClient(settings) as client:
        project, created = create_dataset(client, settings, DEMO_DATASET, spec)
        say(f"dataset {DEMO_DATASET!r}: {'created' if created else 'found'} ({project.url})")
        report = upload_images(client, settings, DEMO_DATASET, [*labels, *new_images], labels=labels)
        say(f"uploaded {len(report.uploaded)} images ({len(labels)} with their real labels as annotations, "
            f"{len(new_images)} new ones unlabeled); {len(report.duplicates)} were already there")

    workspace = make_workspace(home / "demo", DEMO_PARAMS)
    say(f"workspace {workspace}: the DVC pipeline, demo-sized params, git + DVC")
    os.chdir(workspace)
    from poseops.flows.loop import improvement_loop

    say("the improvement loop: pull → train (3 epochs, CPU) → register → promote → deploy → autolabel ...")
    loop = improvement_loop(dataset=DEMO_DATASET, root=str(workspace))
    result.facts.update({step: outcome for step, outcome in loop["steps"]})
    result.facts["loop"] = loop["outcome"]
    result.urls.update(demo_urls(settings, project.url))
    return result


def demo_urls(settings: Settings, project_url: str) -> dict[str, str]:
    urls = {"Label Studio project": project_url,
            "Prefect UI (flow runs)": f"{settings.prefect_url}/runs",
            "MLflow UI": settings.mlflow_ui_url,
            "service playground": f"{settings.service_url}/",
            "service API docs": f"{settings.service_url}/docs"}
    from poseops import tracking

    mlc = tracking.client()
    version = tracking.version_for_alias(mlc, "poseops-pose", "champion")
    if version is not None:
        urls["MLflow run (champion)"] = tracking.run_url(mlc, version.run_id)
    return urls


def stop_demo(settings: Settings) -> list[str]:
    """Stop every server the demo started; returns what was stopped."""
    from poseops import stack
    from poseops.deploy import service_server

    service = service_server(settings)
    return ([service.name] if service.down() else []) + stack.stack_down(settings)
