"""Runtimes: which one runs where, OpenVINO answering as ONNX Runtime does, and the export step's accuracy check
(a good export is registered, a broken one is refused), on coco8-pose at 320 px."""

from __future__ import annotations

import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from conftest import PERSON_SPEC, ROOT, SHARED, SHARED_DATASETS

from poseops.runtimes import RuntimeChoiceError, choose_runtime
from poseops.skeleton import load_skeleton

IMAGES = sorted((SHARED_DATASETS / "coco8-pose" / "images").glob("*/*.jpg"))
IMGSZ = 320


def touch_version(folder: Path, *names: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        if "openvino" in name:
            (folder / name).mkdir()
            (folder / name / "best.xml").write_text("<net/>")
        else:
            (folder / name).write_bytes(b"x")
    return folder


def test_auto_picks_openvino_on_the_cpu_then_onnx_and_obeys_an_override(tmp_path, monkeypatch):
    monkeypatch.delenv("POSEOPS_RUNTIME", raising=False)
    full = touch_version(tmp_path / "full", "best_openvino_model", "model.onnx", "best.pt")
    assert choose_runtime(full).runtime == "openvino" and choose_runtime(full).path == full / "best_openvino_model"
    assert choose_runtime(full, device="0").runtime == "onnx"  # a GPU: ONNX Runtime (CUDA)
    assert choose_runtime(full, "torch").path == full / "best.pt"
    monkeypatch.setenv("POSEOPS_RUNTIME", "onnx")  # the setting, for the service and autolabel alike
    assert choose_runtime(full).path == full / "model.onnx"
    monkeypatch.delenv("POSEOPS_RUNTIME")
    older = touch_version(tmp_path / "older", "model.onnx", "best.pt")  # registered before OpenVINO exports
    assert choose_runtime(older).runtime == "onnx"
    with pytest.raises(RuntimeChoiceError, match="no INT8 OpenVINO export"):
        choose_runtime(older, precision="int8")
    with pytest.raises(RuntimeChoiceError, match="holds none of best_openvino_model"):
        choose_runtime(older, "openvino")
    with pytest.raises(RuntimeChoiceError, match="unknown runtime 'tensorrt'"):
        choose_runtime(older, "tensorrt")
    onnx = touch_version(tmp_path / "x", "model.onnx") / "model.onnx"
    with pytest.raises(RuntimeChoiceError, match="the openvino runtime needs a .pt"):
        choose_runtime(onnx, "openvino")
    assert choose_runtime(tmp_path / "best.pt").runtime == "openvino"


# --- OpenVINO against ONNX Runtime, as the service and autolabel load them -----------------------------------


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    from poseops.inference import PoseModel, load_model

    home = tmp_path_factory.mktemp("home")  # exports cached under home/onnx and home/openvino
    spec = load_skeleton(PERSON_SPEC)
    return SimpleNamespace(home=home, openvino=load_model("yolo11n-pose.pt", spec, "auto", IMGSZ, cache_dir=home / "onnx"),
                           latency=load_model("yolo11n-pose.pt", spec, "auto", IMGSZ, cache_dir=home / "onnx",
                                              performance="latency"),
                           onnx=PoseModel("yolo11n-pose.pt", spec, "onnx", IMGSZ, cache_dir=home / "onnx"))


def assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for da, db in zip(a, b, strict=True):
        assert da["class"] == db["class"]
        for key in ("x", "y", "width", "height"):  # rounded to 0.01 px: equal within one rounding step
            assert da[key] == pytest.approx(db[key], abs=0.011), key
        assert da["confidence"] == pytest.approx(db["confidence"], abs=2e-4)
        for ka, kb in zip(da["keypoints"], db["keypoints"], strict=True):
            assert (ka["x"], ka["y"]) == pytest.approx((kb["x"], kb["y"]), abs=0.011), ka["name"]


def test_openvino_runs_in_f32_throughput_mode_and_answers_as_onnx_runtime(models):
    info = models.openvino.info()
    assert info["runtime"] == "openvino" and info["precision"] == "fp32"
    assert info["openvino"]["inference_precision_hint"] == "f32"  # never bfloat16, which moves keypoints by pixels
    assert info["openvino"]["performance_hint"] == "THROUGHPUT" and info["concurrency"] >= 2
    images = [cv2.imread(str(p)) for p in IMAGES]
    expected = [models.onnx.detect(im) for im in images]
    assert sum(map(len, expected)) >= len(images)
    for im, want in zip(images, expected, strict=True):
        assert_same(models.openvino.detect(im), want)
    with ThreadPoolExecutor(4) as pool:  # concurrent calls share the compiled model, each on its own request
        for got, want in zip(pool.map(models.openvino.detect, images * 2), expected * 2, strict=True):
            assert_same(got, want)


def test_openvino_compiled_for_one_caller_runs_one_stream_and_answers_as_onnx_runtime(models):
    info = models.latency.info()
    assert (info["runtime"], info["openvino"]["inference_precision_hint"]) == ("openvino", "f32")
    assert (info["openvino"]["performance_hint"], info["openvino"]["num_streams"]) == ("LATENCY", "1")
    images = [cv2.imread(str(p)) for p in IMAGES]
    for im in images:
        assert_same(models.latency.detect(im), models.onnx.detect(im))
    with ThreadPoolExecutor(2) as pool:  # still safe from several threads (they take turns on the one stream)
        for got, im in zip(pool.map(models.latency.detect, images), images, strict=True):
            assert_same(got, models.openvino.detect(im))


def test_one_image_at_a_time_callers_load_the_latency_model_and_a_bad_hint_is_refused(models, monkeypatch):
    from poseops import autolabel
    from poseops.inference import ModelError, PoseModel

    monkeypatch.setenv("POSEOPS_HOME", str(models.home))  # the exports made above, from their cache
    monkeypatch.delenv("POSEOPS_RUNTIME", raising=False)
    autolabel.local_model.cache_clear()
    try:  # autolabel's model (the pipeline calls it one image at a time)
        assert autolabel.local_model("yolo11n-pose.pt", str(PERSON_SPEC)).info()["openvino"]["performance_hint"] == "LATENCY"
    finally:
        autolabel.local_model.cache_clear()
    with pytest.raises(ModelError, match="unknown performance hint 'fast': use one of latency, throughput"):
        PoseModel("yolo11n-pose.pt", load_skeleton(PERSON_SPEC), "auto", IMGSZ, performance="fast")


def test_metadata_names_the_runtime_and_precision(models, monkeypatch):
    from poseops.detector import Detector, ServiceConfig

    monkeypatch.setenv("POSEOPS_HOME", str(models.home))  # the OpenVINO export made above, from its cache
    detector = Detector(ServiceConfig(skeleton=PERSON_SPEC, imgsz=IMGSZ))
    assert detector.metadata()["model"]["runtime"] == "auto"  # before loading: as configured
    detector.load()
    model = detector.metadata()["model"]
    assert (model["runtime"], model["precision"], model["openvino"]["inference_precision_hint"]) == ("openvino", "fp32", "f32")


# --- the export step's check ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stage(tmp_path_factory):
    """A model folder with best.pt (the pretrained model), the prepared coco8-pose and an MLflow run."""
    from poseops import tracking
    from poseops.params import load_params
    from poseops.training.layout import Layout

    work = tmp_path_factory.mktemp("export-stage")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{work / 'mlflow.db'}")
    mp.setenv("POSEOPS_HOME", str(work / "home"))
    (work / "prepared").mkdir()
    (work / "prepared" / "data.yaml").write_text(
        f"path: {SHARED_DATASETS / 'coco8-pose'}\ntrain: images/train\nval: images/val\nkpt_shape: [17, 3]\n"
        "flip_idx: [0, 2, 1, 4, 3, 6, 5, 8, 7, 10, 9, 12, 11, 14, 13, 16, 15]\nnames:\n  0: person\n")
    lay = Layout(prepared=work / "prepared", model=work / "models")
    lay.model.mkdir()
    best = lay.model / "best.pt"
    shutil.copyfile(SHARED / "weights" / "yolo11n-pose.pt", best)
    params = load_params(ROOT / "params.yaml", {"train.imgsz": IMGSZ, "evaluate.batch": 4})
    mlc = tracking.client()
    experiment = mlc.create_experiment("exports")
    yield SimpleNamespace(lay=lay, best=best, params=params, mlc=mlc, new_run=lambda: mlc.create_run(experiment).info.run_id)
    mp.undo()


@pytest.fixture(scope="module")
def passed(stage):
    from poseops.training.exports import export_checked

    run_id = stage.new_run()
    checks = export_checked(stage.params, stage.lay, stage.best, stage.mlc, run_id)
    kept = stage.lay.model.parent / "kept"  # the good exports, for the broken copies below
    shutil.copytree(stage.lay.model, kept)
    return SimpleNamespace(checks=checks, run=stage.mlc.get_run(run_id), kept=kept)


@pytest.mark.integration
def test_good_exports_pass_and_their_figures_are_in_the_run(passed, stage):
    assert [(c.name, c.precision) for c in passed.checks] == [("onnx", "fp32"), ("openvino", "fp32")]
    for check in passed.checks:
        assert check.passed and check.reference > 0.1 and abs(check.loss) < 1e-3, check  # f32: the same detections
        assert passed.run.data.tags[f"poseops.export.{check.name}"].startswith("registered: pose_mAP50-95")
        assert passed.run.data.metrics[f"export/{check.name}/pose_mAP50-95"] == pytest.approx(check.value)
    assert (stage.lay.model / "model.onnx").is_file() and (stage.lay.model / "best_openvino_model" / "best.bin").is_file()


def scramble(values: np.ndarray) -> np.ndarray:
    return np.random.default_rng(0).permutation(values.ravel()).reshape(values.shape)


def broken_exports(kept: Path, model: Path, which: str):
    """`write_exports` handing back copies of the good exports, with `which`'s weights scrambled."""

    def write_exports(params, lay, best, data_yaml):
        shutil.rmtree(model)
        shutil.copytree(kept, model)
        if which == "openvino":  # the biggest f32 weight scrambled through OpenVINO's own graph API
            import openvino as ov

            xml = next((model / "best_openvino_model").glob("*.xml"))
            graph = ov.Core().read_model(str(kept / "best_openvino_model" / xml.name))  # (not the file written)
            weights = [op for op in graph.get_ordered_ops() if op.get_type_name() == "Constant"
                       and op.get_element_type() == ov.Type.f32]
            biggest = max(weights, key=lambda op: op.get_output_tensor(0).size)
            scrambled = ov.opset13.constant(scramble(biggest.get_data()))
            for target in list(biggest.output(0).get_target_inputs()):
                target.replace_source_output(scrambled.output(0))
            ov.save_model(graph, str(xml), compress_to_fp16=False)
        else:
            import onnx
            from onnx import numpy_helper

            graph = onnx.load(str(model / "model.onnx"))
            biggest = max(graph.graph.initializer, key=lambda t: np.prod(t.dims))
            biggest.CopyFrom(numpy_helper.from_array(scramble(numpy_helper.to_array(biggest)), biggest.name))
            onnx.save(graph, str(model / "model.onnx"))
        return {"onnx": (model / "model.onnx", "fp32"), "openvino": (model / "best_openvino_model", "fp32")}

    return write_exports


@pytest.mark.integration
def test_a_broken_openvino_export_is_refused_and_left_out(passed, stage, monkeypatch):
    from poseops.training import exports

    monkeypatch.setattr(exports, "write_exports", broken_exports(passed.kept, stage.lay.model, "openvino"))
    run_id = stage.new_run()
    checks = exports.export_checked(stage.params, stage.lay, stage.best, stage.mlc, run_id)
    assert [c.name for c in checks] == ["onnx"]  # registered without the broken one
    assert not (stage.lay.model / "best_openvino_model").exists()
    tags = stage.mlc.get_run(run_id).data.tags
    assert tags["poseops.export.openvino"].startswith("not registered: pose_mAP50-95") and "broken" in tags["poseops.export.openvino"]
    assert tags["poseops.export.onnx"].startswith("registered")


@pytest.mark.integration
def test_an_export_that_does_not_load_is_refused_saying_why(passed, stage):
    from poseops.training.exports import check_export

    broken = stage.lay.model.parent / "cut_openvino_model"
    shutil.copytree(passed.kept / "best_openvino_model", broken)
    weights = next(broken.glob("*.bin"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # cut short, as by a full disk
    check = check_export("openvino", broken, "fp32", stage.lay.prepared / "data.yaml", stage.params, 0.3,
                         stage.lay.model.parent / "val-cut")
    assert not check.passed and check.verdict().startswith("not registered: the export does not run"), check


@pytest.mark.integration
def test_a_broken_onnx_export_stops_the_stage(passed, stage, monkeypatch):
    from poseops.training import exports
    from poseops.training.layout import TrainingError

    monkeypatch.setattr(exports, "write_exports", broken_exports(passed.kept, stage.lay.model, "onnx"))
    with pytest.raises(TrainingError, match="ONNX export was not registered, so neither is the model"):
        exports.export_checked(stage.params, stage.lay, stage.best, stage.mlc, stage.new_run())
