"""The parts of the detection service that run without a server: model, image decoding,
request validation, OCR, API keys, configuration, the client's retries and `poseops predict`."""

from __future__ import annotations

import datetime as dt
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import PERSON_SPEC, ROOT, SHARED_DATASETS
from PIL import Image, ImageDraw, ImageFont

from poseops.skeleton import load_skeleton, parse_skeleton

IMAGES = sorted((SHARED_DATASETS / "coco8-pose" / "images").glob("*/*.jpg"))
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("poseops-home")


@pytest.fixture(scope="module")
def model(home: Path):
    from poseops.inference import PoseModel
    from poseops.weights import prepare_ultralytics

    prepare_ultralytics(home / "ultralytics")
    return PoseModel("yolo11n-pose.pt", load_skeleton(PERSON_SPEC), "onnx", cache_dir=home / "onnx")


def bgr(path: Path) -> np.ndarray:
    return cv2.imread(str(path))


# --- model ------------------------------------------------------------------------------


def test_detections_have_the_api_shape(model):
    names = load_skeleton(PERSON_SPEC).classes[0].keypoint_names
    detections = model.detect(bgr(IMAGES[0]), 0.25, 0.45)
    assert detections
    for det in detections:
        assert set(det) == {"class", "confidence", "x", "y", "width", "height", "keypoints"}
        assert det["class"] == "person" and 0.25 <= det["confidence"] <= 1
        assert [k["name"] for k in det["keypoints"]] == names
        assert all(set(k) == {"name", "x", "y", "confidence"} for k in det["keypoints"])
    confidences = [d["confidence"] for d in detections]
    assert confidences == sorted(confidences, reverse=True)


def test_box_x_y_is_the_top_left_corner(model):
    result = model._predict(bgr(IMAGES[1]), 0.25, 0.45)  # the Ultralytics result behind detect
    centres = result.boxes.xywh.numpy()
    for det, (cx, cy, w, h) in zip(model.detect(bgr(IMAGES[1])), centres, strict=True):
        assert det["x"] == pytest.approx(cx - w / 2, abs=0.02) and det["y"] == pytest.approx(cy - h / 2, abs=0.02)
        assert det["width"] == pytest.approx(w, abs=0.02) and det["height"] == pytest.approx(h, abs=0.02)


def test_thresholds_change_the_answer(model):
    image = bgr(IMAGES[4])
    loose, strict = model.detect(image, 0.1, 0.7), model.detect(image, 0.8, 0.45)
    assert len(loose) > len(strict)
    assert all(d["confidence"] >= 0.8 for d in strict)


def test_onnx_export_is_cached_and_leaves_the_weights_folder_alone(model, home: Path):
    from poseops.inference import export_onnx

    first = model.model_path
    stamp = first.stat().st_mtime_ns
    assert export_onnx(model.weights, 640, home / "onnx") == first
    assert first.stat().st_mtime_ns == stamp
    assert first.parent == (home / "onnx").resolve() and model.weights_sha256[:16] in first.name
    assert not list(model.weights.parent.glob("*.onnx")), "the export must not write beside the weights"
    assert not list((home / "onnx").glob(".export-*")), "the temporary export folder must be gone"


def test_onnx_file_is_accepted_directly(model):
    from poseops.inference import PoseModel

    direct = PoseModel(model.model_path, load_skeleton(PERSON_SPEC), "onnx")
    assert direct.model_path == model.model_path
    image = bgr(IMAGES[2])
    assert direct.detect(image) == model.detect(image)


def test_skeleton_that_does_not_fit_the_model_is_refused(model):
    from poseops.inference import ModelError, PoseModel

    spec = parse_skeleton("classes:\n  - name: hand\n    keypoints: [a, b, c]\n", source="hand.yaml")
    with pytest.raises(ModelError, match=r"predicts 17 keypoints but hand.yaml defines 3"):
        PoseModel(model.model_path, spec, "onnx")


def test_bad_weights_and_runtime_are_refused(tmp_path: Path, model):
    from poseops.inference import ModelError, PoseModel

    spec = load_skeleton(PERSON_SPEC)
    with pytest.raises(ModelError, match="not found.*POSEOPS_WEIGHTS_DIR"):
        PoseModel(tmp_path / "nope.pt", spec)
    with pytest.raises(ModelError, match="unknown runtime 'tensorrt'"):
        PoseModel(model.weights, spec, "tensorrt")
    with pytest.raises(ModelError, match="torch runtime needs a .pt"):
        PoseModel(model.model_path, spec, "torch")


