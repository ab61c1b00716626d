"""The playground page in a real headless Chromium against the real service.

Picks an image, presses Detect, and checks that the skeleton is drawn on the canvas
in the spec's colours and that the JSON answer is shown. The screenshot goes to
test-artifacts/playground.png. Debian's Chromium is used (never a downloaded one):
`make install-system` installs it from packages-apt.txt.
"""

from __future__ import annotations

import base64
import json

import pytest
from browser import browser_page, screenshot
from conftest import PERSON_SPEC
from service_server import IMAGES, RunningService

from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration



def spec_colors() -> set[tuple[int, int, int]]:
    cls = load_skeleton(PERSON_SPEC).classes[0]
    hexes = {k.color for k in cls.keypoints} | {e.color for e in cls.connections}
    return {tuple(int(h[i : i + 2], 16) for i in (1, 3, 5)) for h in hexes}


def spec_coloured_pixels(png) -> int:
    """Pixels of a screenshot within 8 levels (per channel) of one of the spec's colours."""
    import numpy as np
    from PIL import Image

    pixels = np.asarray(Image.open(png).convert("RGB"), dtype=np.int16)
    near = np.zeros(pixels.shape[:2], dtype=bool)
    for color in spec_colors():
        near |= (np.abs(pixels - np.array(color, dtype=np.int16)) <= 8).all(axis=2)
    return int(near.sum())


COUNT_SPEC_PIXELS = """(colors) => {
  const c = document.getElementById('canvas');
  const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
  const wanted = new Set(colors.map(([r, g, b]) => (r << 16) | (g << 8) | b));
  let n = 0;
  for (let i = 0; i < d.length; i += 4) if (wanted.has((d[i] << 16) | (d[i + 1] << 8) | d[i + 2])) n++;
  return n;
}"""


def test_playground_draws_the_skeleton(detect_service: RunningService):
    image = IMAGES[4]  # 000000000110.jpg: several people
    colors = [list(c) for c in spec_colors()]
    with browser_page(1280, 900) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(detect_service.url + "/", wait_until="networkidle")
        page.wait_for_function("document.getElementById('model').textContent.includes('ready')")
        assert page.is_visible("#key"), "keys are configured: the page must ask for one"
        page.fill("#key", detect_service.keys["main"])
        page.set_input_files("#file", str(image))
        page.wait_for_function("!document.getElementById('detect').disabled")
        before = page.evaluate(COUNT_SPEC_PIXELS, colors)
        shot_before = screenshot(page, "playground-before.png", full_page=True)

        page.click("#detect")
        page.wait_for_function("/detections? in/.test(document.getElementById('status').textContent)", timeout=60_000)
        shown = json.loads(page.text_content("#json"))
        canvas = page.eval_on_selector("#canvas", "c => ({...c.dataset, width: c.width, height: c.height})")
        after = page.evaluate(COUNT_SPEC_PIXELS, colors)
        shot = screenshot(page, "playground.png", full_page=True)

        # the JSON shown is the service's answer for this image with the default thresholds
        assert isinstance(shown, list) and len(shown) >= 1
        assert int(canvas["detections"]) == len(shown)
        assert (canvas["width"], canvas["height"]) == (640, 480)
        confident = sum(1 for d in shown for k in d["keypoints"] if k["confidence"] >= 0.5)
        assert int(canvas["keypoints"]) == confident > 0
        assert int(canvas["connections"]) > 0
        # the drawing added pixels in exactly the spec's keypoint and connection colours
        assert after > before + 200, (before, after)

        # moving a slider re-runs the detection with the new threshold
        page.eval_on_selector("#conf", "el => { el.value = '0.9'; el.dispatchEvent(new Event('input')); el.dispatchEvent(new Event('change')); }")
        page.wait_for_function(f"JSON.parse(document.getElementById('json').textContent).length < {len(shown)}", timeout=60_000)
        assert page.text_content("#conf-out") == "0.90"
        assert not errors, errors
    # and the user sees it: the page as shown on screen gained the spec's colours where the skeleton was drawn
    seen_before, seen_after = spec_coloured_pixels(shot_before), spec_coloured_pixels(shot)
    assert seen_after > seen_before + 200, (seen_before, seen_after)


DROP_FILE = """async ([b64, name, type]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], name, { type }));
  const drop = document.getElementById('drop');
  drop.dispatchEvent(new DragEvent('dragover', { dataTransfer: transfer, bubbles: true, cancelable: true }));
  const highlighted = drop.classList.contains('over');
  drop.dispatchEvent(new DragEvent('drop', { dataTransfer: transfer, bubbles: true, cancelable: true }));
  return { highlighted, after: drop.classList.contains('over') };
}"""


def test_dropping_an_image_detects_and_a_wrong_key_is_shown(detect_service: RunningService):
    """Drag and drop an image onto the page (a real DragEvent with the file), detect; a bad key shows the 401."""
    image = IMAGES[0]
    with browser_page(1280, 900) as page:
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(detect_service.url + "/", wait_until="networkidle")
        page.wait_for_function("document.getElementById('model').textContent.includes('ready')")
        dropped = page.evaluate(DROP_FILE, [base64.b64encode(image.read_bytes()).decode(), image.name, "image/jpeg"])
        assert dropped == {"highlighted": True, "after": False}
        page.wait_for_function("!document.getElementById('detect').disabled")
        assert image.name in page.text_content("#status")

        page.fill("#key", "not-a-key")
        page.click("#detect")
        page.wait_for_function("document.getElementById('status').textContent.startsWith('401')", timeout=60_000)
        assert json.loads(page.text_content("#json"))["error"] == "unknown_api_key"

        page.fill("#key", detect_service.keys["main"])
        page.click("#detect")
        page.wait_for_function("/detections? in/.test(document.getElementById('status').textContent)", timeout=60_000)
        shown = json.loads(page.text_content("#json"))
        canvas = page.eval_on_selector("#canvas", "c => ({...c.dataset, width: c.width, height: c.height})")
        assert len(shown) >= 1 and int(canvas["detections"]) == len(shown)

        not_an_image = page.evaluate(DROP_FILE, [base64.b64encode(b"just text").decode(), "notes.jpg", "image/jpeg"])
        assert not_an_image["highlighted"]
        page.wait_for_function("document.getElementById('status').textContent.includes('not an image')")
        assert "notes.jpg" in page.text_content("#status")
        page.click("#detect")  # still the dropped photo, not the text file
        page.wait_for_function("/detections? in/.test(document.getElementById('status').textContent)", timeout=60_000)
        assert json.loads(page.text_content("#json")) == shown
        screenshot(page, "playground-dropped.png")
        assert not errors, errors
