"""The detection service against bad and unusual input, end to end on the real `bentoml serve`.

- A Schemathesis fuzz of the service's own OpenAPI document (/docs.json): no request
  it can build may get a 5xx, every 4xx is a JSON `{error, message}`, and the server
  keeps answering.
- Image files that are odd but real (CMYK, 16-bit, 1-bit, palette with transparency,
  animated GIF, WebP, BMP, EXIF-rotated photos) and broken ones (empty, truncated,
  a header claiming 100000 x 100000 pixels), each made here from a coco8-pose photo:
  the answer is the detections a plain 8-bit image of the same pixels gets, or a
  clear 4xx error.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections import Counter
from collections.abc import Callable

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from PIL import Image, ImageOps
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance
from service_server import IMAGES, RunningService
from test_images import PHOTO, encode, photo

pytestmark = pytest.mark.integration

assert PHOTO == IMAGES[5]  # 416 x 640, three people found with confidence > 0.85
ORIENTATION = 0x0112  # the EXIF tag
BOX_KEYS = ("x", "y", "width", "height")
FUZZ_EXAMPLES = 60  # per operation and mode: 3-30 s for /detect on 2 cores (OCR requests are the slow ones)


def post(service: RunningService, image: bytes, **fields: str) -> httpx.Response:
    files = {"image": ("upload", image, "application/octet-stream")}
    return httpx.post(service.url + "/detect", files=files, data=fields, headers=service.headers(), timeout=120)


def detections(service: RunningService, image: bytes) -> list[dict]:
    r = post(service, image)
    assert r.status_code == 200, r.text
    return r.json()


def assert_error_body(response: httpx.Response | schemathesis.Response) -> None:
    body = response.json()  # raises on a body that is not JSON
    assert isinstance(body, dict) and set(body) == {"error", "message"}, body
    assert body["error"] and len(body["message"]) > 20, body


def assert_healthy(service: RunningService) -> None:
    assert httpx.get(service.url + "/healthz", timeout=10).status_code == 200


# --- Schemathesis: every operation of /docs.json, positive and negative data ------------------------

OPERATIONS = ["POST /detect", "GET /metadata", "GET /skeleton", "GET /healthz", "GET /livez", "GET /readyz", "GET /metrics",
              "POST /detect-video"]  # /detect-video is fuzzed in test_service_video.py
OUR_OPERATIONS = ("POST /detect", "GET /metadata", "GET /skeleton")  # the others are BentoML's own
FUZZ_RUNS = [("POST /detect", GenerationMode.POSITIVE), ("POST /detect", GenerationMode.NEGATIVE)] + [
    (label, GenerationMode.POSITIVE) for label in OPERATIONS[1:-1]  # no parameters: no negative data to make
]


@pytest.fixture(scope="module")
def service_openapi(detect_service: RunningService):
    return schemathesis.openapi.from_url(detect_service.url + "/docs.json", timeout=30)


def test_openapi_document_lists_the_operations(service_openapi):
    labels = [result.ok().label for result in service_openapi.get_all_operations()]
    assert sorted(labels) == sorted(OPERATIONS)


@pytest.mark.parametrize(("label", "mode"), FUZZ_RUNS, ids=[f"{label} {mode.value}" for label, mode in FUZZ_RUNS])
def test_fuzzed_requests_get_clear_answers(detect_service: RunningService, service_openapi, label: str, mode: GenerationMode):
    """Schemathesis builds requests from the spec (schema-valid ones, or ones that break it) and checks each answer.

    The `main` key has no quota, so no amount of fuzzing spends it. Two of Schemathesis' checks
    cannot hold for this API and are left out:
    - positive_data_acceptance: the spec can say that `image` is a file, not that it must
      decode, nor which OCR languages are installed, so schema-valid requests may get a 400;
    - negative_data_rejection: a multipart form sends every value as text, so much of the
      "schema-breaking" data is valid once sent (ocr_language=0 is the text "0", [] sends
      no field, [x] sends x), and an empty field counts as not given (docs/api.md).
    """
    method, path = label.split(" ")
    operation = service_openapi[path][method]
    headers = detect_service.headers()
    statuses: Counter[int] = Counter()

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=FUZZ_EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    def send(case) -> None:
        response = case.call(headers=headers, timeout=120)
        statuses[response.status_code] += 1
        case.validate_response(response, headers=headers, excluded_checks=[positive_data_acceptance, negative_data_rejection])
        assert response.status_code < 500, response.text
        if response.status_code >= 400 and label in OUR_OPERATIONS:
            assert_error_body(response)

    send()
    assert_healthy(detect_service)
    if mode is GenerationMode.NEGATIVE:  # most of it is refused, and nothing fails
        assert statuses[400] > sum(statuses.values()) / 2, statuses
    elif label == "POST /detect":  # Schemathesis sends tiny real images too: some are detected on
        assert statuses[200] > 0 and statuses[400] > 0, statuses
    else:
        assert set(statuses) == {200}, statuses


def test_still_detects_after_the_fuzzing(detect_service: RunningService):
    assert_healthy(detect_service)
    assert len(detections(detect_service, PHOTO.read_bytes())) >= 3


# --- broken files: a clear 4xx ----------------------------------------------------------------------


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height RGB pixels, with (almost) no pixel data behind it."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def first_half(data: bytes) -> bytes:
    return data[: len(data) // 2]


def bmp_with_unknown_compression() -> bytes:
    data = bytearray(encode(photo(), "BMP"))
    data[30:34] = struct.pack("<I", 230)  # BITMAPINFOHEADER.biCompression: PIL fails while opening
    return bytes(data)


BROKEN: dict[str, tuple[Callable[[], bytes], int, str, str]] = {
    "zero bytes": (lambda: b"", 400, "empty_image", "attach the image"),
    "truncated JPEG": (lambda: first_half(PHOTO.read_bytes()), 400, "truncated_image", "complete file"),
    "truncated PNG": (lambda: first_half(encode(photo(), "PNG")), 400, "truncated_image", "complete file"),
    "PNG header claiming 100000 x 100000": (lambda: png_header_only(100_000, 100_000), 413, "decompression_bomb", "scale it down"),
    "text named like a JPEG": (lambda: b"\xff\xd8\xff not really a JPEG", 400, "not_an_image", "JPEG, PNG"),
    "BMP with an unknown compression": (bmp_with_unknown_compression, 400, "not_an_image", "intact image"),
    "EPS (PIL would run Ghostscript)": (lambda: encode(photo(), "EPS"), 400, "not_an_image", "JPEG, PNG"),
}


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_file_is_a_clear_error(detect_service: RunningService, name: str):
    make, status, code, words = BROKEN[name]
    r = post(detect_service, make())
    assert r.status_code == status, r.text
    assert_error_body(r)
    assert r.json()["error"] == code and words in r.json()["message"], r.json()
    assert_healthy(detect_service)


# --- odd but real files: the detections of the same pixels as a plain 8-bit image -------------------


def sixteen_bit_gray() -> tuple[bytes, bytes]:
    import numpy as np

    gray = photo().convert("L")
    wide = Image.fromarray(np.asarray(gray).astype(np.uint16) * 257)  # 0..255 -> 0..65535
    assert wide.mode == "I;16"
    return encode(wide, "PNG"), encode(gray, "PNG")


def one_bit() -> tuple[bytes, bytes]:
    bits = photo().convert("1")
    return encode(bits, "PNG"), encode(bits.convert("L"), "PNG")


def palette_with_transparency() -> tuple[bytes, bytes]:
    palette = photo().quantize(256)
    most_common_index = max(palette.getcolors(), key=lambda c: c[0])[1]  # a large part of the picture goes transparent
    return encode(palette, "PNG", transparency=most_common_index), encode(palette.convert("RGB"), "PNG")


def animated_gif() -> tuple[bytes, bytes]:
    first = photo().quantize(256)
    second = ImageOps.mirror(photo()).quantize(256)
    animation = encode(first, "GIF", save_all=True, append_images=[second], duration=200, loop=0)
    with Image.open(io.BytesIO(animation)) as im:
        assert im.n_frames == 2
    return animation, encode(first.convert("RGB"), "PNG")


def lossless_webp() -> tuple[bytes, bytes]:
    return encode(photo(), "WEBP", lossless=True), encode(photo(), "PNG")


def bmp() -> tuple[bytes, bytes]:
    return encode(photo(), "BMP"), encode(photo(), "PNG")


SAME_PIXELS: dict[str, Callable[[], tuple[bytes, bytes]]] = {
    "16-bit grayscale PNG (I;16)": sixteen_bit_gray,
    "1-bit PNG": one_bit,
    "palette PNG with transparency": palette_with_transparency,
    "animated GIF (first frame)": animated_gif,
    "lossless WebP": lossless_webp,
    "BMP": bmp,
}


@pytest.mark.parametrize("name", list(SAME_PIXELS))
def test_odd_format_gets_the_detections_of_its_pixels(detect_service: RunningService, name: str):
    odd, plain = SAME_PIXELS[name]()
    assert detections(detect_service, odd) == detections(detect_service, plain)
    assert_healthy(detect_service)


def test_sixteen_bit_and_animated_gif_find_the_people(detect_service: RunningService):
    """Not just 'the same as the reference': the 16-bit image is not blown out to white, the GIF shows its first frame."""
    sixteen, gray = sixteen_bit_gray()
    assert len(detections(detect_service, sixteen)) >= 3
    animation, first_frame = animated_gif()
    mirrored = encode(ImageOps.mirror(photo()).quantize(256).convert("RGB"), "PNG")
    found = detections(detect_service, animation)
    assert len(found) >= 3
    assert found != detections(detect_service, mirrored)


def iou(a: dict, b: dict) -> float:
    ax2, ay2, bx2, by2 = a["x"] + a["width"], a["y"] + a["height"], b["x"] + b["width"], b["y"] + b["height"]
    w = max(0.0, min(ax2, bx2) - max(a["x"], b["x"]))
    h = max(0.0, min(ay2, by2) - max(a["y"], b["y"]))
    inter = w * h
    return inter / (a["width"] * a["height"] + b["width"] * b["height"] - inter)


def test_cmyk_jpeg_finds_the_same_people(detect_service: RunningService):
    cmyk = encode(photo().convert("CMYK"), "JPEG", quality=95)
    with Image.open(io.BytesIO(cmyk)) as im:
        assert im.mode == "CMYK"
    found = [d for d in detections(detect_service, cmyk) if d["confidence"] >= 0.5]
    expected = [d for d in detections(detect_service, PHOTO.read_bytes()) if d["confidence"] >= 0.5]
    assert len(found) == len(expected) >= 3
    for person in expected:  # re-encoded colours move the boxes a little, no more
        assert max(iou(person, d) for d in found) > 0.9, (person, found)


# --- EXIF orientation: coordinates in the frame the image is shown in ------------------------------


def assert_close(served: list[dict], expected: list[dict], pixels: float) -> None:
    assert len(served) == len(expected), (served, expected)
    for got, want in zip(served, expected, strict=True):
        assert got["class"] == want["class"]
        assert abs(got["confidence"] - want["confidence"]) < 0.01
        for key in BOX_KEYS:
            assert abs(got[key] - want[key]) <= pixels, (key, got, want)
        for kp_got, kp_want in zip(got["keypoints"], want["keypoints"], strict=True):
            assert kp_got["name"] == kp_want["name"]
            assert abs(kp_got["x"] - kp_want["x"]) <= pixels and abs(kp_got["y"] - kp_want["y"]) <= pixels, (kp_got, kp_want)


@pytest.mark.parametrize("orientation", [6, 8, 3])
def test_exif_rotated_photo_is_detected_as_shown(detect_service: RunningService, orientation: int):
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    tagged = encode(photo(), "JPEG", quality=95, exif=exif)  # pixels as stored, the tag says how to turn them
    with Image.open(io.BytesIO(tagged)) as im:
        assert im.size == photo().size and im.getexif()[ORIENTATION] == orientation
        shown = ImageOps.exif_transpose(im)  # the pixels turned for real, as a browser shows them
    turned = encode(shown, "PNG")
    with Image.open(io.BytesIO(turned)) as im:
        assert ORIENTATION not in im.getexif()
    width, height = shown.size
    assert (width, height) == ((640, 416) if orientation in (6, 8) else (416, 640))

    served = detections(detect_service, tagged)
    assert served  # fewer than upright: the model sees people lying down
    assert_close(served, detections(detect_service, turned), pixels=2)
    for det in served:
        assert -1 <= det["x"] and det["x"] + det["width"] <= width + 1, det
        assert -1 <= det["y"] and det["y"] + det["height"] <= height + 1, det
        for kp in det["keypoints"]:
            assert -1 <= kp["x"] <= width + 1 and -1 <= kp["y"] <= height + 1, kp
    assert served != detections(detect_service, encode(photo(), "JPEG", quality=95))
    assert_healthy(detect_service)