def test_draw_uses_the_spec_colours(model):
    from poseops.drawing import draw_detections

    spec = load_skeleton(PERSON_SPEC)
    image = bgr(IMAGES[0])
    detections = model.detect(image)
    drawn = draw_detections(image, detections, spec)
    point = next(k for k in detections[0]["keypoints"] if k["confidence"] > 0.5)
    color = spec.classes[0].keypoints[[k.name for k in spec.classes[0].keypoints].index(point["name"])].color
    b, g, r = drawn[int(point["y"]), int(point["x"])]
    assert (r, g, b) == tuple(int(color[i : i + 2], 16) for i in (1, 3, 5))
    assert not np.array_equal(drawn, image) and np.array_equal(image, bgr(IMAGES[0]))


# --- image decoding and request fields ----------------------------------------------------


def encode(image: Image.Image, fmt: str = "JPEG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_decode_matches_opencv_and_applies_exif_orientation():
    from poseops.detect_api import decode_image

    assert np.array_equal(decode_image(IMAGES[0].read_bytes(), 10**8), bgr(IMAGES[0]))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    data = encode(Image.new("RGB", (40, 20), (200, 10, 10)), exif=exif.tobytes())
    assert decode_image(data, 10**8).shape == (40, 20, 3)
    for mode in ("L", "RGBA", "P", "I;16"):
        assert decode_image(encode(Image.new(mode, (8, 6)), "PNG"), 10**8).shape == (6, 8, 3)


@pytest.mark.parametrize(
    ("data", "max_pixels", "status", "code"),
    [
        (b"", 10**8, 400, "empty_image"),
        (b"GIF89a but not really", 10**8, 400, "not_an_image"),
        (b"%PDF-1.4 a document", 10**8, 400, "not_an_image"),
        (IMAGES[0].read_bytes()[:5000], 10**8, 400, "truncated_image"),
        (encode(Image.fromarray(np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)), "PNG")[:3000], 10**8, 400, "truncated_image"),
        (encode(Image.new("RGB", (200, 100))), 19_999, 413, "decompression_bomb"),
    ],
)
def test_decode_refusals(data: bytes, max_pixels: int, status: int, code: str):
    from poseops.detect_api import ApiError, decode_image

    with pytest.raises(ApiError) as refused:
        decode_image(data, max_pixels)
    assert (refused.value.status, refused.value.code) == (status, code), refused.value.message


@pytest.mark.parametrize(("raw", "value"), [(None, 0.25), ("", 0.25), ("0", 0.0), ("1", 1.0), (" 0.5 ", 0.5), ("1e-1", 0.1)])
def test_threshold_values(raw, value):
    from poseops.detect_api import parse_threshold

    assert parse_threshold("conf_thres", raw) == value


def test_minus_zero_threshold_is_zero_and_accepted():
    from poseops.detect_api import parse_threshold

    assert parse_threshold("iou_thres", "-0") == 0.0  # -0.0 is 0.0: in range


@pytest.mark.parametrize("raw", ["1.01", "-1", "-0.001", "nan", "inf", "-inf", "abc", "0,5"])
def test_threshold_refusals(raw):
    from poseops.detect_api import ApiError, parse_threshold

    with pytest.raises(ApiError) as refused:
        parse_threshold("iou_thres", raw)
    assert refused.value.status == 400 and refused.value.code == "invalid_iou_thres"
    assert "between 0 and 1" in refused.value.message


# --- OCR -----------------------------------------------------------------------------------


