"""Opening untrusted image files, and their pixels as they are shown."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
EXIF_ORIENTATION = 0x0112
# What the detection service decodes (PIL format names; "JPEG" takes the multi-picture JPEGs
# of many cameras too, first picture). Not PIL's every format: EPS would run Ghostscript on
# the upload, and the rare ones (PSD, FITS, ...) are attack surface nobody needs.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")


def open_image(fp, formats: tuple[str, ...] | None = None):
    """PIL's own `Image.open`, optionally limited to `formats`.

    Ultralytics replaces `Image.open` at import with a version that tries to pip-install a
    HEIF plugin whenever a file is not an image; offline that fails with ModuleNotFoundError
    instead of PIL's UnidentifiedImageError. Its original is kept as `_image_open`.
    """
    from PIL import Image

    original = getattr(sys.modules.get("ultralytics.utils.patches"), "_image_open", None)
    return (original or Image.open)(fp, formats=formats)


def displayed_rgb(image: Image.Image) -> Image.Image:
    """The image as 8-bit RGB the way it is shown, and the way OpenCV (`cv2.imread`) reads it.

    - EXIF orientation applied: browsers and Label Studio show the image turned, so
      coordinates are in the turned frame (its width and height).
    - An animation (GIF, WebP, APNG) gives its first frame.
    - 16-bit grayscale is scaled to 8 bits (its top byte), not clipped at 255.
    - Transparency is dropped: transparent pixels keep their own colour.
    """
    import numpy as np
    from PIL import Image

    upright = {  # as ImageOps.exif_transpose, which also rewrites the EXIF block and fails on odd tags
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_270,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_90,
    }.get(image.getexif().get(EXIF_ORIENTATION, 1))
    if upright is not None:
        image = image.transpose(upright)
    if image.mode in SIXTEEN_BIT_MODES:
        top_byte = (np.asarray(image) >> 8).astype(np.uint8)
        return Image.fromarray(top_byte).convert("RGB")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")  # PIL warns when a palette image with transparency goes straight to RGB
    return image.convert("RGB")
