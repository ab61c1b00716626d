"""Running a YOLO-pose model on images: OpenVINO on a CPU, ONNX Runtime or PyTorch (`poseops.runtimes`).

`PoseModel` wraps Ultralytics' own predictor, so the pre-processing (letterbox),
the non-maximum suppression and the rescaling to the original image are exactly
those of `YOLO(path).predict(...)`: the service and a direct Ultralytics call on
the same file, thresholds and `imgsz` give the same detections. (Measured on the
2-core CPU: a hand-written ONNX Runtime pipeline calling the same Ultralytics ops
was no faster than the predictor, whose overhead is a few ms against ~70-110 ms
of network; see docs/api.md.)

A `.pt` checkpoint run with the `onnx` or `openvino` runtime is exported once to a cached
`.onnx` file or OpenVINO folder (fixed input, the size the checkpoint was trained at) under
`$POSEOPS_HOME/onnx/` or `$POSEOPS_HOME/openvino/`, keyed by the checkpoint's sha256, so the weights
folder is never written to. `load_model` picks the runtime as the service and autolabel do.

Detections are plain dicts in the HTTP API's shape: `class`, `confidence`, `x`,
`y` (top-left corner of the box), `width`, `height` in pixels of the image as
shown, and `keypoints` (`{name, x, y, confidence}` in skeleton order). The model
takes decoded pixels; callers decode with the EXIF orientation applied (the
service through `poseops.imageio.displayed_rgb`, `predict` and autolabel through
OpenCV, which turns the image the same way).
"""

from __future__ import annotations

import ast
import contextlib
import logging
import os
import queue
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poseops.convert import file_sha256
from poseops.errors import PoseopsError
from poseops.runtimes import (
    PERFORMANCE_HINTS,
    InferRequest,
    RuntimeChoiceError,
    choose_runtime,
    compiled_properties,
    install_exact_openvino,
    is_openvino_model,
    openvino_compilation,
)
from poseops.settings import load_settings
from poseops.skeleton import Skeleton
from poseops.weights import UnsafeWeightsError, check_checkpoint, load_checkpoint, prepare_ultralytics, resolve_weights

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_IMGSZ = 640
EXTRA_PREDICTORS = 1  # beyond OpenVINO's optimal requests: one image's pre/post-processing overlaps the others' inference


class ModelError(PoseopsError, RuntimeError):
    """Weights that cannot be loaded or do not fit the skeleton spec; the message says what to change."""


def model_imgsz(weights: Path) -> int:
    """The input size a model was trained at (a `.pt`'s train args) or exported at (an `.onnx`'s or OpenVINO folder's
    metadata).

    Serving or predicting at another size than the model's own gives other detections, so
    every runtime uses this unless told otherwise; DEFAULT_IMGSZ when the file does not say.
    """
    if is_openvino_model(weights):
        import yaml

        meta_file = (weights if weights.is_dir() else weights.parent) / "metadata.yaml"
        size = (yaml.safe_load(meta_file.read_text()) or {}).get("imgsz", DEFAULT_IMGSZ) if meta_file.is_file() else DEFAULT_IMGSZ
        return int(max(size) if isinstance(size, list | tuple) else size)
    if weights.suffix.lower() == ".onnx":
        import onnx

        graph = onnx.load(str(weights), load_external_data=False)
        meta = {p.key: p.value for p in graph.metadata_props}
        if "imgsz" in meta:
            size = ast.literal_eval(meta["imgsz"])
            return int(max(size) if isinstance(size, list | tuple) else size)
        dims = [d.dim_value for d in graph.graph.input[0].type.tensor_type.shape.dim[2:]]
        return max(dims) if dims and all(dims) else DEFAULT_IMGSZ
    size = (load_checkpoint(weights).get("train_args") or {}).get("imgsz", DEFAULT_IMGSZ)
    return int(max(size) if isinstance(size, list | tuple) else size)


def export_onnx(weights: str | Path, imgsz: int = DEFAULT_IMGSZ, cache_dir: Path | None = None) -> Path:
    """The ONNX export of a `.pt` checkpoint, made once and cached by content hash (`export_cached`)."""
    return export_cached(Path(weights), "onnx", imgsz, cache_dir)