def rendered(text: str, size: int = 40) -> np.ndarray:
    image = Image.new("RGB", (40 + size * len(text) * 2 // 3, size * 3), "white")
    ImageDraw.Draw(image).text((20, size), text, fill="black", font=ImageFont.truetype(FONT, size))
    return np.asarray(image)[:, :, ::-1].copy()


def test_tesseract_is_installed():
    from poseops.ocr import installed_models, tesseract_languages

    assert "small" in installed_models(), "Tesseract is missing: run `make install-system` (packages-apt.txt)"
    assert {"eng", "deu"} <= set(tesseract_languages())


def test_ocr_small_reads_rendered_text():
    from poseops.ocr import read_text

    assert read_text(rendered("POSEOPS 2026"), "small", "eng") == "POSEOPS 2026"
    assert read_text(rendered("Größe Straße"), "small", "deu") == "Größe Straße"
    assert "HELLO" in read_text(rendered("HELLO", size=14), "small", "eng")  # small crops are upscaled first
    assert read_text(np.zeros((0, 0, 3), np.uint8)) == ""


def test_ocr_refusals_name_what_is_installed():
    from poseops.ocr import OcrError, check_request

    with pytest.raises(OcrError) as refused:
        check_request("xl", "eng")
    assert refused.value.code == "unknown_ocr_model"
    with pytest.raises(OcrError, match="installed: deu, eng"):
        check_request("small", "eng+fra")
    with pytest.raises(OcrError):
        check_request("small", "../../etc/passwd")
    check_request("small", "eng+deu")


# --- API keys --------------------------------------------------------------------------------


def test_keys_are_stored_hashed_and_counted(tmp_path: Path):
    from poseops.apikeys import KeyRefused, KeyStore, add_key, hash_key

    keys_file = tmp_path / "keys.yaml"
    alice, bob = add_key(keys_file, "alice", 2), add_key(keys_file, "bob", None)
    text = keys_file.read_text()
    assert alice not in text and bob not in text and hash_key(alice) in text
    assert oct(keys_file.stat().st_mode & 0o777) == "0o600"

    may = dt.datetime(2026, 5, 31, 23, 0, tzinfo=dt.UTC)
    store = KeyStore(keys_file)
    assert store.admit(alice, may).name == "alice"
    assert KeyStore(keys_file).admit(alice, may).name == "alice"  # a new store (a restart) sees the same counts
    with pytest.raises(KeyRefused) as spent:
        KeyStore(keys_file).admit(alice, may)
    assert spent.value.status == 403 and spent.value.code == "quota_exceeded" and "2026-05" in spent.value.message
    assert store.used("alice", may) == 2
    assert store.admit(alice, dt.datetime(2026, 6, 1, tzinfo=dt.UTC)).name == "alice"  # a new month
    for _ in range(5):
        store.admit(bob, may)  # no quota
    for presented, code in ((None, "missing_api_key"), ("", "missing_api_key"), ("po_wrong", "unknown_api_key")):
        with pytest.raises(KeyRefused) as refused:
            store.admit(presented, may)
        assert (refused.value.status, refused.value.code) == (401, code)
    with pytest.raises(ValueError, match="exists already"):
        add_key(keys_file, "alice", 1)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("keys: [{name: a, sha256: abc}]", "64 hex digits"),
        ("keys: [{name: a, sha256: " + "a" * 64 + ", monthly_quota: -1}]", "whole number"),
        ("keys: [{name: a, sha256: " + "a" * 64 + ", key: secret}]", "mapping of name, sha256"),
        ("keys: [{name: a, sha256: " + "a" * 64 + "}, {name: a, sha256: " + "b" * 64 + "}]", "listed twice"),
        ("- just a list", "'keys' list"),
    ],
)
def test_bad_keys_files_are_refused(tmp_path: Path, text: str, message: str):
    from poseops.apikeys import load_keys

    path = tmp_path / "keys.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_keys(path)


# --- configuration ---------------------------------------------------------------------------


def test_service_config_round_trips_through_the_environment(tmp_path: Path):
    from poseops.detector import ServiceConfig

    config = ServiceConfig(weights="/w/best.pt", skeleton=PERSON_SPEC, runtime="torch", imgsz=320, api_keys=tmp_path / "k.yaml")
    assert ServiceConfig.from_env(config.to_env()) == config
    assert ServiceConfig.from_env({}) == ServiceConfig()
    with pytest.raises(ValueError, match="POSEOPS_RUNTIME='tflite'"):
        ServiceConfig.from_env({"POSEOPS_RUNTIME": "tflite"})
    with pytest.raises(ValueError, match="POSEOPS_IMGSZ"):
        ServiceConfig.from_env({"POSEOPS_IMGSZ": "big"})


def test_lineage_file(tmp_path: Path):
    from poseops.detector import LINEAGE_KEYS, load_lineage

    assert load_lineage(None) == dict.fromkeys(LINEAGE_KEYS)
    path = tmp_path / "lineage.json"
    path.write_text(json.dumps({"model_version": "7", "mlflow_run_id": "abc", "git_commit": "1234"}))
    lineage = load_lineage(path)
    assert lineage["model_version"] == "7" and lineage["git_commit"] == "1234" and lineage["dataset_dvc_hash"] is None
    path.write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_lineage(path)
    with pytest.raises(ValueError, match="not found"):
        load_lineage(tmp_path / "missing.json")


