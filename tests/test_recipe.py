"""The training recipe follows the keypoint head: a fine-tune when the pretrained head fits the skeleton, a real
training (train.new_head) when it does not, and the run says which."""

from __future__ import annotations

import yaml
from conftest import SHARED
from test_judging import quadruped_project

from poseops import tracking, training
from poseops.params import load_params
from poseops.skeleton import COCO_SIGMAS
from poseops.training.recipe import FINE_TUNE, NEW_HEAD, Head, choose_recipe, weights_head

PRETRAINED = str(SHARED / "weights" / "yolo11n-pose.pt")


def data_yaml(tmp_path, names: list[str]):
    path = tmp_path / "data.yaml"
    path.write_text(yaml.safe_dump({"kpt_shape": [len(names), 3], "kpt_names": {0: names}}))
    return path


def test_the_pretrained_head_is_cocos_17_person_keypoints():
    assert weights_head(PRETRAINED) == Head(17, list(COCO_SIGMAS))
    assert weights_head("yolo11n-pose.yaml") == Head(None, None)  # an architecture: no trained head


def test_a_fitting_head_fine_tunes_with_the_train_section_as_written(tmp_path):
    params = load_params(tmp_path / "none.yaml", {"train.optimizer": "SGD", "train.lr0": 0.001}, missing_ok=True)
    recipe = choose_recipe(params, PRETRAINED, data_yaml(tmp_path, list(COCO_SIGMAS)))
    assert recipe.name == FINE_TUNE and recipe.args == {} and "fits the skeleton (17 keypoints)" in recipe.reason


def test_another_keypoint_count_or_other_names_train_a_new_head(tmp_path):
    params = load_params(tmp_path / "none.yaml", {"train.optimizer": "SGD", "train.lr0": 0.001, "train.epochs": 5},
                         missing_ok=True)
    recipe = choose_recipe(params, PRETRAINED, data_yaml(tmp_path, [f"p{i}" for i in range(12)]))
    assert recipe.name == NEW_HEAD
    assert recipe.args == {"optimizer": "AdamW", "lr0": 0.002, "warmup_epochs": 3.0}
    assert "has 17 keypoints, the skeleton 12" in recipe.reason
    assert "5 epoch(s)" in recipe.warning and "30 or more" in recipe.warning
    renamed = choose_recipe(params, PRETRAINED, data_yaml(tmp_path, [f"p{i}" for i in range(17)]))
    assert renamed.name == NEW_HEAD and "other keypoints" in renamed.reason
    scratch = choose_recipe(params, "yolo11n-pose.yaml", data_yaml(tmp_path, list(COCO_SIGMAS)))
    assert scratch.name == NEW_HEAD and "no trained keypoint head" in scratch.reason
    as_written = choose_recipe(params.replace(**{"train.recipe": "params"}), PRETRAINED,
                               data_yaml(tmp_path, [f"p{i}" for i in range(12)]))
    assert as_written.name == FINE_TUNE and as_written.args == {} and "train.recipe: params" in as_written.reason


def test_a_new_skeleton_trains_with_the_new_head_recipe_inside_ultralytics(tmp_path, monkeypatch):
    """A real 1-epoch training of the 12-keypoint quadruped from the 17-keypoint pretrained weights."""
    monkeypatch.setenv("POSEOPS_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("POSEOPS_WEIGHTS_DIR", str(SHARED / "weights"))
    monkeypatch.setenv("YOLO_OFFLINE", "true")
    root = quadruped_project(tmp_path / "p")
    overrides = {"train.epochs": 1, "train.imgsz": 64, "train.batch": 2, "train.workers": 0, "train.plots": False,
                 "train.optimizer": "SGD", "train.lr0": 0.001, "train.warmup_epochs": 0.0}
    params = load_params(root / "params.yaml", overrides)
    training.prepare(params, root)
    seen = {}

    def capture(trainer):
        seen.update(optimizer=trainer.args.optimizer, lr0=trainer.args.lr0, warmup=trainer.args.warmup_epochs,
                    groups=type(trainer.optimizer).__name__)

    mlc = tracking.client(f"sqlite:///{tmp_path / 'mlflow.db'}")
    result = training.train(params, root, mlc=mlc, callbacks={"on_train_epoch_end": capture})
    assert seen == {"optimizer": "AdamW", "lr0": 0.002, "warmup": 3.0, "groups": "AdamW"}
    tags = mlc.get_run(result.run_id).data.tags
    assert tags["poseops.recipe"] == NEW_HEAD and "has 17 keypoints, the skeleton 12" in tags["poseops.recipe_reason"]
    assert "1 epoch(s)" in tags["poseops.recipe_warning"]
