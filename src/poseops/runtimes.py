"""Which runtime runs a model where, and OpenVINO set up so that it answers as ONNX Runtime does.

    runtime   runs                                          best on
    openvino  an OpenVINO IR folder (`best_openvino_model/`)     the CPU: the default there when OpenVINO is installed
    onnx      `model.onnx` through ONNX Runtime             a GPU (CUDA, with onnxruntime-gpu); any CPU without OpenVINO
    torch     `best.pt` through PyTorch                     a GPU; checking the other two
    auto      the best of the above for the device and the files at hand (`choose_runtime`)

Precision: `fp32` (the exact one), `fp16` (half weights) or `int8` (OpenVINO's post-training
quantization, the `best_int8_openvino_model/` export). On a CPU with AVX-512 BF16 or AMX, OpenVINO would
otherwise compute in bfloat16 (keypoints off by pixels); every OpenVINO model poseops loads, for serving
or for an export's accuracy check, is compiled with `INFERENCE_PRECISION_HINT: f32`
(`ExactOpenVINOBackend`, registered with Ultralytics' AutoBackend), so its detections match ONNX
Runtime's to ~1e-4 px.

Performance hint: OpenVINO compiles a model for `latency` (one inference stream using every core: the fastest
for one image at a time, as `poseops predict` and autolabel call it) or for `throughput` (several streams of a
core or two each: the most images per second from concurrent callers, as the service gets them, but one image
alone runs on one stream's cores). Both compute the same f32 numbers.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from poseops.errors import PoseopsError

RUNTIMES = ("auto", "openvino", "onnx", "torch")
PRECISIONS = ("fp32", "fp16", "int8")
RUNTIME_ENV = "POSEOPS_RUNTIME"  # the override of `auto`, for the service and autolabel alike
PRECISION_ENV = "POSEOPS_PRECISION"
# the files of a registered model version (the evaluate stage's export step writes them; `poseops deploy` downloads them)
VERSION_FILES = {"openvino": "best_openvino_model", "openvino-int8": "best_int8_openvino_model", "onnx": "model.onnx",
                 "torch": "best.pt"}
EXACT = {"INFERENCE_PRECISION_HINT": "f32"}  # never bfloat16, whatever the CPU offers
# OpenVINO's performance hint, by who calls the model: `latency` (one stream on every core) for one image at a
# time (`poseops predict`, autolabel), `throughput` (a stream per core or two) for concurrent callers (the service)
PERFORMANCE_HINTS = ("latency", "throughput")


class RuntimeChoiceError(PoseopsError, ValueError):
    """A runtime or precision that cannot run the model given; the message says what would."""


@dataclass(frozen=True)
class RuntimeChoice:
    """The runtime a model runs on, the file or folder it loads, its precision, and why this one."""

    runtime: str  # openvino | onnx | torch
    path: Path
    precision: str  # fp32 | fp16 | int8
    reason: str


def openvino_installed() -> bool:
    return importlib.util.find_spec("openvino") is not None


def is_openvino_model(path: Path) -> bool:
    """An OpenVINO export: a folder named `*_openvino_model` (as Ultralytics names them) or the .xml inside one."""
    folder = path.parent if path.suffix.lower() == ".xml" else path
    return folder.name.endswith("_openvino_model")


def openvino_precision(folder: Path) -> str:
    """The precision an OpenVINO export was made at (its metadata.yaml: args.quantize / half / int8)."""
    meta_file = (folder if folder.is_dir() else folder.parent) / "metadata.yaml"
    meta = yaml.safe_load(meta_file.read_text()) if meta_file.is_file() else {}
    args = (meta or {}).get("args") or {}
    quantize = args.get("quantize")
    if quantize == 8 or args.get("int8"):
        return "int8"
    if quantize == 16 or args.get("half"):
        return "fp16"
    return "fp32"


def requested_runtime(runtime: str | None = None) -> str:
    """`runtime`, else the POSEOPS_RUNTIME setting, else `auto`; refused when it is none of RUNTIMES."""
    value = (runtime or os.environ.get(RUNTIME_ENV, "").strip() or "auto").lower()
    if value not in RUNTIMES:
        raise RuntimeChoiceError(f"unknown runtime {value!r}: use one of {', '.join(RUNTIMES)}")
    return value


def best_for_device(device: str = "cpu") -> str:
    """The fastest exact runtime for a device: OpenVINO on a CPU (ONNX Runtime without it); ONNX Runtime on a GPU."""
    if str(device).lower() in ("cpu", "") and openvino_installed():
        return "openvino"
    return "onnx"


def choose_runtime(weights: Path, runtime: str | None = None, device: str = "cpu", precision: str = "fp32") -> RuntimeChoice:
    """The runtime that runs `weights` (a .pt, an .onnx, an OpenVINO folder, or a registered version's files)."""
    requested = requested_runtime(runtime)
    if precision not in PRECISIONS:
        raise RuntimeChoiceError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    if weights.is_dir() and not is_openvino_model(weights):
        return _from_version_files(weights, requested, device, precision)
    if is_openvino_model(weights):
        if requested not in ("auto", "openvino"):
            raise RuntimeChoiceError(f"{weights} is an OpenVINO model: serve it with runtime 'openvino' (or 'auto'), "
                                f"or give the .onnx/.pt for runtime {requested!r}")
        folder = weights if weights.is_dir() else weights.parent
        return RuntimeChoice("openvino", folder, openvino_precision(folder), "an OpenVINO model was given")
    suffix = weights.suffix.lower()
    if suffix == ".onnx":
        if requested not in ("auto", "onnx"):
            raise RuntimeChoiceError(f"{weights}: the {requested} runtime needs a .pt checkpoint (or a registered "
                                     "version's files); use runtime 'onnx' for .onnx files")
        return RuntimeChoice("onnx", weights, "fp32", "an ONNX file was given")
    if suffix == ".pt":
        chosen = best_for_device(device) if requested == "auto" else requested
        why = f"best for {device}" if requested == "auto" else "as asked"
        return RuntimeChoice(chosen, weights, "fp32", f"{why} (a .pt is exported once and cached)")
    raise RuntimeChoiceError(f"{weights}: expected a .pt checkpoint, an .onnx export or an OpenVINO model folder")


def _from_version_files(folder: Path, requested: str, device: str, precision: str) -> RuntimeChoice:
    present = {name: folder / file for name, file in VERSION_FILES.items() if (folder / file).exists()}
    if precision == "int8":
        if "openvino-int8" not in present or requested not in ("auto", "openvino"):
            raise RuntimeChoiceError(f"{folder} has no INT8 OpenVINO export ({VERSION_FILES['openvino-int8']}/) or "
                                "another runtime was asked for: register one with export.int8: true, or use fp32")
        return RuntimeChoice("openvino", present["openvino-int8"], "int8", "the INT8 export was asked for")
    order = [best_for_device(device), "onnx", "torch"] if requested == "auto" else [requested]
    for name in order:
        if name in present:
            why = "the best registered for " + device if requested == "auto" else "as asked"
            return RuntimeChoice(name, present[name], "fp32", why)
    raise RuntimeChoiceError(f"{folder} holds none of {', '.join(VERSION_FILES[n] for n in order)}: "
                        "register the version again through the pipeline (export.formats)")


def install_exact_openvino() -> None:
    """Make every OpenVINO model Ultralytics loads in this process compute in f32 (`ExactOpenVINOBackend`)."""
    from ultralytics.nn.autobackend import AutoBackend

    AutoBackend._BACKEND_MAP["openvino"] = _exact_backend()


_STATE = threading.local()  # within `openvino_compilation`: the performance hint and the models compiled so far


@contextlib.contextmanager
def openvino_compilation(hint: str) -> Iterator[None]:
    """Within: OpenVINO models load with this performance hint (and f32), each model file compiled once and shared
    by every Ultralytics predictor loaded here, which then takes infer requests of its own (`InferRequest`)."""
    _STATE.hint, _STATE.compiled = hint, {}
    try:
        yield
    finally:
        del _STATE.hint, _STATE.compiled


@functools.cache
def _exact_backend() -> Any:
    """Ultralytics' OpenVINO backend, its compilation given EXACT (and `openvino_compilation`'s hint and sharing)."""
    from ultralytics.nn.backends.openvino import OpenVINOBackend

    class ExactOpenVINOBackend(OpenVINOBackend):
        def load_model(self, weight: str | Path) -> None:
            w = Path(weight)
            self.xml = w if w.is_file() else next(w.glob("*.xml"))
            super().load_model(weight)

        @property
        def compile_model(self) -> Callable[..., Any]:
            return self._compile_model

        @compile_model.setter
        def compile_model(self, ultralytics_compile: functools.partial) -> None:
            """Ultralytics sets `compile_model = partial(core.compile_model, device_name=..., config=...)` and
            compiles through it; its config is kept, with f32 (and the hint) over it."""
            config = {**ultralytics_compile.keywords.get("config", {}), **EXACT}
            if hint := getattr(_STATE, "hint", None):
                config["PERFORMANCE_HINT"] = hint
            compile_ = functools.partial(ultralytics_compile, config=config)
            shared = getattr(_STATE, "compiled", None)
            if shared is None or getattr(self, "read_model", None) is not None:  # (read_model: one per input shape)
                self._compile_model = compile_
                return

            def compile_once(model: Any, **kw: Any) -> Any:
                if str(self.xml) not in shared:
                    shared[str(self.xml)] = compile_(model, **kw)
                return shared[str(self.xml)]

            self._compile_model = compile_once

    return ExactOpenVINOBackend


class InferRequest:
    """One infer request of a shared compiled model, callable as Ultralytics' backend calls its compiled model."""

    def __init__(self, compiled: Any) -> None:
        self.compiled = compiled
        self._request = compiled.create_infer_request()

    def __call__(self, inputs: Any) -> Any:
        return self._request.infer(inputs)  # outputs copied: the request may run again at once

    def input(self) -> Any:
        return self.compiled.input()


def compiled_properties(compiled: Any) -> dict[str, str]:
    """What an OpenVINO model was compiled with (precision, hint, streams, device), for /metadata."""
    out = {}
    for name in ("INFERENCE_PRECISION_HINT", "PERFORMANCE_HINT", "NUM_STREAMS", "EXECUTION_DEVICES"):
        try:
            value = compiled.get_property(name)
        except Exception:  # noqa: BLE001,S112 - a property this device does not report is left out
            continue
        text = value.to_string() if hasattr(value, "to_string") else ",".join(value) if isinstance(value, list) else value
        out[name.lower()] = str(text).removeprefix("PerformanceMode.")
    return out