def test_detector_refuses_a_bad_configuration_before_loading(tmp_path: Path):
    from poseops.detector import Detector, ServiceConfig
    from poseops.inference import ModelError
    from poseops.skeleton import SkeletonError

    with pytest.raises(ModelError, match="weights 'missing.pt' not found"):
        Detector(ServiceConfig(weights="missing.pt", skeleton=PERSON_SPEC))
    with pytest.raises(SkeletonError, match="no such skeleton spec"):
        Detector(ServiceConfig(skeleton=tmp_path / "none.yaml"))


# --- client retries (against a small local HTTP server) ---------------------------------------


class _Flaky(http.server.BaseHTTPRequestHandler):
    answers: list[tuple[int, dict | list]] = []
    seen = 0

    def do_POST(self):  # noqa: N802 - the http.server API
        type(self).seen += 1
        self.rfile.read(int(self.headers["Content-Length"]))
        status, body = self.answers.pop(0)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Flaky.seen = 0
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_client_retries_5xx_but_not_4xx(flaky_server: str):
    from poseops.client import DetectClient, DetectError

    busy = {"error": "model_not_ready", "message": "still loading"}
    _Flaky.answers = [(503, busy), (500, {"error": "internal_error", "message": "boom"}), (200, [{"class": "person"}])]
    with DetectClient(flaky_server, retries=3, backoff_s=0.01) as client:
        assert client.detect(b"img") == [{"class": "person"}]
        assert _Flaky.seen == 3
        _Flaky.answers = [(400, {"error": "invalid_conf_thres", "message": "conf_thres '2' is out of range"})]
        with pytest.raises(DetectError) as refused:
            client.detect(b"img", conf_thres=2)
        assert _Flaky.seen == 4  # no retry
        assert (refused.value.status, refused.value.error) == (400, "invalid_conf_thres")
        _Flaky.answers = [(503, busy)] * 3
        with pytest.raises(DetectError) as gave_up:
            DetectClient(flaky_server, retries=2, backoff_s=0.01).detect(b"img")
        assert gave_up.value.status == 503 and gave_up.value.message == "still loading" and _Flaky.seen == 7


# --- poseops predict ---------------------------------------------------------------------------


def test_predict_cli_over_images_folder_and_video(tmp_path: Path, home: Path, model):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (640, 480))
    for path in IMAGES[:3]:
        writer.write(cv2.resize(bgr(path), (640, 480)))
    writer.release()
    out, annotated = tmp_path / "out" / "predictions.jsonl", tmp_path / "annotated"
    env = {**os.environ, "POSEOPS_HOME": str(home)}
    done = subprocess.run(
        [sys.executable, "-m", "poseops.cli_predict", "predict", str(IMAGES[0].parent), str(IMAGES[0]), str(video),
         "--out", str(out), "--save-dir", str(annotated), "--weights", "yolo11n-pose.pt", "--runtime", "onnx",
         "--skeleton", str(PERSON_SPEC)],  # the runtime of the model it is compared with
        capture_output=True, text=True, env=env, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    folder = sorted(IMAGES[0].parent.glob("*.jpg"))
    assert [line["source"] for line in lines] == [str(p) for p in folder] + [str(IMAGES[0])] + [str(video)] * 3
    assert [line.get("frame") for line in lines[-3:]] == [0, 1, 2]
    assert lines[0]["detections"] == model.detect(bgr(folder[0]))
    assert (lines[0]["width"], lines[0]["height"]) == (bgr(folder[0]).shape[1], bgr(folder[0]).shape[0])
    assert all(line["detections"] for line in lines[:-3]) and any(line["detections"] for line in lines[-3:])
    assert sorted(p.name for p in annotated.iterdir()) == sorted([p.name for p in folder] + ["clip.annotated.mp4"])
    assert "predict" in done.stderr  # the progress bar


def test_predict_cli_refuses_other_files(tmp_path: Path):
    notes = tmp_path / "notes.txt"
    notes.write_text("hi")
    done = subprocess.run([sys.executable, "-m", "poseops.cli_predict", "predict", str(notes), "--out", str(tmp_path / "o.jsonl")],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode != 0 and "not an image or video" in done.stderr
