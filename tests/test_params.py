"""params.yaml: loading, validation errors that name the key, overrides (offline, fast)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from poseops.params import Params, ParamsError, load_params, parse_override, parse_params

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_params_are_valid_and_match_the_code_defaults():
    """The shipped file says what the code's defaults say (the demo's dataset and schedules apart)."""
    params = load_params(ROOT / "params.yaml")
    assert params == dataclasses.replace(Params(), schedules=params.schedules)
    assert (params.train.epochs, params.train.batch, params.train.imgsz) == (300, 16, 640)
    assert params.train.augment.fliplr == 0.5 and params.device == "cpu"


def test_pull_autolabel_and_schedules_are_typed_and_unlogged():
    from poseops.autolabel import AutolabelOptions
    from poseops.pull import pull_options

    p = parse_params({"pull": {"min_images": 4}, "autolabel": {"workers": 2}, "schedules": {"loop": None}})
    assert pull_options(p.pull).min_images == 4 and pull_options(p.pull, min_images=6).min_images == 6
    assert AutolabelOptions.of(p.autolabel).workers == 2 and p.autolabel.batch_size == 16
    assert p.schedules.loop is None and p.schedules.autolabel == "0 * * * *"
    assert not any(k.startswith(("pull.", "autolabel.", "schedules.")) for k in p.flat())
    with pytest.raises(ParamsError, match="'pull' must be a section"):
        parse_params({"pull": 5})


@pytest.mark.parametrize(("doc", "error"), [
    ({"pull": {"min_images": 1}}, r"'pull.min_images' is 1; it must be ≥ 2"),
    ({"pull": {"val_fraction": 1.0}}, r"'pull.val_fraction' is 1.0; it must be between 0.01 and 0.99"),
    ({"pull": {"workers": "8"}}, r"'pull.workers' must be an integer"),
    ({"pull": {"min_image": 4}}, r"unknown key 'pull.min_image'.*did you mean 'pull.min_images'"),
    ({"autolabel": {"task_runner": "spark"}}, r"'autolabel.task_runner' is 'spark'; allowed: threads, dask"),
    ({"autolabel": {"conf_thres": 1.5}}, r"'autolabel.conf_thres' is 1.5; it must be between 0.0 and 1.0"),
    ({"schedules": {"loop": "every night"}}, r"'schedules.loop' is 'every night'; it must be a cron string"),
    ({"schedules": {"service_url": "127.0.0.1:3000"}}, r"'schedules.service_url' .* must be an http\(s\) URL"),
    ({"schedules": {"hourly": "0 * * * *"}}, r"unknown key 'schedules.hourly'"),
])
def test_bad_pull_autolabel_schedules_values_name_the_key(doc, error):
    with pytest.raises(ParamsError, match=error):
        parse_params(doc)


def test_params_file_kept_after_a_run_that_rewrites_it(tmp_path):
    from poseops.params import file_kept

    path = tmp_path / "params.yaml"
    original = b"schedules:\n  loop: '0 3 * * *'   # nightly\n"
    path.write_bytes(original)
    with file_kept(path):
        path.write_text("schedules:\n  loop: 0 3 * * *\ntrain:\n  epochs: 3\n")
    assert path.read_bytes() == original


def test_every_param_dvc_yaml_names_exists():
    """A typo in dvc.yaml's `params:` would make DVC miss a change; every name must be in the schema."""
    flat = Params().flat()
    sections = {k.split(".")[0] for k in flat} | {".".join(k.split(".")[:2]) for k in flat}
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    names = [p for stage in stages.values() for p in stage.get("params", [])]
    assert names, "dvc.yaml lists no params"
    for name in names:
        assert name in flat or name in sections, name


@pytest.mark.parametrize(("doc", "message"), [
    ({"train": {"epoch": 3}}, "unknown key 'train.epoch' (allowed in 'train': model,"),
    ({"train": {"epoch": 3}}, "did you mean 'train.epochs'?"),
    ({"trian": {}}, "unknown key 'trian' (allowed in the top level: dataset, skeleton"),
    ({"train": {"augment": {"flip_lr": 0.5}}}, "unknown key 'train.augment.flip_lr'"),
])
def test_unknown_keys_are_named(doc, message):
    with pytest.raises(ParamsError) as e:
        parse_params(doc)
    assert message in str(e.value)


