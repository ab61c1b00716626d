"""The demo: the system end to end on bundled defaults, reusing whatever already exists.

Sample images come from `POSEOPS_SAMPLE_IMAGES` (a folder); without it, Ultralytics'
public coco8-pose dataset is downloaded the ordinary way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from poseops import labelstudio_server
from poseops.coco import read_yolo_pose
from poseops.datasets import create_dataset, dataset_summary, upload_images
from poseops.labelstudio import LabelStudioClient
from poseops.regions import poses_to_results
from poseops.settings import Settings
from poseops.skeleton import load_skeleton

DEMO_DATASET = "demo-people"
PERSON_SPEC = Path("label_config/skeletons/person.yaml")


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


def run_demo(settings: Settings, say: Callable[[str], None] = print) -> DemoResult:
    result = DemoResult()
    say(f"Label Studio: starting or finding it at {settings.label_studio_url} (the first start migrates ~90 s)")
    labelstudio_server.up(settings)
    with LabelStudioClient(settings) as client:
        project, created = create_dataset(client, settings, DEMO_DATASET, PERSON_SPEC)
        say(f"dataset {DEMO_DATASET!r}: {'created' if created else 'found'} ({project.url})")
        images = sample_images()
        labels = sample_labels(images, load_skeleton(PERSON_SPEC))
        report = upload_images(client, settings, DEMO_DATASET, [images], labels=labels)
        say(f"images from {images}: {len(report.uploaded)} uploaded (with their labels as annotations), "
            f"{len(report.duplicates)} already there")
        summary = dataset_summary(client, DEMO_DATASET)
    result.urls["Label Studio project"] = project.url
    result.facts.update(tasks=summary["tasks"], labeled=summary["labeled"], login=settings.label_studio_username)

    from flows.pull_labels import pull_labels

    say("pulling the labels into a DVC-versioned dataset (Prefect flow pull-labels)")
    pulled = pull_labels(dataset=DEMO_DATASET, commit=False)
    result.facts.update(dataset=pulled["dataset_dir"], dataset_version=pulled["dvc_md5"],
                        train_val_images=f"{pulled['train_images']} / {pulled['val_images']}")
    return result


def sample_labels(images: Path, skeleton) -> dict[Path, list[dict]]:
    """The real labels of the sample images (Ultralytics layout: labels/ beside images/), as Label Studio results."""
    labels: dict[Path, list[dict]] = {}
    root = images.parent
    for split in ("train", "val"):
        if (root / "labels" / split).is_dir() and (images / split).is_dir():
            for image in read_yolo_pose(root, split, skeleton.class_names):
                labels[image.path] = poses_to_results(skeleton, image.poses, image.width, image.height)
    return labels
