"""A pixel budget before decoding: every format's declared size is checked from its header, nothing
is decoded past the limit (settable), a strip with an absurd side is refused, and under concurrency
the pixels decoded at once stay within the budget: memory is bounded by it, not by the number of
requests (a peak-RSS measure on tiny files that claim big sizes).
"""

from __future__ import annotations

import io
import os
import struct
import subprocess
import sys
import textwrap
import zlib

import pytest
from PIL import Image

from poseops.datasets import read_image
from poseops.detect_api import ApiError, decode_image
from poseops.imageio import DECODE_MEMORY_ENV, MAX_SIDE, PixelBudget, TooManyPixels, open_image


def encoded(fmt: str, size: tuple[int, int] = (300, 200), **kwargs) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, (120, 30, 200)).save(out, fmt, **kwargs)
    return out.getvalue()


def jpeg_claiming(width: int, height: int) -> bytes:
    """A few hundred bytes of JPEG whose frame header claims width x height (the data is a 16 x 16 picture)."""
    data = bytearray(encoded("JPEG", (16, 16)))
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def png_header(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF"])
def test_every_format_is_refused_over_the_budget_before_a_pixel_is_decoded(fmt, monkeypatch):
    data = encoded(fmt, save_all=True) if fmt in ("GIF", "WEBP", "TIFF") else encoded(fmt)

    def no_decoding(self):
        raise AssertionError("decoded an image over the budget")

    monkeypatch.setattr(Image.Image, "load", no_decoding)
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", no_decoding)
    with pytest.raises(TooManyPixels, match="300 x 200 = 60,000 pixels"):
        open_image(io.BytesIO(data), max_pixels=59_999)
    with pytest.raises(ApiError) as refused:
        decode_image(data, 59_999)
    assert (refused.value.status, refused.value.code) == (413, "decompression_bomb")


def test_each_frame_that_decodes_is_within_the_budget():
    frames = [Image.new("RGB", (300, 200), c) for c in ((255, 0, 0), (0, 255, 0))]
    out = io.BytesIO()
    frames[0].save(out, "GIF", save_all=True, append_images=frames[1:])
    assert decode_image(out.getvalue(), 60_000).shape == (200, 300, 3)  # the first frame, as shown
    with pytest.raises(ApiError, match="decompression_bomb|declares"):
        decode_image(out.getvalue(), 59_999)


def test_tiny_files_claiming_big_sizes_are_refused_by_their_header():
    with pytest.raises(ApiError, match="7999 x 7999 = 63,984,001 pixels") as refused:
        decode_image(jpeg_claiming(7999, 7999), 40_000_000)
    assert refused.value.status == 413
    with pytest.raises(ApiError, match=f"{MAX_SIDE:,} pixels a side"):
        decode_image(png_header(1, 64_000_000), 64_000_000)  # a one-pixel strip: fine by count, absurd by side


def test_the_budget_is_a_setting_and_uploads_obey_it_too(tmp_path, monkeypatch):
    photo = tmp_path / "photo.png"
    photo.write_bytes(encoded("PNG"))
    assert (read_image(photo).width, read_image(photo).height) == (300, 200)
    monkeypatch.setenv("POSEOPS_MAX_PIXELS", "50000")
    with pytest.raises(ValueError, match="over the limit of 50,000 pixels"):
        read_image(photo)
    monkeypatch.setenv("POSEOPS_MAX_PIXELS", "lots")
    with pytest.raises(ValueError, match="POSEOPS_MAX_PIXELS='lots'"):
        read_image(photo)


def test_the_budget_lets_threads_hold_at_most_its_total():
    import threading
    import time

    budget = PixelBudget(100)
    peak = 0
    lock = threading.Lock()

    def use(pixels: int) -> None:
        nonlocal peak
        with budget.hold(pixels):
            with lock:
                peak = max(peak, budget.used)
            time.sleep(0.02)

    threads = [threading.Thread(target=use, args=(n,)) for n in (60, 60, 30, 30, 150, 10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak <= 100 and budget.used == 0


MEMORY_PROBE = textwrap.dedent("""
    import io, json, sys, threading
    from pathlib import Path
    from PIL import Image
    from poseops.detect_api import decoded_within
    from poseops.imageio import PixelBudget

    data, side, clients = bytes.fromhex(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    small = io.BytesIO()
    Image.new("RGB", (64, 64)).save(small, "JPEG")
    budget = PixelBudget(side * side)
    with decoded_within(budget, small.getvalue(), side * side):  # imports and first use, before the baseline
        pass
    status = Path("/proc/self/status")
    field = lambda name: int(next(l for l in status.read_text().splitlines() if l.startswith(name)).split()[1]) * 1024
    Path("/proc/self/clear_refs").write_text("5")  # the peak (VmHWM) starts again from the current size
    base = field("VmRSS:")
    start = threading.Barrier(clients)

    def client():
        start.wait()
        with decoded_within(budget, data, side * side) as image:
            image.sum()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads: t.start()
    for t in threads: t.join()
    print(json.dumps(field("VmHWM:") - base))
""")


def peak_growth(data: bytes, side: int, clients: int) -> int:
    """Peak RSS growth of a fresh process in which `clients` threads decode `data` at once through the budget."""
    done = subprocess.run([sys.executable, "-c", MEMORY_PROBE, data.hex(), str(side), str(clients)],
                          env={**os.environ, **DECODE_MEMORY_ENV},  # as the service runs
                          capture_output=True, text=True, timeout=300, check=True)
    return int(done.stdout.strip().splitlines()[-1])


def test_concurrent_decodes_stay_within_the_memory_of_one_budget():
    side, clients = 3000, 8  # a 600-byte JPEG claiming 3000 x 3000 (9 megapixels), sent by 8 clients at once
    data = jpeg_claiming(side, side)
    assert len(data) < 1000
    one, many = peak_growth(data, side, 1), peak_growth(data, side, clients)
    assert one > 50 * 2**20, one  # a decode of that claim does cost memory: the bound below means something
    assert many < 1.6 * one, (f"{clients} concurrent decodes took {many / 2**20:.0f} MiB against {one / 2**20:.0f} MiB "
                              "for one: the pixel budget does not bound them")


def test_the_opencv_paths_check_the_budget_first(tmp_path, monkeypatch):
    from poseops.cli_predict import read_image
    from poseops.imageio import check_within_budget

    claim = tmp_path / "claim.jpg"
    claim.write_bytes(jpeg_claiming(7999, 7999))
    monkeypatch.setenv("POSEOPS_MAX_PIXELS", "40000000")
    with pytest.raises(TooManyPixels, match=f"{claim}: the image declares 7999 x 7999"):
        read_image(claim)  # what `poseops predict` decodes
    with pytest.raises(TooManyPixels, match="^the image declares 7999 x 7999"):
        check_within_budget(claim.read_bytes())  # what autolabel decodes, before cv2.imdecode
    check_within_budget(b"not an image PIL knows")  # left to OpenCV, which reports it