@pytest.mark.parametrize(("doc", "message"), [
    ({"train": {"epochs": "ten"}}, "'train.epochs' must be an integer, got 'ten' (str)"),
    ({"train": {"epochs": 0}}, "'train.epochs' is 0; it must be ≥ 1"),
    ({"train": {"epochs": 2.5}}, "'train.epochs' must be an integer"),
    ({"train": {"plots": "yes"}}, "'train.plots' must be true or false"),
    ({"train": {"batch": 0}}, "-1 (AutoBatch on a GPU)"),
    ({"train": {"batch": True}}, "'train.batch' must be an integer or a number, got True"),
    ({"train": {"imgsz": 300}}, "'train.imgsz' is 300; it must be a multiple of 32"),
    ({"train": {"model": "yolo11q-pose.pt"}}, "yolo11{n,s,m,l,x}-pose or yolov8{n,s,m,l,x}-pose"),
    ({"train": {"model": "yolo11n.pt"}}, "'train.model' is 'yolo11n.pt'"),
    ({"train": {"init_weights": "champion"}}, "models:/<registered name>@<alias>"),
    ({"train": {"augment": {"fliplr": 1.5}}}, "'train.augment.fliplr' is 1.5; it must be between 0.0 and 1.0"),
    ({"train": {"optimizer": "sgd"}}, "allowed: auto, SGD,"),
    ({"device": "gpu"}, "'device' is 'gpu'; it must be 'cpu', 'mps', a GPU index"),
    ({"evaluate": {"split": "train"}}, "'evaluate.split' is 'train'; allowed: val, test"),
    ({"promote": {"min_improvement": 2}}, "'promote.min_improvement' is 2.0; it must be between -1.0 and 1.0"),
    ({"mlflow": {"registered_model": "my model"}}, "'mlflow.registered_model' is 'my model'"),
    ({"train": 5}, "'train' must be a section"),
    ({"train": {"epochs": None}}, "'train.epochs' is empty"),
])
def test_bad_values_name_the_key_and_what_is_allowed(doc, message):
    with pytest.raises(ParamsError) as e:
        parse_params(doc)
    assert message in str(e.value)


@pytest.mark.parametrize(("doc", "check"), [
    ({"device": 0}, lambda p: p.device == "0"),
    ({"device": "0,1"}, lambda p: p.device == "0,1"),
    ({"train": {"batch": -1}}, lambda p: p.train.batch == -1),
    ({"train": {"batch": 0.7}}, lambda p: p.train.batch == 0.7),
    ({"train": {"lr0": 0}}, lambda p: p.train.lr0 == 0.0 and isinstance(p.train.lr0, float)),
    ({"train": {"model": "yolov8x-pose.yaml"}}, lambda p: p.train.model == "yolov8x-pose.yaml"),
    ({"train": {"model": "weights/custom.pt"}}, lambda p: p.train.model == "weights/custom.pt"),
    ({"train": {"init_weights": "models:/poseops-pose@champion"}}, lambda p: p.train.init_weights.endswith("@champion")),
    ({"train": {"init_weights": "models:/poseops-pose/3"}}, lambda p: p.train.init_weights.endswith("/3")),
    ({"train": {"init_weights": "runs:/" + "a" * 32 + "/weights/best.pt"}}, lambda p: p.train.init_weights is not None),
    ({"train": {"init_weights": ""}}, lambda p: p.train.init_weights is None),
    ({"mlflow": {"run_name": None}}, lambda p: p.mlflow.run_name is None),
])
def test_good_values_are_accepted(doc, check):
    assert check(parse_params(doc))


def test_overrides_are_validated_like_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: 5\n")
    assert load_params(path, {"train.epochs": 3}).train.epochs == 3
    assert load_params(path).train.epochs == 5
    assert parse_override("train.epochs=3") == ("train.epochs", 3)
    assert parse_override("train.init_weights=models:/m@champion") == ("train.init_weights", "models:/m@champion")
    with pytest.raises(ParamsError, match="unknown key 'train.epochz'"):
        load_params(path, dict([parse_override("train.epochz=3")]))
    with pytest.raises(ParamsError, match="write section.key=value"):
        parse_override("train.epochs")
    assert Params().replace(**{"train.imgsz": 320}).train.imgsz == 320


def test_missing_or_broken_file_is_one_clear_error(tmp_path):
    with pytest.raises(ParamsError, match="no such params file"):
        load_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1,\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(tmp_path / "bad.yaml")


def test_flat_params_for_mlflow_are_scalars_without_secrets():
    flat = Params().flat()
    assert flat["train.augment.fliplr"] == 0.5 and flat["mlflow.registered_model"] == "poseops-pose"
    assert all(not isinstance(v, (dict, list)) for v in flat.values())
    assert not any(word in key for key in flat for word in ("token", "password", "secret"))
