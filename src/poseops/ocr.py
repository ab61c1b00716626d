"""Reading text in detection crops.

`small` is Tesseract through its command-line binary (`apt-get install tesseract-ocr`,
plus `tesseract-ocr-<lang>` for more languages). `medium` and `large` are reserved
for OCR engines whose models ship inside a Python package; none is installed in
this project (see docs/api.md), so asking for them answers which models are.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

OCR_MODELS = ("small", "medium", "large")
TESSERACT_TIMEOUT_S = 30
MIN_CROP_HEIGHT = 96  # crops smaller than this are upscaled: Tesseract reads text ~20-40 px tall best
_LANG = re.compile(r"^[A-Za-z0-9_]+$")


class OcrError(ValueError):
    """An OCR request that cannot be served; `code` is the API error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@functools.lru_cache(maxsize=1)
def tesseract_version() -> str | None:
    """The installed Tesseract's version, or None when the binary is missing."""
    binary = shutil.which("tesseract")
    if binary is None:
        return None
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=TESSERACT_TIMEOUT_S, check=False)
    first = (done.stdout or done.stderr).splitlines()
    return first[0].replace("tesseract", "").strip() if first else "unknown"


@functools.lru_cache(maxsize=1)
def tesseract_languages() -> tuple[str, ...]:
    if tesseract_version() is None:
        return ()
    done = subprocess.run(["tesseract", "--list-langs"], capture_output=True, text=True, timeout=TESSERACT_TIMEOUT_S, check=False)
    lines = (done.stdout or done.stderr).splitlines()
    return tuple(sorted(line.strip() for line in lines[1:] if line.strip() and line.strip() != "osd"))


def installed_models() -> dict[str, str]:
    """The OCR models this machine can run, with what each one is."""
    version = tesseract_version()
    if version is None:
        return {}
    return {"small": f"Tesseract {version} (languages: {', '.join(tesseract_languages()) or 'none'})"}


def check_request(model: str, language: str) -> None:
    """Refuse an OCR model or language this machine cannot serve, saying what it can."""
    if model not in OCR_MODELS:
        raise OcrError("unknown_ocr_model", f"ocr_model {model!r} is unknown: use one of {', '.join(OCR_MODELS)}")
    installed = installed_models()
    if model not in installed:
        have = "; ".join(f"{k}: {v}" for k, v in installed.items()) or "none (install tesseract-ocr for 'small')"
        raise OcrError(
            "ocr_model_not_installed",
            f"ocr_model {model!r} is not installed on this server; installed OCR models: {have}",
        )
    parts = language.split("+")
    languages = tesseract_languages()
    for part in parts:
        if not _LANG.match(part) or part not in languages:
            raise OcrError(
                "unknown_ocr_language",
                f"ocr_language {language!r}: {part!r} is not an installed Tesseract language; installed: "
                f"{', '.join(languages)} (join several with '+', e.g. eng+deu; more via apt-get install tesseract-ocr-<code>)",
            )


def read_text(crop_bgr: np.ndarray, model: str = "small", language: str = "eng") -> str:
    """The text Tesseract reads in one BGR crop, whitespace collapsed to single spaces."""
    import cv2

    check_request(model, language)
    if crop_bgr.size == 0:
        return ""
    height = crop_bgr.shape[0]
    if height < MIN_CROP_HEIGHT:
        factor = MIN_CROP_HEIGHT / height
        crop_bgr = cv2.resize(crop_bgr, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    ok, png = cv2.imencode(".png", crop_bgr)
    if not ok:
        return ""
    done = subprocess.run(
        ["tesseract", "stdin", "stdout", "-l", language, "--psm", "6"],
        input=png.tobytes(),
        capture_output=True,
        timeout=TESSERACT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tesseract failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()[:300]}")
    return " ".join(done.stdout.decode("utf-8", errors="replace").split())
