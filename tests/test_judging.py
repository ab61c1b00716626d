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


def test_prepare_warns_of_left_right_keypoints_no_flip_pair_mirrors(tmp_path, capsys):
    root = quadruped_project(tmp_path)
    spec = root / "specs" / "quadruped.yaml"
    doc = yaml.safe_load(spec.read_text())
    for cls in doc["classes"]:
        cls["flip_pairs"] = cls["flip_pairs"][:3]  # back paws left unpaired
    spec.write_text(yaml.safe_dump(doc, sort_keys=False))
    data = root / "data" / "dogs" / "data.yaml"
    data.write_text(yaml.safe_dump({**yaml.safe_load(data.read_text()), "flip_idx": load_skeleton(spec).flip_idx}))
    training.prepare(load_params(root / "params.yaml"), root)
    err = " ".join(capsys.readouterr().err.split())
    assert ("keypoints named left/right are in no flip pair (dog: back_left_paw, back_right_paw; cat: back_left_paw, "
            "back_right_paw) while train.augment.fliplr is 0.5") in err
    training.prepare(load_params(root / "params.yaml", {"train.augment.fliplr": 0.0}), root)
    assert "flip pair" not in capsys.readouterr().err
    assert training.flip_warning(load_skeleton(QUADRUPED), 0.5) is None  # every sided keypoint is paired


# --- promotion: a floor, and only against the same dataset and skeleton -----------------------------------


def promote_params(**overrides):
    return load_params(ROOT / "params.yaml", overrides)


@pytest.mark.parametrize(("cand", "champ", "promoted", "reason"), [
    (0.0, None, False, "pose_mAP50-95 0.0000 < promote.min_metric 0.01: too poor to serve, no champion yet"),
    (0.0, 0.0, False, "pose_mAP50-95 0.0000 < promote.min_metric 0.01: too poor to serve, champion stays version 1"),
    (0.009, None, False, "< promote.min_metric 0.01"),
    (0.01, None, True, "no champion yet, pose_mAP50-95 0.0100 ≥ promote.min_metric 0.01"),
    (0.5, 0.4, True, "pose_mAP50-95 0.5000 ≥ 0.4000 + 0.0"),
    (0.3, 0.4, False, "pose_mAP50-95 0.3000 < 0.4000 + 0.0"),
])
def test_a_model_below_the_floor_is_never_promoted(cand, champ, promoted, reason):
    p = training.decide(promote_params(), "2", cand, None if champ is None else "1", champ)
    assert p.promoted is promoted and reason in p.reason and p.min_metric == 0.01


def test_the_floor_is_a_param_validated_like_its_neighbours():
    assert training.decide(promote_params(**{"promote.min_metric": 0.0}), "1", 0.0, None, None).promoted
    from poseops.params import ParamsError

    with pytest.raises(ParamsError, match="'promote.min_metric' is -0.1; it must be between 0.0 and 2.0"):
        promote_params(**{"promote.min_metric": -0.1})


def test_a_champion_of_another_dataset_or_skeleton_never_competes():
    quadruped = training.skeleton_fingerprint(load_skeleton(QUADRUPED))
    person = training.skeleton_fingerprint(load_skeleton(ROOT / "label_config" / "skeletons" / "person.yaml"))
    dogs = training.ModelKind("dogs", quadruped)
    assert training.kind_mismatch(dogs, training.ModelKind("dogs", quadruped), "champion", "1") is None
    assert training.kind_mismatch(dogs, None, "champion", "") is None
    for other in (training.ModelKind("people", quadruped), training.ModelKind("dogs", person)):
        why = training.kind_mismatch(dogs, other, "champion", "4")
        assert f"the champion (version 4) was trained for {other}, this version for {dogs}" in why
        p = training.decide(promote_params(), "5", 0.9, "4", None, why)
        assert not p.promoted and p.reason == why  # far better, still not promoted
    assert str(dogs) == f"dataset 'dogs', skeleton {quadruped}"
    # below the floor says so first
    assert "min_metric" in training.decide(promote_params(), "5", 0.0, "4", None, why).reason


def test_skeleton_fingerprint_ignores_looks_but_not_keypoints_or_flips():
    base = load_skeleton(QUADRUPED)
    text = QUADRUPED.read_text()
    fp = training.skeleton_fingerprint
    looks = text.replace('color: "#911eb4"', 'color: "#000000"').replace("{name: nose}", "{name: nose, sigma: 0.03}")
    assert fp(parse(looks)) == fp(base)
    assert fp(parse(text.replace("tail_base", "tail_root"))) != fp(base)
    assert fp(parse(text.replace("      - [back_left_paw, back_right_paw]\n", ""))) != fp(base)


def parse(text: str):
    from poseops.skeleton import parse_skeleton

    return parse_skeleton(text)


def test_model_kind_comes_from_the_version_tags():
    from mlflow.entities.model_registry import ModelVersion, ModelVersionTag

    mv = ModelVersion("m", "3", 0, tags=[ModelVersionTag("dataset", "dogs"), ModelVersionTag("skeleton_fingerprint", "ab")])
    assert training.model_kind(mv, Path("unused")) == training.ModelKind("dogs", "ab")
    untagged = ModelVersion("m", "2", 0, tags=[ModelVersionTag("dataset", "dogs")])  # no run to read a spec from
    assert training.model_kind(untagged, Path("unused")) == training.ModelKind("dogs", "unknown")


# --- a training that learned nothing says so, and is not promoted ----------------------------------------------


@pytest.mark.integration
def test_a_training_with_all_pose_metrics_zero_says_so_and_is_not_promoted(tmp_path, monkeypatch, capfd):
    """1 epoch from scratch on a new skeleton (the quadruped): pose metrics 0, said loudly, never the champion."""
    import httpx
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    from poseops import tracking
    from poseops.flows import train as flows_train

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("POSEOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "home" / "ultralytics"))
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    root = quadruped_project(tmp_path / "project")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["train"].update(model="yolo11n-pose.yaml", epochs=1, batch=2, imgsz=64, workers=0, plots=False)
    params["mlflow"]["registered_model"] = "dogs-pose"
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    with prefect_test_harness():
        out = flows_train.train_flow(root=str(root), use_dvc=False, promote=True)
        artifact = httpx.get(f"{PREFECT_API_URL.value()}/artifacts/{flows_train.REPORT_KEY}/latest").json()
        APILogHandler().flush()
        logs = httpx.post(f"{PREFECT_API_URL.value()}/logs/filter", json={"logs": {"level": {"ge_": 30}}}).json()
    assert any(log["message"].startswith("every pose metric is 0") for log in logs), logs  # in the flow's log
    assert all(v == 0 for k, v in out["metrics"].items() if k.startswith("pose_"))
    run = tracking.client().get_run(out["run_id"])
    assert run.data.tags["poseops.pose_metrics_zero"] == "true"
    assert run.data.tags["poseops.warning"].startswith("every pose metric is 0")
    assert "WARNING: every pose metric is 0" in capfd.readouterr().err
    assert "**Warning:** every pose metric is 0" in artifact["data"]
    promotion = out["promotion"]
    assert promotion["promoted"] is False and "< promote.min_metric 0.01: too poor to serve, no champion yet" in promotion["reason"]
    assert tracking.version_for_alias(tracking.client(), "dogs-pose", "champion") is None
