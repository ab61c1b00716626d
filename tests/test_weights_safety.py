"""Weights are data, not code: a `.pt` whose pickle would run code is refused, naming the file,
by every path that loads one (predict with either runtime, the service's model loading, deploy's
model check, training's init weights and resume), and the code never runs.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from conftest import PERSON_SPEC, SHARED

from poseops.deploy import DeployError, check_model
from poseops.detector import Detector, ServiceConfig
from poseops.inference import ModelError, PoseModel
from poseops.skeleton import load_skeleton
from poseops.weights import UnsafeWeightsError, check_checkpoint, load_checkpoint

PRETRAINED = SHARED / "weights" / "yolo11n-pose.pt"


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def canary(tmp_path) -> tuple[Path, Path]:
    """A checkpoint-shaped .pt whose unpickling would create `marker`; and that marker's path."""
    marker = tmp_path / "the-payload-ran"
    path = tmp_path / "weights" / "canary.pt"
    path.parent.mkdir()
    torch.save({"model": _Payload(marker), "epoch": 3, "optimizer": {}}, path)
    return path, marker


def test_a_canary_pickle_is_refused_naming_the_file_and_its_code_never_runs(canary, tmp_path):
    path, marker = canary
    legacy = tmp_path / "legacy.pt"  # the pre-zip pickle format too
    legacy.write_bytes(pickle.dumps({"model": _Payload(marker)}))
    for candidate in (path, legacy):
        with pytest.raises(UnsafeWeightsError, match="would run code") as caught:
            load_checkpoint(candidate)
        assert str(candidate) in str(caught.value) and not caught.value.damaged
    assert not marker.exists()


def test_a_damaged_checkpoint_is_told_apart_from_a_hostile_one(tmp_path):
    cut = tmp_path / "cut.pt"
    cut.write_bytes(PRETRAINED.read_bytes()[:5000])
    with pytest.raises(UnsafeWeightsError, match="truncated") as caught:
        load_checkpoint(cut)
    assert caught.value.damaged
    check_checkpoint(tmp_path / "model.onnx")  # not a pickle: nothing to refuse here


def test_real_weights_still_load_as_data_only():
    ckpt = load_checkpoint(PRETRAINED)
    assert ckpt["model"].yaml["kpt_shape"] == [17, 3]


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_predict_refuses_a_canary_with_either_runtime(canary, runtime, tmp_path):
    path, marker = canary
    with pytest.raises(ModelError, match="canary.pt: refused as weights"):
        PoseModel(path, load_skeleton(PERSON_SPEC), runtime=runtime, cache_dir=tmp_path / "onnx")
    assert not marker.exists() and not list((tmp_path / "onnx").glob("*.onnx"))


def test_the_service_and_deploy_refuse_a_canary(canary, tmp_path):
    path, marker = canary
    detector = Detector(ServiceConfig(weights=str(path), skeleton=PERSON_SPEC, runtime="torch"))
    detector.load()  # what the service's worker runs in the background
    assert not detector.ready and "canary.pt: refused as weights" in (detector.load_error or "")
    model_files = tmp_path / "deployed"
    model_files.mkdir()
    shutil.copyfile(path, model_files / "best.pt")
    shutil.copyfile(PERSON_SPEC, model_files / "skeleton.yaml")
    with pytest.raises(DeployError, match="best.pt: refused as weights"):
        check_model(ServiceConfig(runtime="torch").with_model_files(model_files))
    assert not marker.exists()


def test_training_refuses_a_canary_as_init_weights_and_as_the_checkpoint_to_resume(canary, tmp_path):
    from poseops.training import checkpoint_epochs

    path, marker = canary
    with pytest.raises(UnsafeWeightsError, match="canary.pt"):
        check_checkpoint(path)  # what training runs on its init weights before Ultralytics sees them
    last = tmp_path / "last.pt"
    shutil.copyfile(path, last)
    with pytest.raises(UnsafeWeightsError, match="last.pt: refused as weights"):
        checkpoint_epochs(last)
    last.write_bytes(PRETRAINED.read_bytes()[:5000])  # cut short by a kill: not resumable, not an error
    assert checkpoint_epochs(last) is None
    assert not marker.exists()
