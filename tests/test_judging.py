"""Judging a model fairly on any skeleton: the spec's OKS sigmas reach Ultralytics' loss and validation,
and promotion has a floor and never compares models of other datasets or skeletons."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from poseops import training
from poseops.conversion.dataset import data_yaml
from poseops.params import load_params
from poseops.skeleton import load_skeleton

ROOT = Path(__file__).resolve().parents[1]
QUADRUPED = Path(__file__).parent / "data" / "quadruped.yaml"


def quadruped_project(root: Path, sigma_of: dict[str, float] | None = None, images: int = 4) -> Path:
    """A project training the 12-keypoint quadruped spec on a few synthetic images (2 classes)."""
    spec = yaml.safe_load(QUADRUPED.read_text())
    for kp in spec["classes"][0]["keypoints"]:
        if kp["name"] in (sigma_of or {}):
            kp["sigma"] = sigma_of[kp["name"]]
    (root / "specs").mkdir(parents=True)
    (root / "specs" / "quadruped.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))
    skeleton = load_skeleton(root / "specs" / "quadruped.yaml")
    data = root / "data" / "dogs"
    rng = random.Random(0)
    for split in ("train", "val"):
        (data / "images" / split).mkdir(parents=True)
        (data / "labels" / split).mkdir(parents=True)
        for n in range(images):
            pixels = np.random.default_rng(n).integers(0, 255, (64, 64, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(data / "images" / split / f"{n}.jpg")
            points = " ".join(f"{rng.uniform(0.3, 0.7):.3f} {rng.uniform(0.3, 0.7):.3f} 2" for _ in range(12))
            (data / "labels" / split / f"{n}.txt").write_text(f"{n % 2} 0.5 0.5 0.5 0.5 {points}\n")
    (data / "data.yaml").write_text(yaml.safe_dump({
        "path": ".", "train": "images/train", "val": "images/val", "names": {0: "dog", 1: "cat"},
        "kpt_shape": [12, 3], "flip_idx": skeleton.flip_idx}))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["dataset"] = {"name": "dogs", "dir": "data/dogs"}
    params["skeleton"] = "specs/quadruped.yaml"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


# --- the spec's sigmas reach Ultralytics ---------------------------------------------------------------


def test_prepared_data_yaml_carries_the_spec_sigmas_in_model_order(tmp_path):
    root = quadruped_project(tmp_path, {"nose": 0.026, "back_right_paw": 0.09})
    info = training.prepare(load_params(root / "params.yaml"), root)
    written = yaml.safe_load((root / "data" / "prepared" / "data.yaml").read_text())
    assert written["kpt_oks_sigmas"] == [0.026] + [0.072] * 10 + [0.09]
    assert info.kpt_oks_sigmas == written["kpt_oks_sigmas"]
    assert info.skeleton["fingerprint"] == training.skeleton_fingerprint(load_skeleton(QUADRUPED))
    # the converter's data.yaml (what a pull writes) carries them too
    converted = data_yaml(load_skeleton(root / "specs" / "quadruped.yaml"), root / "data" / "dogs")
    assert converted["kpt_oks_sigmas"] == written["kpt_oks_sigmas"]


@pytest.mark.integration
def test_spec_sigmas_reach_ultralytics_loss_and_validator(tmp_path):
    """A real (1 epoch, 64 px) Ultralytics training on the prepared data.yaml: what its loss and validator use."""
    from ultralytics import YOLO
    from ultralytics.utils.torch_utils import unwrap_model

    sigmas = {"nose": 0.026, "head_top": 0.031, "back_right_paw": 0.09}
    root = quadruped_project(tmp_path, sigmas)
    training.prepare(load_params(root / "params.yaml"), root)
    data = training.resolved_data_yaml(root / "data" / "prepared" / "data.yaml", tmp_path / "resolved" / "data.yaml")
    expected = [0.026, 0.031] + [0.072] * 9 + [0.09]
    seen: dict[str, list[float]] = {}

    def capture(trainer):
        seen["loss"] = unwrap_model(trainer.model).criterion.keypoint_loss.sigmas.tolist()
        seen["validator"] = trainer.validator.sigma.tolist()

    training.configure_ultralytics()
    model = YOLO("yolo11n-pose.yaml")  # from scratch: nothing is downloaded
    model.add_callback("on_fit_epoch_end", capture)
    model.train(data=str(data), epochs=1, imgsz=64, batch=2, workers=0, device="cpu", plots=False, amp=False,
                project=str(tmp_path / "runs"), name="t", exist_ok=True, verbose=False)
    assert seen["loss"] == pytest.approx(expected, abs=1e-6)
    assert seen["validator"] == pytest.approx(expected, abs=1e-6)
    # a stand-alone validation of the trained weights (as evaluate and promote run it) uses them too
    val = YOLO(str(tmp_path / "runs" / "t" / "weights" / "best.pt"))
    validator_sigmas: list[list[float]] = []
    val.add_callback("on_val_end", lambda v: validator_sigmas.append(v.sigma.tolist()))
    val.val(data=str(data), imgsz=64, batch=2, workers=0, device="cpu", plots=False, verbose=False,
            project=str(tmp_path / "runs"), name="v", exist_ok=True)
    assert validator_sigmas == [pytest.approx(expected, abs=1e-6)]
    shutil.rmtree(tmp_path / "runs")
