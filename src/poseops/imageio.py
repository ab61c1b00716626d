"""Opening untrusted image files, and their pixels as they are shown.

A pixel budget guards every decode: `open_image` reads the header and refuses an image
whose declared size (the frame that gets decoded, in every format) is over
`POSEOPS_MAX_PIXELS` pixels, or whose side is over `MAX_SIDE`, before a pixel is decoded, so
a few hundred bytes claiming 8000 x 8000 cost nothing. `PixelBudget` bounds what several
threads decode at once: together they hold at most that many pixels, whatever the number
of requests.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

from poseops.errors import PoseopsError

if TYPE_CHECKING:
    from PIL import Image

SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
EXIF_ORIENTATION = 0x0112
# What the detection service decodes (PIL format names; "JPEG" takes the multi-picture JPEGs
# of many cameras too, first picture). Not PIL's every format: EPS would run Ghostscript on
# the upload, and the rare ones (PSD, FITS, ...) are attack surface nobody needs.
UPLOAD_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")
MAX_PIXELS_ENV = "POSEOPS_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 64_000_000  # ~8000 x 8000; decoding costs about 12 bytes a pixel
# For a process that decodes under a PixelBudget: glibc's malloc otherwise raises its mmap threshold after the
# first large free and keeps big freed buffers in per-thread arenas, so each thread's peak stays resident and
# memory grows with the thread count whatever the budget. A fixed threshold returns them to the system.
DECODE_MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
MAX_SIDE = 65_535  # no format poseops reads stores a longer side (JPEG's limit); a 1 x 64M strip is refused


class TooManyPixels(PoseopsError, ValueError):
    """An image whose header declares more pixels (or a longer side) than the budget allows; nothing was decoded."""

    def __init__(self, width: int, height: int, max_pixels: int, where: str = "") -> None:
        super().__init__(f"{where + ': ' if where else ''}the image declares {width} x {height} = {width * height:,} pixels, over the limit of "
                         f"{max_pixels:,} pixels (and {MAX_SIDE:,} a side; {MAX_PIXELS_ENV} sets the limit): "
                         "scale it down first")
        self.size = (width, height)
        self.max_pixels = max_pixels


def max_pixels_setting(env: dict[str, str] | None = None) -> int:
    """The per-image pixel budget: POSEOPS_MAX_PIXELS, else DEFAULT_MAX_PIXELS."""
    raw = (os.environ if env is None else env).get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_PIXELS
    if not raw.isdigit() or int(raw) <= 0:
        raise ValueError(f"{MAX_PIXELS_ENV}={raw!r}: expected a positive whole number of pixels")
    return int(raw)


def open_image(fp, formats: tuple[str, ...] | None = None, max_pixels: int | None = None):
    """PIL's own `Image.open`, optionally limited to `formats`, refusing (`TooManyPixels`) an image over the budget.

    Only the header is read: the pixels decode later (`load`), and only when the declared
    size of the frame that decodes (the first) is within `max_pixels` (default: the
    POSEOPS_MAX_PIXELS setting) and each side within MAX_SIDE.

    Ultralytics replaces `Image.open` at import with a version that tries to pip-install a
    HEIF plugin whenever a file is not an image; offline that fails with ModuleNotFoundError
    instead of PIL's UnidentifiedImageError. Its original is kept as `_image_open`.
    """
    from PIL import Image

    original = getattr(sys.modules.get("ultralytics.utils.patches"), "_image_open", None)
    image = (original or Image.open)(fp, formats=formats)
    limit = max_pixels_setting() if max_pixels is None else max_pixels
    width, height = image.size
    if width * height > limit or max(width, height) > MAX_SIDE:
        image.close()
        raise TooManyPixels(width, height, limit)
    return image


def check_within_budget(source: bytes | os.PathLike, max_pixels: int | None = None) -> None:
    """Refuse (`TooManyPixels`) an image file or bytes over the pixel budget before another decoder (OpenCV) reads it.

    Files PIL cannot identify are left to that decoder.
    """
    import io

    from PIL import UnidentifiedImageError

    where = "" if isinstance(source, bytes) else str(source)
    try:
        with open_image(io.BytesIO(source) if isinstance(source, bytes) else source, max_pixels=max_pixels):
            pass
    except TooManyPixels as e:
        raise TooManyPixels(*e.size, e.max_pixels, where) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        pass


class PixelBudget:
    """Pixels being decoded (and held) at once across threads: at most `total`; a request waits for room."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._room = threading.Condition()

    @contextlib.contextmanager
    def hold(self, pixels: int) -> Iterator[None]:
        pixels = min(pixels, self.total)  # one image over the total still runs, alone
        with self._room:
            self._room.wait_for(lambda: self.used + pixels <= self.total)
            self.used += pixels
        try:
            yield
        finally:
            with self._room:
                self.used -= pixels
                self._room.notify_all()


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
