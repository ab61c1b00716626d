"""Reading untrusted image files (offline)."""

from __future__ import annotations

import io
import random
import struct
import zlib

import cv2
import numpy as np
import pytest
from conftest import SHARED_DATASETS
from PIL import Image, ImageOps

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
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90°
    Image.new("RGB", (40, 20), "red").save(path, exif=exif)
    image = read_image(path)
    assert (image.width, image.height) == (20, 40)



# --- the pixels the detection service sees ----------------------------------------------------------
# `poseops predict`, autolabel without a service and Ultralytics training read images with OpenCV;
# the service decodes uploads with PIL (`detect_api.decode_image` over `imageio.displayed_rgb`).
# Both must see the same pixels, in the frame the image is shown in.

PHOTO = sorted((SHARED_DATASETS / "coco8-pose" / "images").glob("*/*.jpg"))[5]  # 416 x 640


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **params)
    return buf.getvalue()


def photo() -> Image.Image:
    with Image.open(PHOTO) as im:
        return im.convert("RGB")


def orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


def sixteen_bit_gray() -> Image.Image:
    wide = Image.fromarray(np.asarray(photo().convert("L")).astype(np.uint16) * 257)  # 0..255 -> 0..65535
    assert wide.mode == "I;16"
    return wide


SAME_AS_OPENCV = {
    "16-bit grayscale PNG": lambda: encode(sixteen_bit_gray(), "PNG"),
    "16-bit grayscale TIFF": lambda: encode(sixteen_bit_gray(), "TIFF"),
    "1-bit PNG": lambda: encode(photo().convert("1"), "PNG"),
    "palette PNG with transparency": lambda: encode(photo().quantize(256), "PNG", transparency=0),
    "RGBA PNG": lambda: encode(photo().convert("RGBA"), "PNG"),
    "animated GIF": lambda: encode(photo().quantize(256), "GIF", save_all=True, append_images=[ImageOps.mirror(photo()).quantize(256)]),
    "WebP": lambda: encode(photo(), "WEBP"),
    "BMP": lambda: encode(photo(), "BMP"),
    "TIFF": lambda: encode(photo(), "TIFF"),
    "MPO (multi-picture JPEG of cameras)": lambda: encode(photo(), "MPO", save_all=True, append_images=[photo().rotate(90)]),
    "PNG with EXIF orientation 6": lambda: encode(photo(), "PNG", exif=orientation(6)),
    **{f"JPEG with EXIF orientation {o}": (lambda o=o: encode(photo(), "JPEG", quality=95, exif=orientation(o))) for o in range(1, 9)},
}


@pytest.mark.parametrize("name", list(SAME_AS_OPENCV))
def test_service_sees_the_pixels_opencv_sees(name: str):
    from poseops.detect_api import decode_image

    data = SAME_AS_OPENCV[name]()
    served = decode_image(data, 10**8)
    opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert served.shape == opencv.shape and served.dtype == np.uint8
    assert np.array_equal(served, opencv)


def test_cmyk_jpeg_is_within_one_level_of_opencv():
    from poseops.detect_api import decode_image

    data = encode(photo().convert("CMYK"), "JPEG", quality=95)
    opencv = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR).astype(int)
    assert np.abs(decode_image(data, 10**8).astype(int) - opencv).max() <= 1  # the two CMYK-to-RGB roundings


@pytest.mark.parametrize(("value", "shown_size"), [(1, (416, 640)), (3, (416, 640)), (6, (640, 416)), (8, (640, 416))])
def test_displayed_rgb_turns_the_image_as_shown(value: int, shown_size: tuple[int, int]):
    from poseops.imageio import displayed_rgb

    with Image.open(io.BytesIO(encode(photo(), "JPEG", quality=95, exif=orientation(value)))) as im:
        stored = np.asarray(im.convert("RGB"))
        shown = displayed_rgb(im)
    assert shown.mode == "RGB" and shown.size == shown_size
    turned = {1: stored, 3: np.rot90(stored, 2), 6: np.rot90(stored, -1), 8: np.rot90(stored, 1)}[value]
    assert np.array_equal(np.asarray(shown), turned)


def test_sixteen_bit_gray_keeps_its_tones():
    from poseops.imageio import displayed_rgb

    gray = np.asarray(photo().convert("L"))
    shown = np.asarray(displayed_rgb(sixteen_bit_gray()))
    assert np.array_equal(shown[:, :, 0], gray) and np.array_equal(shown[:, :, 2], gray)  # not clipped to white