def export_cached(weights: Path, runtime: str, imgsz: int = DEFAULT_IMGSZ, cache_dir: Path | None = None) -> Path:
    """The ONNX file or OpenVINO folder of a `.pt` checkpoint, made once and cached by content hash.

    ONNX exports go to `cache_dir` (default `$POSEOPS_HOME/onnx`), OpenVINO ones beside it (`../openvino`).
    Ultralytics writes its export beside the checkpoint, so the export runs on a copy in a temporary
    folder of the cache; the result is moved into place atomically, which makes concurrent first starts safe.
    """
    onnx_dir = (cache_dir or load_settings().home / "onnx").resolve()
    folder = onnx_dir if runtime == "onnx" else onnx_dir.parent / "openvino"
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{weights.stem}-{file_sha256(weights)[:16]}-{imgsz}"
    target = folder / (f"{stem}.onnx" if runtime == "onnx" else f"{stem}_openvino_model")
    if target.exists():
        return target
    checked(weights)
    log.info("exporting %s to %s (imgsz %d) into %s", weights, runtime, imgsz, folder)
    prepare_ultralytics()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(dir=folder, prefix=".export-") as tmp:
        copy = Path(tmp) / weights.name
        shutil.copyfile(weights, copy)
        try:
            exported = YOLO(str(copy)).export(format=runtime, imgsz=imgsz, dynamic=False, verbose=False)
        except Exception as e:
            raise ModelError(f"{weights}: the {runtime} export failed ({e}); check the checkpoint or serve it with "
                             "runtime 'torch'") from e
        with contextlib.suppress(OSError):  # another process finished the same export first: keep its copy
            os.replace(exported, target)
    return target


def checked(weights: Path) -> Path:
    """`weights`, after refusing a `.pt` that is not weights alone (`poseops.weights.check_checkpoint`)."""
    try:
        check_checkpoint(weights)
    except UnsafeWeightsError as e:
        raise ModelError(str(e)) from None
    return weights


def load_model(weights: str | Path, skeleton: Skeleton, runtime: str | None = None, imgsz: int | None = None,
               precision: str = "fp32", cache_dir: Path | None = None, performance: str = "throughput") -> PoseModel:
    """The model on the best runtime for this machine (`poseops.runtimes.choose_runtime`), as the service and
    autolabel load it: `runtime` None means the POSEOPS_RUNTIME setting, else `auto` (OpenVINO on a CPU).
    `performance`: `throughput` for concurrent callers (the service), `latency` for one image at a time."""
    return PoseModel(weights, skeleton, runtime, imgsz, cache_dir, precision=precision, performance=performance)


def _content_sha256(path: Path) -> str:
    """The sha256 of a model file, or of an OpenVINO folder's weights (.bin)."""
    if path.is_dir():
        return file_sha256(next(path.glob("*.bin")))
    return file_sha256(path.with_suffix(".bin") if path.suffix.lower() == ".xml" else path)


