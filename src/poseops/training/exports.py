"""The export step's exports, each checked against best.pt on the val split before it is registered.

`export.formats` names what is written into the model folder: `model.onnx` (always), `best_openvino_model/`
(the CPU's runtime) and `model.engine` (TensorRT, on a GPU); `export.half` makes them FP16 and
`export.int8` adds `best_int8_openvino_model/`, quantized by OpenVINO's post-training quantization (NNCF,
through Ultralytics) on up to `export.int8_images` images of the train split.

Each export is validated on the val split as the evaluate stage validated best.pt (OpenVINO in f32,
`poseops.runtimes`), and its pose mAP50-95 must be within `export.tolerance` (`int8_tolerance` for
INT8) of best.pt's, measured in the same run with the exports' square input. The figures go to the run's metrics (`export/<name>/pose_mAP50-95`) and a tag per
export (`poseops.export.<name>`) says whether it was registered, or why not. An export that fails is
deleted and left out of the version; the ONNX export failing stops the stage (nothing is registered).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poseops.params import Params
from poseops.runtimes import VERSION_FILES, install_exact_openvino
from poseops.tracking.runs import log_metrics, set_tags
from poseops.training.evaluation import validate
from poseops.training.layout import Layout, TrainingError, resolved_data_yaml
from poseops.training.yolo import configure_ultralytics

CHECKED_METRIC = "pose_mAP50-95"
ENGINE_FILE = "model.engine"


@dataclass(frozen=True)
class ExportCheck:
    """One export measured against best.pt on the val split."""

    name: str  # onnx | openvino | openvino-int8 | engine
    path: Path  # in the model folder
    precision: str  # fp32 | fp16 | int8
    value: float  # the export's pose mAP50-95
    reference: float  # best.pt's, with the same square input
    tolerance: float
    error: str | None = None  # the export did not run on the val split

    @property
    def loss(self) -> float:
        return self.reference - self.value

    @property
    def passed(self) -> bool:
        return self.error is None and self.loss <= self.tolerance + 1e-9

    def verdict(self) -> str:
        if self.error is not None:
            return f"not registered: the export does not run on the val split ({self.error[:300]})"
        figures = (f"{CHECKED_METRIC} {self.value:.4f} against best.pt's {self.reference:.4f} on the val split "
                   f"(loss {self.loss:+.4f}, tolerance {self.tolerance})")
        return f"registered: {figures}" if self.passed else f"not registered: {figures}; the export is broken or " \
            "too coarse: check it, or raise export.tolerance / export.int8_tolerance if this loss is acceptable"


def write_exports(params: Params, lay: Layout, model: Any, data_yaml: Path) -> dict[str, tuple[Path, str]]:
    """Export `model` (an Ultralytics `YOLO` loaded from best.pt in the model folder; each export works on a copy of
    its network) to every format asked for: name → (path in the model folder, precision)."""
    x = params.export
    common = {"imgsz": params.train.imgsz, "device": params.device, "verbose": False}
    precision = "fp16" if x.half else "fp32"
    quantize = {"quantize": 16} if x.half else {}  # Ultralytics 8.4 replaced `half` by `quantize`
    out: dict[str, tuple[Path, str]] = {}
    if "engine" in x.formats and params.device in ("cpu", "mps"):
        raise TrainingError("export.formats: engine (TensorRT) needs an NVIDIA GPU: set device: 0, or leave engine out")
    for fmt in x.formats:
        extra = {"opset": x.opset, "simplify": x.simplify, "dynamic": x.dynamic} if fmt == "onnx" else {}
        made = Path(model.export(format=fmt, **common, **quantize, **extra))
        target = lay.model / (VERSION_FILES[fmt] if fmt in VERSION_FILES else ENGINE_FILE)
        made.rename(target)
        out[fmt] = (target, precision)
    if x.int8:
        if "openvino" not in x.formats:
            raise TrainingError("export.int8 quantizes through OpenVINO: add openvino to export.formats")
        fraction = min(1.0, x.int8_images / max(1, _train_images(data_yaml)))
        made = Path(model.export(format="openvino", quantize=8, data=str(data_yaml), split="train",
                                           fraction=fraction, **common))
        target = lay.model / VERSION_FILES["openvino-int8"]
        made.rename(target)
        out["openvino-int8"] = (target, "int8")
    return out


def _train_images(data_yaml: Path) -> int:
    import yaml

    data = yaml.safe_load(data_yaml.read_text(encoding="utf-8"))
    folder = Path(data["path"]) / data["train"]
    return sum(1 for p in folder.rglob("*") if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def check_export(name: str, path: Path, precision: str, data_yaml: Path, params: Params, reference: float,
                 save_dir: Path) -> ExportCheck:
    """`path` validated on the val split, its pose mAP50-95 against best.pt's (`reference`)."""
    install_exact_openvino()  # an OpenVINO export is measured in f32, as it is served
    tolerance = params.export.int8_tolerance if precision == "int8" else params.export.tolerance
    try:
        metrics = validate(path, data_yaml, params, save_dir)
    except Exception as e:  # noqa: BLE001 - a runtime's own error on a damaged file: the export is refused, saying why
        return ExportCheck(name, path, precision, 0.0, reference, tolerance, error=f"{type(e).__name__}: {e}")
    return ExportCheck(name, path, precision, metrics.get(CHECKED_METRIC, 0.0), reference, tolerance)


def export_checked(params: Params, lay: Layout, best: Path, mlc, run_id: str) -> list[ExportCheck]:
    """Write the exports, check each, log the figures and verdicts to the run, delete the ones that failed.

    The reference is best.pt measured as its exports are (square input, `rect=False`), so that a difference is the
    export's own. Returns the checks of the exports that passed; raises TrainingError when the ONNX export fails."""
    configure_ultralytics()
    from ultralytics import YOLO

    model = YOLO(str(best))  # loaded once: the exports are made from copies of it, then it is the reference
    with tempfile.TemporaryDirectory(prefix="poseops-export-") as tmp:
        data_yaml = resolved_data_yaml(lay.prepared / "data.yaml", Path(tmp) / "data.yaml")
        exports = write_exports(params, lay, model, data_yaml)
        reference = validate(model, data_yaml, params, Path(tmp) / "val-best", rect=False).get(CHECKED_METRIC, 0.0)
        checks = [check_export(name, path, precision, data_yaml, params, reference, Path(tmp) / f"val-{name}")
                  for name, (path, precision) in exports.items()]
    log_metrics(mlc, run_id, {f"export/best.pt/{CHECKED_METRIC}": reference,
                              **{f"export/{c.name}/{CHECKED_METRIC}": c.value for c in checks}})
    set_tags(mlc, run_id, {f"poseops.export.{c.name}": c.verdict() for c in checks})
    for check in checks:
        print(f"export {check.name} ({check.precision}): {check.verdict()}", file=sys.stderr, flush=True)
        if not check.passed:
            shutil.rmtree(check.path) if check.path.is_dir() else check.path.unlink()
    failed = {c.name: c for c in checks if not c.passed}
    if "onnx" in failed:
        raise TrainingError(f"the ONNX export was not registered, so neither is the model: {failed['onnx'].verdict()}")
    return [c for c in checks if c.passed]
