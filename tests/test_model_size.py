"""A model runs at the size it was trained or exported at, unless told otherwise (offline, small).

A checkpoint trained at 320 and served at 640 gives other detections than the training's
own validation saw; the size travels with the model (a `.pt`'s train args, an `.onnx`'s
metadata and input shape) into predict, the service and /metadata.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import pytest
import torch
from conftest import PERSON_SPEC, SHARED

from poseops.inference import PoseModel, model_imgsz
from poseops.skeleton import load_skeleton

IMAGES = sorted((SHARED / "datasets" / "coco8-pose" / "images").glob("*/*.jpg"))


@pytest.fixture(scope="module")
def trained_at_320(tmp_path_factory) -> Path:
    """The shared checkpoint, its train args saying it was trained at 320 (as a 320 training writes them)."""
    folder = tmp_path_factory.mktemp("weights")
    ckpt = torch.load(SHARED / "weights" / "yolo11n-pose.pt", map_location="cpu", weights_only=False)
    ckpt["train_args"] = {**ckpt["train_args"], "imgsz": 320}
    torch.save(ckpt, folder / "pose-320.pt")
    return folder / "pose-320.pt"


def test_a_checkpoint_trained_at_320_runs_at_320_in_both_runtimes(trained_at_320, tmp_path):
    from ultralytics import YOLO

    skeleton = load_skeleton(PERSON_SPEC)
    assert model_imgsz(SHARED / "weights" / "yolo11n-pose.pt") == 640 and model_imgsz(trained_at_320) == 320
    torch_model = PoseModel(trained_at_320, skeleton, "torch")
    onnx_model = PoseModel(trained_at_320, skeleton, "onnx", cache_dir=tmp_path / "onnx")
    assert torch_model.imgsz == onnx_model.imgsz == 320 and onnx_model.info()["imgsz"] == 320
    assert model_imgsz(onnx_model.model_path) == 320  # the export carries it on
    image = cv2.imread(str(IMAGES[0]))
    reference = YOLO(str(shutil.copy(trained_at_320, tmp_path / "ref.pt"))).predict(
        image, imgsz=320, conf=0.25, iou=0.45, verbose=False)[0]
    at_640 = YOLO(str(tmp_path / "ref.pt")).predict(image, imgsz=640, conf=0.25, iou=0.45, verbose=False)[0]
    boxes = [round(float(b), 2) for b in reference.boxes.xyxy.flatten()]
    assert boxes != [round(float(b), 2) for b in at_640.boxes.xyxy.flatten()], "the sizes must differ for this test"
    got = [d for d in torch_model.detect(image, 0.25, 0.45)]
    assert [round(d["x"], 2) for d in got] == boxes[0::4]


def test_an_explicit_size_still_wins(trained_at_320, tmp_path):
    model = PoseModel(trained_at_320, load_skeleton(PERSON_SPEC), "onnx", imgsz=416, cache_dir=tmp_path / "onnx")
    assert model.imgsz == 416 and model_imgsz(model.model_path) == 416
