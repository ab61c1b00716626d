"""The detection service's state: configuration, model, skeleton, lineage, API keys.

Everything the HTTP layer (`poseops.detect_api`) needs, independent of BentoML, so
the BentoML service in `bentos/service.py` stays a thin shell and `poseops predict`
runs the same code in-process. Configuration comes from environment variables
(`ServiceConfig.ENV`), which `poseops serve` sets from its options.
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poseops import __version__
from poseops.imageio import DEFAULT_MAX_PIXELS  # decoded size limit (decompression bombs)
from poseops.inference import ModelError, PoseModel, load_model
from poseops.runtimes import PRECISION_ENV, PRECISIONS, RUNTIME_ENV, RUNTIMES, RuntimeChoiceError, choose_runtime
from poseops.skeleton import Skeleton, load_skeleton

if TYPE_CHECKING:
    import numpy as np

    from poseops.apikeys import KeyStore

log = logging.getLogger(__name__)

DEFAULT_WEIGHTS = "yolo11n-pose.pt"
DEFAULT_SKELETON = "label_config/skeletons/person.yaml"
MAX_IMAGE_BYTES = 25 * 1024 * 1024
DEFAULT_MAX_VIDEO_BYTES = 100 * 1024 * 1024  # POST /detect-video: upload size
DEFAULT_MAX_VIDEO_FRAMES = 1800  # POST /detect-video: frames predicted on per request (a minute at 30 fps)
MAX_OCR_CROPS = 16  # per request
MIN_OCR_CROP_PX = 8
LINEAGE_KEYS = ("model_name", "model_version", "mlflow_run_id", "dataset_dvc_hash", "label_studio_snapshot_id")


@dataclass(frozen=True)
class ServiceConfig:
    weights: str = DEFAULT_WEIGHTS
    skeleton: Path = Path(DEFAULT_SKELETON)
    runtime: str = "auto"  # the best for the CPU (OpenVINO) or as asked: openvino | onnx | torch (poseops.runtimes)
    precision: str = "fp32"  # int8: a registered version's INT8 OpenVINO export
    imgsz: int | None = None  # None: the size the model was trained (.pt) or exported (.onnx) at
    api_keys: Path | None = None
    lineage: Path | None = None
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_video_bytes: int = DEFAULT_MAX_VIDEO_BYTES
    max_video_frames: int = DEFAULT_MAX_VIDEO_FRAMES

    ENV = {
        "weights": "POSEOPS_WEIGHTS",
        "skeleton": "POSEOPS_SKELETON",
        "runtime": RUNTIME_ENV,
        "precision": PRECISION_ENV,
        "imgsz": "POSEOPS_IMGSZ",
        "api_keys": "POSEOPS_API_KEYS",
        "lineage": "POSEOPS_LINEAGE",
        "max_pixels": "POSEOPS_MAX_PIXELS",
        "max_video_bytes": "POSEOPS_MAX_VIDEO_BYTES",
        "max_video_frames": "POSEOPS_MAX_VIDEO_FRAMES",
    }

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ServiceConfig:
        env = dict(os.environ if env is None else env)
        values: dict[str, Any] = {}
        for name, key in cls.ENV.items():
            raw = env.get(key, "").strip()
            if not raw:
                continue
            if name in ("imgsz", "max_pixels", "max_video_bytes", "max_video_frames"):
                if not raw.isdigit() or int(raw) <= 0:
                    raise ValueError(f"{key}={raw!r}: expected a positive whole number")
                values[name] = int(raw)
            elif name in ("skeleton", "api_keys", "lineage"):
                values[name] = Path(raw)
            else:
                values[name] = raw
        config = cls(**values)
        if config.runtime not in RUNTIMES:
            raise ValueError(f"{RUNTIME_ENV}={config.runtime!r}: use one of {', '.join(RUNTIMES)}")
        if config.precision not in PRECISIONS:
            raise ValueError(f"{PRECISION_ENV}={config.precision!r}: use one of {', '.join(PRECISIONS)}")
        return config

    def with_model_files(self, folder: Path) -> ServiceConfig:
        """This config serving a deployed model version's folder (best_openvino_model/, model.onnx, best.pt, skeleton.yaml,
        lineage.json): the best of its runtimes for the CPU, or the one asked for (`poseops.runtimes.choose_runtime`)."""
        try:
            choice = choose_runtime(folder, self.runtime, precision=self.precision)
        except RuntimeChoiceError as e:
            raise ModelError(str(e)) from None
        return replace(self, weights=str(choice.path), runtime=choice.runtime, skeleton=folder / "skeleton.yaml",
                       lineage=folder / "lineage.json")

    def to_env(self) -> dict[str, str]:
        """The environment variables that make `from_env` give this config back."""
        env: dict[str, str] = {}
        for name, key in self.ENV.items():
            value = getattr(self, name)
            if value is not None:
                env[key] = str(value.resolve()) if isinstance(value, Path) else str(value)
        return env


def load_lineage(path: Path | None) -> dict[str, Any]:
    """The lineage a deploy step wrote (model name/version, MLflow run, DVC hash, Label Studio snapshot)."""
    lineage: dict[str, Any] = dict.fromkeys(LINEAGE_KEYS)
    if path is None:
        return lineage
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"{path}: lineage file not found (POSEOPS_LINEAGE); leave it unset when there is none") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path}: expected a JSON object with keys such as {', '.join(LINEAGE_KEYS)}")
    lineage.update(doc)
    return lineage


class Detector:
    """Model, skeleton, lineage and API keys of one running service.

    The constructor checks the configuration at once (a wrong path fails the start
    with a clear message); `load()` then exports/loads the model, which can take
    seconds, so the service calls it in the background and reports readiness.
    """

    def __init__(self, config: ServiceConfig) -> None:
        from poseops.apikeys import KeyStore
        from poseops.weights import resolve_weights

        self.config = config
        self.skeleton: Skeleton = load_skeleton(config.skeleton)
        self.lineage = load_lineage(config.lineage)
        self.keys: KeyStore | None = KeyStore(config.api_keys) if config.api_keys else None
        if not Path(resolve_weights(config.weights)).exists():
            raise ModelError(
                f"weights {config.weights!r} not found: set POSEOPS_WEIGHTS to a .pt or .onnx file or an OpenVINO folder "
                "(or POSEOPS_WEIGHTS_DIR to the folder holding it)"
            )
        self.model: PoseModel | None = None
        self.load_error: str | None = None

    @property
    def ready(self) -> bool:
        return self.model is not None

    def load(self) -> None:
        try:
            c = self.config
            self.model = load_model(c.weights, self.skeleton, c.runtime, c.imgsz, c.precision)
            log.info("model ready: %s", self.model.info())
        except Exception as e:
            self.load_error = str(e)
            log.exception("loading the model failed")

    def load_in_background(self) -> None:
        threading.Thread(target=self.load, name="poseops-model-loader", daemon=True).start()

    def detect(
        self,
        image_bgr: np.ndarray,
        conf_thres: float,
        iou_thres: float,
        ocr_model: str | None = None,
        ocr_classes: frozenset[str] = frozenset(),
        ocr_language: str = "eng",
    ) -> list[dict[str, Any]]:
        """Detections in a decoded image; with `ocr_model`, `text` read in the crops of `ocr_classes`."""
        if self.model is None:
            raise RuntimeError("the model is not loaded yet")
        detections = self.model.detect(image_bgr, conf_thres, iou_thres)
        if ocr_model:
            from poseops.ocr import read_text

            h, w = image_bgr.shape[:2]
            wanted = [det for det in detections if det["class"] in ocr_classes]
            # OCR costs ~0.2-1 s a crop on a CPU: the most confident MAX_OCR_CROPS are read, the rest get null
            for rank, det in enumerate(sorted(wanted, key=lambda d: -d["confidence"])):
                x1, y1 = max(0, int(det["x"])), max(0, int(det["y"]))
                x2, y2 = min(w, int(round(det["x"] + det["width"]))), min(h, int(round(det["y"] + det["height"])))
                if rank >= MAX_OCR_CROPS:
                    det["text"] = None
                elif x2 - x1 < MIN_OCR_CROP_PX or y2 - y1 < MIN_OCR_CROP_PX:
                    det["text"] = ""  # too small to hold legible text
                else:
                    det["text"] = read_text(image_bgr[y1:y2, x1:x2], ocr_model, ocr_language)
        return detections

    def metadata(self) -> dict[str, Any]:
        from poseops.ocr import installed_models

        model_info = self.model.info() if self.model is not None else {}
        weights_name = Path(self.config.weights).name
        return {
            "service": "poseops",
            "poseops_version": __version__,
            "ready": self.ready,
            "load_error": self.load_error,
            "model": {
                "name": self.lineage.get("model_name") or Path(weights_name).stem,
                "version": self.lineage.get("model_version"),
                "weights": weights_name,
                "runtime": self.config.runtime,  # until loaded: as configured (e.g. auto); then the one running
                "precision": self.config.precision,
                "imgsz": self.config.imgsz,
                **model_info,
            },
            "lineage": self.lineage,
            "skeleton": self.skeleton.to_dict(),
            "api": {
                "box": "x, y = top-left corner of the box; width, height; all in pixels of the image as shown (EXIF orientation applied)",
                "max_ocr_crops": MAX_OCR_CROPS,
                "max_image_bytes": MAX_IMAGE_BYTES,
                "max_pixels": self.config.max_pixels,
                "max_video_bytes": self.config.max_video_bytes,
                "max_video_frames": self.config.max_video_frames,
                "auth_required": self.keys is not None,
                "ocr_models": installed_models(),
            },
        }
