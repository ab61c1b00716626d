"""The detection service, end to end: a real `bentoml serve` (started by `poseops serve`) on 127.0.0.1.

Detections are compared with Ultralytics' own predict on the same model file, the
same thresholds and imgsz; every error answer is checked for its status, code and
message, and the server is checked to still answer after each.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import zlib

import httpx
import numpy as np
import pytest
from conftest import PERSON_SPEC, ROOT, free_port
from PIL import Image, ImageDraw, ImageFont
from service_server import IMAGES, RunningService, start, stop, wait_ready

from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration

THRESHOLDS = [(0.25, 0.45), (0.1, 0.7), (0.5, 0.3)]
BOLD_FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def post(service: RunningService, image: bytes | None, key: str | None = "main", **fields: str) -> httpx.Response:
    files = {"image": ("image.jpg", image, "image/jpeg")} if image is not None else None
    headers = service.headers(key) if key else {}
    return httpx.post(service.url + "/detect", files=files, data=fields, headers=headers, timeout=120)


def jpeg(size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (128, 128, 128)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG")
    return buf.getvalue()


def assert_error(response: httpx.Response, status: int, code: str, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message"}, body
    assert body["error"] == code, body
    assert len(body["message"]) > 20, body
    for word in words:
        assert word in body["message"], body
    return body


def assert_still_serving(service: RunningService) -> None:
    assert httpx.get(service.url + "/healthz", timeout=10).status_code == 200
    r = post(service, IMAGES[0].read_bytes())
    assert r.status_code == 200, r.text
    assert isinstance(r.json(), list) and r.json()


@pytest.fixture(scope="module")
def ultralytics_yolo(detect_service: RunningService, tmp_path_factory):
    """Ultralytics' own YOLO on the ONNX export of the weights the service runs on OpenVINO (in f32: the same answers)."""
    from poseops.inference import export_onnx
    from poseops.weights import prepare_ultralytics, resolve_weights

    prepare_ultralytics(tmp_path_factory.mktemp("ultralytics"))
    from ultralytics import YOLO

    served = list((detect_service.home / "openvino").glob("*_openvino_model"))
    assert len(served) == 1, served  # the service exported the .pt to OpenVINO, its runtime on a CPU
    exported = export_onnx(resolve_weights("yolo11n-pose.pt"), 640, tmp_path_factory.mktemp("onnx"))
    return YOLO(str(exported), task="pose")


def assert_same_detections(served: list[dict], result, names: list[str]) -> None:
    boxes = result.boxes.xyxy.numpy()
    confs = result.boxes.conf.numpy()
    kpts = result.keypoints.data.numpy()
    assert len(served) == len(boxes), (len(served), len(boxes))
    for det, box, conf, points in zip(served, boxes, confs, kpts, strict=True):
        assert det["class"] == "person"
        assert abs(det["confidence"] - conf) < 1e-3
        x1, y1, x2, y2 = box
        assert abs(det["x"] - x1) <= 1 and abs(det["y"] - y1) <= 1, (det, box)
        assert abs(det["x"] + det["width"] - x2) <= 1 and abs(det["y"] + det["height"] - y2) <= 1, (det, box)
        assert [k["name"] for k in det["keypoints"]] == names
        for kp, (kx, ky, kc) in zip(det["keypoints"], points, strict=True):
            assert abs(kp["x"] - kx) <= 1 and abs(kp["y"] - ky) <= 1, (kp, kx, ky)
            assert abs(kp["confidence"] - kc) < 1e-3


# --- readiness, detections, metadata --------------------------------------------------


def test_ready_only_once_the_model_is_loaded(detect_service: RunningService):
    # the start-up poll saw /readyz answer 503 while the model was exported and loaded, then 200
    assert 503 in detect_service.readyz_seen and detect_service.readyz_seen[-1] == 200, detect_service.readyz_seen
    assert detect_service.readyz_seen.index(503) < detect_service.readyz_seen.index(200)
    assert detect_service.detect_while_loading is not None
    status, body = detect_service.detect_while_loading
    assert status == 503 and body["error"] == "model_not_ready", body
    assert httpx.get(detect_service.url + "/healthz").status_code == 200
    assert httpx.get(detect_service.url + "/readyz").status_code == 200


