"""Label Studio's labeling page, in headless Chromium: the generated config loads and the template is pre-placed."""

from __future__ import annotations

import uuid

import pytest
from browser import browser_page, screenshot
from conftest import PERSON_SPEC, SHARED_DATASETS

from poseops.datasets import create_dataset, upload_images
from poseops.labelstudio import LabelStudioClient
from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration


def test_labeling_page_shows_the_template_skeleton(label_studio):
    if not label_studio.label_studio_password:
        pytest.fail("the browser test logs in: it needs the Label Studio started by the fixture (with its password)")
    name = f"browser-{uuid.uuid4().hex[:6]}"
    image = sorted((SHARED_DATASETS / "coco8-pose" / "images" / "train").glob("*.jpg"))[0]
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, PERSON_SPEC)
        (uploaded,) = upload_images(client, label_studio, name, [image]).uploaded
    task_id = uploaded[1]
    keypoints = load_skeleton(PERSON_SPEC).classes[0].keypoint_names

    with browser_page() as page:
        page.goto(f"{label_studio.label_studio_url}/user/login/")
        page.fill("input[name=email]", label_studio.label_studio_username)
        page.fill("input[name=password]", label_studio.label_studio_password)
        page.click("button[type=submit]")
        page.wait_for_load_state("networkidle")
        page.goto(f"{project.url}/data?task={task_id}")
        page.get_by_text("left_ankle", exact=True).first.wait_for(timeout=60_000)
        shot = screenshot(page, "labelstudio-template.png")
        text = page.inner_text("body")

    assert shot.stat().st_size > 10_000
    assert "template" in text  # the prediction's model version, pre-loaded as the annotation to edit
    for name in keypoints:
        assert name in text, f"keypoint {name} missing from the regions list"
    assert "person" in text
