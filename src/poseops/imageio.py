"""Opening untrusted image files."""

from __future__ import annotations

import sys


def open_image(fp):
    """PIL's own `Image.open`.

    Ultralytics replaces `Image.open` at import with a version that tries to pip-install a
    HEIF plugin whenever a file is not an image; offline that fails with ModuleNotFoundError
    instead of PIL's UnidentifiedImageError. Its original is kept as `_image_open`.
    """
    from PIL import Image

    original = getattr(sys.modules.get("ultralytics.utils.patches"), "_image_open", None)
    return (original or Image.open)(fp)