@pytest.mark.parametrize(("conf", "iou"), THRESHOLDS)
def test_detections_match_ultralytics_predict(detect_service: RunningService, ultralytics_yolo, conf: float, iou: float):
    names = load_skeleton(PERSON_SPEC).classes[0].keypoint_names
    found = 0
    for path in IMAGES:
        r = post(detect_service, path.read_bytes(), conf_thres=str(conf), iou_thres=str(iou))
        assert r.status_code == 200, r.text
        expected = ultralytics_yolo.predict(str(path), conf=conf, iou=iou, imgsz=640, verbose=False)[0]
        assert_same_detections(r.json(), expected, names)
        found += len(r.json())
    assert found >= len(IMAGES)  # every coco8-pose image shows at least one person


def test_defaults_are_conf_025_iou_045(detect_service: RunningService):
    image = IMAGES[4].read_bytes()
    assert post(detect_service, image).json() == post(detect_service, image, conf_thres="0.25", iou_thres="0.45").json()


def test_nothing_found_is_an_empty_list(detect_service: RunningService):
    r = post(detect_service, jpeg((320, 240)))
    assert r.status_code == 200 and r.json() == []


def test_png_with_alpha_and_grayscale_images(detect_service: RunningService):
    person = Image.open(IMAGES[0])
    for mode, fmt in (("RGBA", "PNG"), ("L", "PNG"), ("RGB", "WEBP")):
        buf = io.BytesIO()
        person.convert(mode).save(buf, fmt)
        r = post(detect_service, buf.getvalue())
        assert r.status_code == 200, (mode, fmt, r.text)
        assert r.json(), (mode, fmt)