def test_animated_gif_gives_its_first_frame():
    from poseops.imageio import displayed_rgb

    first, second = photo().quantize(256), ImageOps.mirror(photo()).quantize(256)
    with Image.open(io.BytesIO(encode(first, "GIF", save_all=True, append_images=[second]))) as im:
        assert im.n_frames == 2
        shown = np.asarray(displayed_rgb(im))
    assert np.array_equal(shown, np.asarray(first.convert("RGB")))
    assert not np.array_equal(shown, np.asarray(second.convert("RGB")))


def test_formats_outside_the_upload_list_are_refused():
    from poseops.detect_api import ApiError, decode_image

    for fmt in ("EPS", "PCX"):  # EPS would run Ghostscript on the upload
        with pytest.raises(ApiError) as refused:
            decode_image(encode(photo(), fmt), 10**8)
        assert (refused.value.status, refused.value.code) == (400, "not_an_image"), fmt
        assert "JPEG, PNG, WebP, BMP, TIFF or GIF" in refused.value.message


def exif_with_mistyped_tag() -> bytes:
    """EXIF with Orientation 6 and SampleFormat (a number tag) holding the text "Camera", as damaged files have."""
    text = b"Camera\x00"
    text_offset = 8 + 2 + 2 * 12 + 4  # after the header, the entry count, two entries and the next-IFD link
    ifd = struct.pack(">H", 2)
    ifd += struct.pack(">HHII", 0x0112, 3, 1, 6 << 16)  # SHORT 6, left-justified in the 4-byte value field
    ifd += struct.pack(">HHII", 0x0153, 2, len(text), text_offset)  # ASCII where a SHORT belongs
    ifd += struct.pack(">I", 0)
    return b"Exif\x00\x00MM\x00*" + struct.pack(">I", 8) + ifd + text


def test_a_mistyped_exif_tag_does_not_lose_the_image():
    from poseops.detect_api import decode_image

    data = encode(photo(), "JPEG", quality=95, exif=exif_with_mistyped_tag())
    with Image.open(io.BytesIO(data)) as im:
        with pytest.raises(struct.error):
            ImageOps.exif_transpose(im)  # PIL's own helper fails re-writing the EXIF block
    served = decode_image(data, 10**8)
    assert served.shape == (416, 640, 3)  # turned by Orientation 6
    assert np.array_equal(served, cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def bmp_with_compression(method: int) -> bytes:
    data = bytearray(encode(photo(), "BMP"))
    data[30:34] = struct.pack("<I", method)  # BITMAPINFOHEADER.biCompression
    return bytes(data)


DAMAGED_HEADERS = {  # PIL raised these while opening, past the service's error handling (a 500 before)
    "PNG whose IHDR chunk is cut off": (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR\x00\x00\x01", "truncated_image"),
    "PNG whose IHDR is 5 bytes": (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", b"\x00\x00\x00\x01\x00"), "truncated_image"),
    "BMP with an unknown compression": (bmp_with_compression(230), "not_an_image"),
}


@pytest.mark.parametrize("name", list(DAMAGED_HEADERS))
def test_damaged_headers_are_400(name: str):
    from poseops.detect_api import ApiError, decode_image

    data, code = DAMAGED_HEADERS[name]
    with pytest.raises(ApiError) as refused:
        decode_image(data, 10**8)
    assert (refused.value.status, refused.value.code) == (400, code), refused.value.message


def test_damaged_files_get_an_answer_never_a_crash():
    """Random byte flips and cuts in small files of every format: each decodes or is a 400/413, nothing else."""
    from poseops.detect_api import ApiError, decode_image

    small = photo().resize((64, 48))
    files = [
        encode(small, "JPEG", exif=orientation(6)),
        encode(small.convert("CMYK"), "JPEG"),
        encode(small, "PNG", exif=orientation(3)),
        encode(Image.fromarray(np.asarray(small.convert("L")).astype(np.uint16) * 257), "PNG"),
        encode(small, "WEBP", exif=orientation(8)),
        encode(small, "TIFF"),
        encode(small.quantize(16), "GIF", save_all=True, append_images=[small.quantize(16)]),
        encode(small, "BMP"),
    ]
    rng = random.Random(0)
    answers = {"decoded": 0}
    for original in files:
        for _ in range(250):
            data = bytearray(original)
            for _ in range(rng.randint(1, 8)):
                data[rng.randrange(len(data))] = rng.randrange(256)
            if rng.random() < 0.2:
                data = data[: rng.randrange(len(data))]
            try:
                decode_image(bytes(data), 10**7)
                answers["decoded"] += 1
            except ApiError as e:
                assert e.status in (400, 413), e.message
                answers[e.code] = answers.get(e.code, 0) + 1
    assert answers["decoded"] > 0 and answers["not_an_image"] > 0 and answers["truncated_image"] > 0, answers
