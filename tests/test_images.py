"""Reading untrusted image files (offline)."""

from __future__ import annotations

import pytest
from conftest import SHARED_DATASETS

from poseops.datasets import read_image


def test_a_non_image_is_refused_even_after_ultralytics_patched_pil(tmp_path):
    import ultralytics  # noqa: F401 - replaces PIL's Image.open with a HEIF-installing version

    fake = tmp_path / "notes.png"
    fake.write_text("not a picture")
    with pytest.raises(ValueError, match="not an image"):
        read_image(fake)


def test_a_truncated_jpeg_is_refused(tmp_path):
    real = sorted((SHARED_DATASETS / "coco8-pose" / "images" / "train").glob("*.jpg"))[0]
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(real.read_bytes()[:3000])
    with pytest.raises(ValueError, match="broken image"):
        read_image(cut)
    whole = read_image(real)
    assert whole.width > 0 and whole.height > 0 and len(whole.sha256) == 64


def test_exif_quarter_turn_swaps_the_shown_size(tmp_path):
    from PIL import Image

    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90°
    Image.new("RGB", (40, 20), "red").save(path, exif=exif)
    image = read_image(path)
    assert (image.width, image.height) == (20, 40)
