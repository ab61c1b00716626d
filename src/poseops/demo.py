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
from poseops.datasets import create_dataset, dataset_summary, upload_images
from poseops.labelstudio import LabelStudioClient
from poseops.settings import Settings

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
        report = upload_images(client, settings, DEMO_DATASET, [images])
        say(f"images from {images}: {len(report.uploaded)} uploaded, {len(report.duplicates)} already there")
        summary = dataset_summary(client, DEMO_DATASET)
    result.urls["Label Studio project"] = project.url
    result.facts.update(tasks=summary["tasks"], labeled=summary["labeled"], login=settings.label_studio_username)
    return result
