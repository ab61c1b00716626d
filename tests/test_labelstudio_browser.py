"""Label Studio's labeling page, in headless Chromium: the generated config loads and the template is pre-placed.

The check reads what the editor drew: the regions of the annotation it opens (Label Studio's own
store) and the shapes on its canvas (Konva), and compares their number and positions with the
dataset's template skeleton placed on the image.
"""

from __future__ import annotations

import uuid

import pytest
from browser import browser_page, label_studio_login, screenshot
from conftest import PERSON_SPEC, SHARED_DATASETS
from PIL import Image

from poseops.datasets import create_dataset, load_record, template_prediction, upload_images
from poseops.labelstudio import LabelStudioClient
from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration

# The annotation the editor opened (its regions as Label Studio stores them), and what its canvas shows:
# the centre of every circle (keypoint) and the box of every rectangle, in screen pixels.
EDITOR_REGIONS = """() => {
  const annotation = window.Htx.annotationStore.selected;
  const centre = (r) => ({x: r.x + r.width / 2, y: r.y + r.height / 2});
  const stage = window.Konva.stages[0];
  return {
    results: annotation.serializeAnnotation(),
    circles: stage.find('Circle').filter((n) => n.isVisible()).map((n) => centre(n.getClientRect())),
    rects: stage.find('Rect').filter((n) => n.isVisible() && n.width() > 5).map((n) => n.getClientRect()),
  };
}"""


def test_labeling_page_shows_the_template_skeleton(label_studio):
    if not label_studio.label_studio_password:
        pytest.fail("the browser test logs in: it needs the Label Studio started by the fixture (with its password)")
    name = f"browser-{uuid.uuid4().hex[:6]}"
    image = sorted((SHARED_DATASETS / "coco8-pose" / "images" / "train").glob("*.jpg"))[0]
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, PERSON_SPEC)
        (uploaded,) = upload_images(client, label_studio, name, [image]).uploaded
    skeleton = load_skeleton(PERSON_SPEC)
    with Image.open(image) as opened:
        # what the editor should show: the dataset's template placed on this image (1 box, 17 keypoints)
        template = template_prediction(skeleton, load_record(label_studio, name), *opened.size)["result"]
    keypoints = skeleton.classes[0].keypoint_names

    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    with browser_page() as page:
        label_studio_login(page, label_studio)
        page.goto(f"{project.url}/data?task={uploaded[1]}")
        page.get_by_text("left_ankle", exact=True).first.wait_for(timeout=60_000)
        page.wait_for_function("() => window.Konva && window.Konva.stages.length > 0 && window.Htx.annotationStore.selected")
        try:  # the regions are drawn once the image has loaded
            page.wait_for_function("() => window.Konva.stages[0].find('Circle').length > 0", timeout=30_000)
        except PlaywrightTimeout:
            pass  # nothing drawn: the checks below say what is missing
        drawn = page.evaluate(EDITOR_REGIONS)
        screenshot(page, "labelstudio-template.png")

    # the annotation the editor opened holds the template's regions: same labels, same places
    by_id = {r["id"]: r for r in drawn["results"]}
    assert sorted(by_id) == sorted(r["id"] for r in template)
    for region in template:
        shown = by_id[region["id"]]
        assert shown["type"] == region["type"] and shown.get("parentID") == region.get("parentID")
        labels = region["value"].get("keypointlabels") or region["value"].get("rectanglelabels")
        assert labels == (shown["value"].get("keypointlabels") or shown["value"].get("rectanglelabels"))
        assert (shown["value"]["x"], shown["value"]["y"]) == pytest.approx((region["value"]["x"], region["value"]["y"]),
                                                                          abs=1e-6)
    assert sorted(r["value"]["keypointlabels"][0] for r in template if r["type"] == "keypointlabels") == sorted(keypoints)

    # and the canvas draws them: one box, a circle per keypoint, each where the template puts it within the box
    (box,) = drawn["rects"]
    (template_box,) = [r["value"] for r in template if r["type"] == "rectanglelabels"]
    points = [r["value"] for r in template if r["type"] == "keypointlabels"]
    assert len(drawn["circles"]) == len(points) == 17
    for point in points:
        want_x = box["x"] + (point["x"] - template_box["x"]) / template_box["width"] * box["width"]
        want_y = box["y"] + (point["y"] - template_box["y"]) / template_box["height"] * box["height"]
        nearest = min(abs(c["x"] - want_x) + abs(c["y"] - want_y) for c in drawn["circles"])
        assert nearest < 4, f"no keypoint drawn within 4 px of {point['keypointlabels'][0]} at ({want_x:.0f}, {want_y:.0f})"