def test_image_just_under_25_mb_is_accepted(detect_service: RunningService):
    noise = np.random.default_rng(0).integers(0, 256, (2850, 2850, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(noise).save(buf, "PNG", compress_level=1)
    assert 20 * 2**20 < len(buf.getvalue()) < 25 * 2**20, len(buf.getvalue())
    r = post(detect_service, buf.getvalue())
    assert r.status_code == 200, r.text


def test_metadata_tells_the_lineage_and_skeleton(detect_service: RunningService):
    meta = httpx.get(detect_service.url + "/metadata").json()
    assert meta["ready"] is True
    assert meta["lineage"] == detect_service.lineage
    assert meta["model"]["name"] == "person-pose" and meta["model"]["version"] == "3"
    assert meta["model"]["runtime"] == "openvino" and meta["model"]["precision"] == "fp32" and meta["model"]["imgsz"] == 640
    assert meta["model"]["openvino"]["inference_precision_hint"] == "f32"  # never bfloat16
    assert meta["model"]["weights_sha256"].startswith("869e83fc")
    assert meta["skeleton"] == load_skeleton(PERSON_SPEC).to_dict()
    assert meta["api"]["auth_required"] is True
    assert "top-left" in meta["api"]["box"]
    assert httpx.get(detect_service.url + "/skeleton").json() == meta["skeleton"]


def test_playground_and_docs_pages(detect_service: RunningService):
    for path in ("/", "/playground"):
        r = httpx.get(detect_service.url + path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
        assert "poseops playground" in r.text and "https://" not in r.text  # no CDN
    docs = httpx.get(detect_service.url + "/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower() and "cdn" not in docs.text
    assert httpx.get(detect_service.url + "/static_content/swagger-ui-bundle.js").status_code == 200
    spec = httpx.get(detect_service.url + "/docs.json").json()
    form = spec["paths"]["/detect"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert set(form["properties"]) == {"image", "conf_thres", "iou_thres", "ocr_model", "ocr_classes", "ocr_language"}
    assert {"/metadata", "/healthz", "/readyz"} <= set(spec["paths"])


# --- OCR ------------------------------------------------------------------------------


CARD = (40, 330, 230, 380)  # left, top, right, bottom of the card drawn across the person in 000000000110.jpg


def person_holding(word: str) -> bytes:
    """000000000110.jpg (a person at the left, x 0-253, y 128-416) with `word` on a white card across the person."""
    image = Image.open(IMAGES[4]).convert("RGB")
    draw = ImageDraw.Draw(image)
    draw.rectangle(CARD, fill="white")
    draw.text((50, 335), word, fill="black", font=ImageFont.truetype(BOLD_FONT, 36))
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def read_on_the_card(detections: list[dict]) -> list[str]:
    """The texts read in the detections whose box holds the whole card."""
    left, top, right, bottom = CARD
    return [d["text"] for d in detections if d["x"] <= left and d["x"] + d["width"] >= right and d["y"] <= top and d["y"] + d["height"] >= bottom]


def test_ocr_small_reads_text_in_person_crops(detect_service: RunningService):
    image = person_holding("HELLO")
    r = post(detect_service, image, ocr_model="small", ocr_classes="person", ocr_language="eng")
    assert r.status_code == 200, r.text
    detections = r.json()
    assert detections and all("text" in d for d in detections)
    assert any("HELLO" in text for text in read_on_the_card(detections)), detections
    plain = post(detect_service, image)
    assert all("text" not in d for d in plain.json())


def test_ocr_reads_at_most_16_crops_a_request(detect_service: RunningService):
    """conf_thres=0 gives hundreds of detections: OCR reads the 16 most confident, the rest get null."""
    r = post(detect_service, IMAGES[4].read_bytes(), conf_thres="0", ocr_model="small", ocr_classes="person")
    assert r.status_code == 200, r.text
    detections = r.json()
    assert len(detections) > 16
    read = [d for d in detections if d["text"] is not None]
    assert len(read) == 16
    assert min(d["confidence"] for d in read) >= max(d["confidence"] for d in detections if d["text"] is None)
    assert httpx.get(detect_service.url + "/metadata").json()["api"]["max_ocr_crops"] == 16


@pytest.mark.parametrize(("model", "word", "language"), [("medium", "HELLO", "eng"), ("large", "Straße", "deu")])
def test_ocr_medium_and_large_read_text_in_person_crops(detect_service: RunningService, model: str, word: str, language: str):
    r = post(detect_service, person_holding(word), ocr_model=model, ocr_classes="person", ocr_language=language)
    assert r.status_code == 200, r.text
    detections = r.json()
    assert detections and all("text" in d for d in detections)
    assert any(word in text for text in read_on_the_card(detections)), detections
    described = httpx.get(detect_service.url + "/metadata").json()["api"]["ocr_models"]
    assert set(described) == {"small", "medium", "large"} and "PP-OCR" in described[model], described


def test_ocr_language_a_model_does_not_read_is_400(detect_service: RunningService):
    r = post(detect_service, IMAGES[0].read_bytes(), ocr_model="medium", ocr_classes="person", ocr_language="deu")
    assert_error(r, 400, "unknown_ocr_language", "'deu'", "medium OCR model", "chi_sim, eng")
    assert_still_serving(detect_service)


def test_unknown_ocr_model_is_400(detect_service: RunningService):
    assert_error(post(detect_service, IMAGES[0].read_bytes(), ocr_model="huge"), 400, "unknown_ocr_model", "small, medium, large")
    assert_still_serving(detect_service)


def test_unknown_ocr_language_is_400(detect_service: RunningService):
    r = post(detect_service, IMAGES[0].read_bytes(), ocr_model="small", ocr_language="klingon")
    assert_error(r, 400, "unknown_ocr_language", "eng", "deu")
    assert post(detect_service, jpeg(), ocr_model="small", ocr_language="eng+deu").status_code == 200
    assert_still_serving(detect_service)


def test_unknown_ocr_class_is_400(detect_service: RunningService):
    assert_error(post(detect_service, IMAGES[0].read_bytes(), ocr_classes="licence_plate"), 400, "unknown_ocr_class", "person")
    assert_still_serving(detect_service)


# --- bad requests ---------------------------------------------------------------------


def test_missing_image_is_400(detect_service: RunningService):
    assert_error(post(detect_service, None, conf_thres="0.3"), 400, "missing_image", "image")
    assert_still_serving(detect_service)


def test_image_sent_as_text_is_400(detect_service: RunningService):
    r = httpx.post(detect_service.url + "/detect", files={"image": (None, "photo.jpg")}, headers=detect_service.headers())
    assert_error(r, 400, "missing_image", "not a file")
    assert_still_serving(detect_service)


def test_two_images_are_400(detect_service: RunningService):
    files = [("image", ("a.jpg", jpeg(), "image/jpeg")), ("image", ("b.jpg", jpeg(), "image/jpeg"))]
    r = httpx.post(detect_service.url + "/detect", files=files, headers=detect_service.headers())
    assert_error(r, 400, "repeated_field", "one image per request")
    assert_still_serving(detect_service)


def test_empty_image_is_400(detect_service: RunningService):
    assert_error(post(detect_service, b""), 400, "empty_image")
    assert_still_serving(detect_service)


def test_not_an_image_is_400(detect_service: RunningService):
    assert_error(post(detect_service, b"this is a text file, not a picture\n" * 20), 400, "not_an_image", "JPEG")
    assert_still_serving(detect_service)


def test_truncated_image_is_400(detect_service: RunningService):
    data = IMAGES[0].read_bytes()
    assert_error(post(detect_service, data[: len(data) // 3]), 400, "truncated_image", "complete file")
    assert_still_serving(detect_service)


def bomb_png(side: int) -> bytes:
    """A real 1-bit PNG of side x side black pixels: ~side²/8 bytes raw, a few KB compressed."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" * (1 + (side + 7) // 8)
    packer = zlib.compressobj(9)
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def test_decompression_bomb_is_413(detect_service: RunningService):
    small_file = bomb_png(9000)  # 81 megapixels
    assert len(small_file) < 200_000
    assert_error(post(detect_service, small_file), 413, "decompression_bomb", "9000 x 9000 = 81,000,000 pixels")
    huge = bomb_png(30000)  # 900 megapixels: beyond PIL's own limit too
    assert_error(post(detect_service, huge), 413, "decompression_bomb")
    assert_still_serving(detect_service)


def test_image_over_25_mb_is_413_before_the_body_is_read(detect_service: RunningService):
    big = os.urandom(26 * 2**20)
    r = post(detect_service, big)  # Content-Length says it all: refused without reading the body
    assert_error(r, 413, "image_too_large", "25 MB")

    def chunks():  # no Content-Length: the stream is cut off once it passes the limit
        yield b'--b0undary\r\nContent-Disposition: form-data; name="image"; filename="a.jpg"\r\n\r\n'
        for offset in range(0, len(big), 2**20):
            yield big[offset : offset + 2**20]
        yield b"\r\n--b0undary--\r\n"

    r = httpx.post(
        detect_service.url + "/detect",
        content=chunks(),
        headers={**detect_service.headers(), "content-type": "multipart/form-data; boundary=b0undary"},
        timeout=60,
    )
    assert_error(r, 413, "image_too_large")
    assert_still_serving(detect_service)


@pytest.mark.parametrize("field", ["conf_thres", "iou_thres"])
@pytest.mark.parametrize(("value", "why"), [("1.5", "out of range"), ("-0.1", "out of range"), ("abc", "not a number"), ("nan", "out of range"), ("inf", "out of range")])
def test_bad_threshold_is_400(detect_service: RunningService, field: str, value: str, why: str):
    assert_error(post(detect_service, IMAGES[0].read_bytes(), **{field: value}), 400, f"invalid_{field}", field, why)
    assert httpx.get(detect_service.url + "/healthz").status_code == 200


def test_threshold_edges_are_accepted(detect_service: RunningService):
    for conf, iou in (("0", "1"), ("1", "0"), ("0.0", "1.0")):
        assert post(detect_service, jpeg(), conf_thres=conf, iou_thres=iou).status_code == 200
    assert_still_serving(detect_service)


def test_unknown_field_is_400(detect_service: RunningService):
    assert_error(post(detect_service, IMAGES[0].read_bytes(), conf="0.3"), 400, "unknown_field", "conf_thres")
    assert_still_serving(detect_service)


def test_not_multipart_is_400(detect_service: RunningService):
    r = httpx.post(detect_service.url + "/detect", json={"image": "x"}, headers=detect_service.headers())
    assert_error(r, 400, "not_multipart", "multipart/form-data")
    r = httpx.post(detect_service.url + "/detect", content=b"--x\r\ngarbage", headers={**detect_service.headers(), "content-type": "multipart/form-data"})
    assert_error(r, 400, "bad_multipart", "boundary")
    assert_still_serving(detect_service)


# --- API keys ---------------------------------------------------------------------------


def test_missing_api_key_is_401(detect_service: RunningService):
    assert_error(post(detect_service, IMAGES[0].read_bytes(), key=None), 401, "missing_api_key", "Authorization: Bearer")
    assert_still_serving(detect_service)


def test_unknown_api_key_is_401(detect_service: RunningService):
    r = httpx.post(detect_service.url + "/detect", files={"image": IMAGES[0].read_bytes()}, headers={"X-API-Key": "po_not-a-key"})
    body = assert_error(r, 401, "unknown_api_key")
    assert "po_not-a-key" not in body["message"]
    r = httpx.post(detect_service.url + "/detect", files={"image": jpeg()}, headers={"X-API-Key": detect_service.keys["main"]})
    assert r.status_code == 200  # the X-API-Key header works as well as Authorization: Bearer
    assert_still_serving(detect_service)


def test_keys_file_holds_only_hashes(detect_service: RunningService):
    text = detect_service.keys_file.read_text()
    assert all(key not in text for key in detect_service.keys.values())


def test_quota_spent_is_403(detect_service: RunningService):
    for _ in range(2):
        assert post(detect_service, jpeg(), key="limited").status_code == 200
    assert_error(post(detect_service, jpeg(), key="limited"), 403, "quota_exceeded", "'limited'", "2 requests")
    assert_still_serving(detect_service)


def test_unexpected_failure_is_500_json(detect_service: RunningService):
    """The usage database turning into a folder (a broken disk, say) fails requests with 500, not the server."""
    usage = detect_service.keys_file.with_name("api-keys.usage.db")
    aside = usage.with_suffix(".aside")
    usage.rename(aside)
    usage.mkdir()
    try:
        assert_error(post(detect_service, jpeg()), 500, "internal_error", "logged")
        assert httpx.get(detect_service.url + "/healthz").status_code == 200
    finally:
        usage.rmdir()
        aside.rename(usage)
    assert_still_serving(detect_service)


# --- client and CLI -------------------------------------------------------------------


def test_client_falls_back_and_surfaces_server_errors(detect_service: RunningService):
    from poseops.client import DetectClient, DetectError

    dead = f"http://127.0.0.1:{free_port()}"
    with DetectClient(dead, fallback_url=detect_service.url, api_key=detect_service.keys["main"], retries=2, backoff_s=0.05) as client:
        detections = client.detect(IMAGES[0], conf_thres=0.3)
        assert detections == post(detect_service, IMAGES[0].read_bytes(), conf_thres="0.3").json()
        with pytest.raises(DetectError) as refused:
            client.detect(b"not an image")
    assert refused.value.status == 400 and refused.value.error == "not_an_image" and "JPEG" in refused.value.message
    with DetectClient(dead, retries=1, backoff_s=0.01) as client, pytest.raises(DetectError) as unreachable:
        client.detect(IMAGES[0])
    assert unreachable.value.status is None and unreachable.value.error == "connection_failed"


def test_cli_detect_prints_json(detect_service: RunningService):
    env = {**os.environ, "POSEOPS_API_KEY": detect_service.keys["main"]}
    done = subprocess.run(
        [sys.executable, "-m", "poseops.cli_serve", "detect", str(IMAGES[1]), "--url", detect_service.url, "--conf-thres", "0.3"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == post(detect_service, IMAGES[1].read_bytes(), conf_thres="0.3").json()
    env.pop("POSEOPS_API_KEY")
    done = subprocess.run(
        [sys.executable, "-m", "poseops.cli_serve", "detect", str(IMAGES[1]), "--url", detect_service.url],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 1 and "missing_api_key" in done.stderr and "Traceback" not in done.stderr


# --- a second server: plain `bentoml serve`, torch runtime, same keys ---------------------


def test_restart_torch_runtime_keeps_counts(detect_service: RunningService, tmp_path):
    """`bentoml serve` itself with the env configuration: the torch runtime matches Ultralytics' .pt predict,
    and the monthly counts of the first server carry over (same keys file and usage database)."""
    assert post(detect_service, jpeg(), key="persist").status_code == 200  # its quota is 1: now spent
    port = free_port()
    service = RunningService(f"http://127.0.0.1:{port}", detect_service.home, detect_service.keys_file,
                             detect_service.keys, {}, tmp_path / "torch.log")  # fmt: skip
    env = {
        **os.environ,
        "POSEOPS_HOME": str(detect_service.home),
        "POSEOPS_WEIGHTS": "yolo11n-pose.pt",
        "POSEOPS_SKELETON": str(PERSON_SPEC),
        "POSEOPS_RUNTIME": "torch",
        "POSEOPS_API_KEYS": str(detect_service.keys_file),
    }
    command = [sys.executable, "-m", "bentoml", "serve", "service:PoseDetector",
               "--working-dir", str(ROOT / "bentos"), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    process = start(command, env, service.log)
    try:
        wait_ready(service, process)
        assert_error(post(service, jpeg(), key="persist"), 403, "quota_exceeded")
        assert httpx.get(service.url + "/metadata").json()["model"]["runtime"] == "torch"

        from poseops.weights import prepare_ultralytics, resolve_weights

        prepare_ultralytics(tmp_path / "ultralytics")
        from ultralytics import YOLO

        yolo = YOLO(resolve_weights("yolo11n-pose.pt"))
        names = load_skeleton(PERSON_SPEC).classes[0].keypoint_names
        for path in IMAGES:
            r = post(service, path.read_bytes(), conf_thres="0.25", iou_thres="0.45")
            assert r.status_code == 200, r.text
            assert_same_detections(r.json(), yolo.predict(str(path), conf=0.25, iou=0.45, imgsz=640, verbose=False)[0], names)
    finally:
        stop(process)
