"""Running a YOLO-pose model on images: ONNX Runtime by default, PyTorch optional.

`PoseModel` wraps Ultralytics' own predictor, so the pre-processing (letterbox),
the non-maximum suppression and the rescaling to the original image are exactly
those of `YOLO(path).predict(...)`: the service and a direct Ultralytics call on
the same file, thresholds and `imgsz` give the same detections. (Measured on the
2-core CPU: a hand-written ONNX Runtime pipeline calling the same Ultralytics ops
was no faster than the predictor, whose overhead is a few ms against ~70-110 ms
of network; see docs/api.md.)

A `.pt` checkpoint run with the `onnx` runtime is exported once to a cached
`.onnx` file (fixed input, the size the checkpoint was trained at) under `$POSEOPS_HOME/onnx/`, keyed by the
checkpoint's sha256, so the weights folder is never written to.

Detections are plain dicts in the HTTP API's shape: `class`, `confidence`, `x`,
`y` (top-left corner of the box), `width`, `height` in pixels of the image as
shown, and `keypoints` (`{name, x, y, confidence}` in skeleton order). The model
takes decoded pixels; callers decode with the EXIF orientation applied (the
service through `poseops.imageio.displayed_rgb`, `predict` and autolabel through
OpenCV, which turns the image the same way).
"""

from __future__ import annotations

import ast
import logging
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poseops.convert import file_sha256
from poseops.errors import PoseopsError
from poseops.settings import load_settings
from poseops.skeleton import Skeleton
from poseops.weights import UnsafeWeightsError, check_checkpoint, load_checkpoint, prepare_ultralytics, resolve_weights

if TYPE_CHECKING:
    import numpy as np

log = logging.getLogger(__name__)

RUNTIMES = ("onnx", "torch")
DEFAULT_IMGSZ = 640
KEYPOINT_DRAW_THRESHOLD = 0.5  # the keypoint confidence below which drawings leave a point out (as Ultralytics does)


class ModelError(PoseopsError, RuntimeError):
    """Weights that cannot be loaded or do not fit the skeleton spec; the message says what to change."""


def model_imgsz(weights: Path) -> int:
    """The input size a model was trained at (a `.pt`'s train args) or exported at (an `.onnx`'s metadata).

    Serving or predicting at another size than the model's own gives other detections, so
    every runtime uses this unless told otherwise; DEFAULT_IMGSZ when the file does not say.
    """
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
    """The ONNX export of a `.pt` checkpoint, made once and cached by content hash.

    Ultralytics writes its export beside the checkpoint, so the export runs on a copy
    in a temporary folder of the cache; the result is moved into place atomically,
    which makes concurrent first starts safe.
    """
    weights = Path(weights)
    cache_dir = (cache_dir or load_settings().home / "onnx").resolve()
    cache_dir.mkdir(parents=True, exist_ok=True)
    target = cache_dir / f"{weights.stem}-{file_sha256(weights)[:16]}-{imgsz}.onnx"
    if target.is_file():
        return target
    checked(weights)
    log.info("exporting %s to ONNX (imgsz %d) into %s", weights, imgsz, cache_dir)
    prepare_ultralytics()
    from ultralytics import YOLO

    with tempfile.TemporaryDirectory(dir=cache_dir, prefix=".export-") as tmp:
        copy = Path(tmp) / weights.name
        shutil.copyfile(weights, copy)
        try:
            exported = YOLO(str(copy)).export(format="onnx", imgsz=imgsz, dynamic=False, verbose=False)
        except Exception as e:
            raise ModelError(f"{weights}: the ONNX export failed ({e}); check the checkpoint or serve it with runtime 'torch'") from e
        os.replace(exported, target)
    return target


def checked(weights: Path) -> Path:
    """`weights`, after refusing a `.pt` that is not weights alone (`poseops.weights.check_checkpoint`)."""
    try:
        check_checkpoint(weights)
    except UnsafeWeightsError as e:
        raise ModelError(str(e)) from None
    return weights


class PoseModel:
    """One YOLO-pose model and the skeleton that names its keypoints.

    Loading warms the predictor up once and checks that the model's classes and
    keypoint count match the skeleton spec. `detect` is thread-safe (one prediction
    at a time: Ultralytics' predictor keeps per-call state, and ONNX Runtime uses
    every core for one image anyway).
    """

    def __init__(
        self,
        weights: str | Path,
        skeleton: Skeleton,
        runtime: str = "onnx",
        imgsz: int | None = None,  # None: the model's own (`model_imgsz`)
        cache_dir: Path | None = None,
    ) -> None:
        if runtime not in RUNTIMES:
            raise ModelError(f"unknown runtime {runtime!r}: use one of {', '.join(RUNTIMES)}")
        self.skeleton = skeleton
        self.runtime = runtime
        self.weights = Path(resolve_weights(weights))
        if not self.weights.is_file():
            raise ModelError(
                f"weights {str(weights)!r} not found: pass the path of a .pt or .onnx file, "
                "or set POSEOPS_WEIGHTS_DIR to the folder that holds it"
            )
        suffix = self.weights.suffix.lower()
        if suffix not in (".pt", ".onnx"):
            raise ModelError(f"{self.weights}: expected a .pt checkpoint or an .onnx export")
        if runtime == "torch" and suffix != ".pt":
            raise ModelError(f"{self.weights}: the torch runtime needs a .pt checkpoint; use runtime 'onnx' for .onnx files")
        self.weights_sha256 = file_sha256(self.weights)
        checked(self.weights)  # weights are data: a pickle that would run code is refused here
        self.imgsz = imgsz = imgsz or model_imgsz(self.weights)
        self.model_path = export_onnx(self.weights, imgsz, cache_dir) if runtime == "onnx" and suffix == ".pt" else self.weights

        prepare_ultralytics()
        import numpy as np
        from ultralytics import YOLO

        self._lock = threading.Lock()
        self._yolo = YOLO(str(self.model_path), task="pose")
        self._predict(np.zeros((imgsz, imgsz, 3), dtype=np.uint8), 0.25, 0.45)  # builds the predictor
        backend = self._yolo.predictor.model
        self.model_names = [str(backend.names[i]) for i in sorted(backend.names)]
        kpt_shape = list(getattr(backend, "kpt_shape", None) or [])
        if not kpt_shape:
            raise ModelError(f"{self.weights}: not a pose model (no kpt_shape); train or export a YOLO-pose model")
        self._check_skeleton(kpt_shape)
        self.keypoint_dims = int(kpt_shape[1])

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
        with self._lock:
            return self._yolo.predict(image_bgr, conf=conf, iou=iou, imgsz=self.imgsz, device="cpu", verbose=False)[0]

    def detect(self, image_bgr: np.ndarray, conf_thres: float = 0.25, iou_thres: float = 0.45) -> list[dict[str, Any]]:
        """Detections in one BGR image (as `cv2.imread` gives), best first."""
        result = self._predict(image_bgr, conf_thres, iou_thres)
        return detections_from_result(result, self.skeleton)

    def info(self) -> dict[str, Any]:
        return {
            "weights": self.weights.name,
            "weights_sha256": self.weights_sha256,
            "runtime": self.runtime,
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


# Drawing has its own home (poseops.drawing), which the evaluate stage's error gallery loads without the runtimes.
from poseops.drawing import draw_detections  # noqa: E402, F401