class PoseModel:
    """One YOLO-pose model and the skeleton that names its keypoints.

    Loading warms the predictor up once and checks that the model's classes and keypoint
    count match the skeleton spec. `detect` is thread-safe. ONNX Runtime and PyTorch run one
    image at a time (Ultralytics' predictor keeps per-call state, and they use every core for
    one image anyway). OpenVINO is compiled for `performance`: `throughput` (the default, for
    concurrent callers such as the service): one inference stream per core or two, with a
    predictor per infer request, so concurrent calls run side by side; `latency` (for one image
    at a time: `poseops predict`, autolabel): one stream on every core, as ONNX Runtime runs.
    """

    def __init__(
        self,
        weights: str | Path,
        skeleton: Skeleton,
        runtime: str | None = "auto",  # None: the POSEOPS_RUNTIME setting, else auto
        imgsz: int | None = None,  # None: the model's own (`model_imgsz`)
        cache_dir: Path | None = None,
        precision: str = "fp32",
        performance: str = "throughput",  # OpenVINO's hint: `latency` for one image at a time
    ) -> None:
        if performance not in PERFORMANCE_HINTS:
            raise ModelError(f"unknown performance hint {performance!r}: use one of {', '.join(PERFORMANCE_HINTS)}")
        self.skeleton, self.performance = skeleton, performance
        self.weights = Path(resolve_weights(weights))
        if not self.weights.exists():
            raise ModelError(
                f"weights {str(weights)!r} not found: pass the path of a .pt or .onnx file (or an OpenVINO folder), "
                "or set POSEOPS_WEIGHTS_DIR to the folder that holds it"
            )
        try:
            choice = choose_runtime(self.weights, runtime, precision=precision)
        except RuntimeChoiceError as e:
            raise ModelError(str(e)) from None
        self.runtime, self.precision, self.runtime_reason = choice.runtime, choice.precision, choice.reason
        source = choice.path
        self.weights_sha256 = _content_sha256(source)
        checked(source)  # weights are data: a pickle that would run code is refused here
        self.imgsz = imgsz = imgsz or model_imgsz(source)
        exported = source.suffix.lower() == ".pt" and self.runtime != "torch"
        self.model_path = export_cached(source, self.runtime, imgsz, cache_dir) if exported else source

        prepare_ultralytics()
        if self.runtime == "openvino":
            install_exact_openvino()
        self._predictors: queue.Queue = queue.Queue()
        self._ov_properties: dict[str, str] = {}
        openvino = self.runtime == "openvino"
        with openvino_compilation(performance.upper()) if openvino else contextlib.nullcontext():
            first = self._new_predictor()
            backend = first.predictor.model
            self.model_names = [str(backend.names[i]) for i in sorted(backend.names)]
            kpt_shape = list(getattr(backend, "kpt_shape", None) or [])
            if not kpt_shape:
                raise ModelError(f"{self.weights}: not a pose model (no kpt_shape); train or export a YOLO-pose model")
            self._check_skeleton(kpt_shape)
            self.keypoint_dims = int(kpt_shape[1])
            self._start_pool(first)

    def _new_predictor(self) -> Any:
        """A YOLO object whose predictor is built and warmed up (one prediction on a blank image)."""
        import numpy as np
        from ultralytics import YOLO

        yolo = YOLO(str(self.model_path), task="pose")
        yolo.predict(np.zeros((self.imgsz, self.imgsz, 3), dtype=np.uint8), imgsz=self.imgsz, device="cpu", verbose=False)
        return yolo

    def _start_pool(self, first: Any) -> None:
        """One predictor (ONNX Runtime, PyTorch), or, on OpenVINO, one per infer request of the model compiled once
        with its performance hint (`poseops.runtimes.openvino_compilation`), plus EXTRA_PREDICTORS."""
        if self.runtime != "openvino":
            self._predictors.put(first)
            self.concurrency = 1
            return
        compiled = first.predictor.model.backend.ov_compiled_model
        requests = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS"))
        yolos = [first, *(self._new_predictor() for _ in range(requests - 1 + EXTRA_PREDICTORS))]
        for yolo in yolos:
            yolo.predictor.model.backend.ov_compiled_model = InferRequest(compiled)
            self._predictors.put(yolo)
        self.concurrency = len(yolos)
        self._ov_properties = compiled_properties(compiled)

    def _check_skeleton(self, kpt_shape: list[int]) -> None:
        spec = self.skeleton
        if kpt_shape[0] != spec.keypoint_count:
            raise ModelError(
                f"{self.weights} predicts {kpt_shape[0]} keypoints but {spec.source} defines "
                f"{spec.keypoint_count}: serve the skeleton spec the model was trained with"
            )
        if len(self.model_names) != len(spec.classes):
            raise ModelError(
                f"{self.weights} has {len(self.model_names)} classes ({', '.join(self.model_names)}) but "
                f"{spec.source} defines {len(spec.classes)} ({', '.join(spec.class_names)}): "
                "serve the skeleton spec the model was trained with"
            )
        if self.model_names != spec.class_names:
            log.warning(
                "model class names %s differ from the skeleton's %s; the API uses the skeleton's names",
                self.model_names,
                spec.class_names,
            )

    def _predict(self, image_bgr: np.ndarray, conf: float, iou: float) -> Any:
        yolo = self._predictors.get()  # waits for a free predictor
        try:
            return yolo.predict(image_bgr, conf=conf, iou=iou, imgsz=self.imgsz, device="cpu", verbose=False)[0]
        finally:
            self._predictors.put(yolo)

    def detect(self, image_bgr: np.ndarray, conf_thres: float = 0.25, iou_thres: float = 0.45) -> list[dict[str, Any]]:
        """Detections in one BGR image (as `cv2.imread` gives), best first."""
        result = self._predict(image_bgr, conf_thres, iou_thres)
        return detections_from_result(result, self.skeleton)

    def info(self) -> dict[str, Any]:
        return {
            "weights": self.weights.name,
            "weights_sha256": self.weights_sha256,
            "runtime": self.runtime,
            "precision": self.precision,
            "runtime_reason": self.runtime_reason,
            "concurrency": self.concurrency,
            **({"openvino": self._ov_properties} if self._ov_properties else {}),
            "model_file": self.model_path.name,
            "imgsz": self.imgsz,
            "classes": self.skeleton.class_names,
            "keypoint_count": self.skeleton.keypoint_count,
        }


def detections_from_result(result: Any, skeleton: Skeleton) -> list[dict[str, Any]]:
    """An Ultralytics pose `Results` as API detections, named by the skeleton spec."""
    boxes = result.boxes
    if boxes is None or len(boxes) == 0:
        return []
    xyxy = boxes.xyxy.cpu().numpy()
    confs = boxes.conf.cpu().numpy()
    classes = boxes.cls.cpu().numpy().astype(int)
    kpts = result.keypoints.data.cpu().numpy() if result.keypoints is not None else None
    out: list[dict[str, Any]] = []
    for i, (x1, y1, x2, y2) in enumerate(xyxy):
        cls = skeleton.classes[classes[i]]
        keypoints = []
        if kpts is not None:
            for kp, row in zip(cls.keypoints, kpts[i], strict=True):
                keypoints.append(
                    {
                        "name": kp.name,
                        "x": round(float(row[0]), 2),
                        "y": round(float(row[1]), 2),
                        "confidence": round(float(row[2]), 4) if len(row) > 2 else None,
                    }
                )
        out.append(
            {
                "class": cls.name,
                "confidence": round(float(confs[i]), 4),
                "x": round(float(x1), 2),
                "y": round(float(y1), 2),
                "width": round(float(x2 - x1), 2),
                "height": round(float(y2 - y1), 2),
                "keypoints": keypoints,
            }
        )
    return out
