"""`params.yaml`: the one source of run configuration, validated on load.

Sections are named after the DVC stages (`prepare`, `train`, `evaluate`, `export`);
keys that several stages read sit at the top (`dataset`, `skeleton`, `device`, `mlflow`,
`promote`). Every key has a default here, equal to the value in the shipped
`params.yaml`, so a file may name only what it changes.

The sections that are not about one training (`pull`, `autolabel`, `schedules`) are typed
and validated here too, and left out of what MLflow logs (`Params.flat`). Every entry
point (the CLI, the flows, the DVC stages, the service) loads this file once through
`load_params` and passes the typed object on; nothing else reads `params.yaml`.

Loading rejects what Ultralytics or DVC would otherwise accept silently or fail on
late: an unknown key (a typo such as `train.epoch`) is an error naming the key and
the keys allowed beside it; a wrong type or an out-of-range value is an error naming
the key, the value and what is allowed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from poseops.constants import DEFAULT_CONF_THRES, DEFAULT_IOU_THRES, SCORES, SECRET_HINTS
from poseops.errors import PoseopsError

PARAMS_FILE = "params.yaml"

POSE_ARCHITECTURE = re.compile(r"^(yolo11|yolov8|yolo26)[nslmx]-pose(-p6)?\.(pt|yaml)$")
RUN_URI = re.compile(r"^runs:/[0-9a-f]{32}/.+$")
MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(@(?P<alias>[A-Za-z0-9_-]+)|/(?P<version>\d+))$")
DEVICE = re.compile(r"^(cpu|mps|\d+(,\d+)*)$")
EXPORT_FORMATS = ("onnx", "openvino", "engine")
OPTIMIZERS = ("auto", "SGD", "MuSGD", "Adam", "Adamax", "AdamW", "NAdam", "RAdam", "RMSProp")
NOT_TRAINING = ("pull", "autolabel", "schedules")  # sections that do not change a training: not logged to MLflow
CRON_FIELD = re.compile(r"^[0-9A-Za-z*/,?#LW-]+$")


class ParamsError(PoseopsError, ValueError):
    """A params file that cannot be used; the message names the key and what is allowed."""


def _spec(default: Any = dataclasses.MISSING, *, allowed: str = "", lo: float | None = None, hi: float | None = None,
          choices: tuple[Any, ...] = (), check: typing.Callable[[Any], str | None] | None = None, **kw: Any) -> Any:
    """A dataclass field carrying its validation: a range, choices, or a check returning an error text."""
    meta = {"allowed": allowed, "lo": lo, "hi": hi, "choices": choices, "check": check}
    if isinstance(default, (dict, list)) or dataclasses.is_dataclass(default):
        return field(default_factory=lambda: default, metadata=meta, **kw)  # type: ignore[misc]
    return field(default=default, metadata=meta, **kw)


def _fraction(default: float) -> Any:
    return _spec(default, lo=0.0, hi=1.0)


# --- checks of single values ------------------------------------------------------------


def check_model(value: str) -> str | None:
    if POSE_ARCHITECTURE.match(value):
        return None
    is_path = "/" in value or "\\" in value
    if is_path and value.endswith((".pt", ".yaml", ".yml")):
        return None
    return ("must be an Ultralytics pose architecture: yolo11{n,s,m,l,x}-pose or yolov8{n,s,m,l,x}-pose "
            "(also yolo26{n,s,m,l,x}-pose) ending in .pt (pretrained) or .yaml (from scratch), "
            "or a path to a .pt/.yaml file")


def check_init_weights(value: str | None) -> str | None:
    if value is None or RUN_URI.match(value) or MODEL_URI.match(value):
        return None
    if value.endswith(".pt"):
        return None
    return ("must be empty (start from `train.model`), a path to a .pt file, runs:/<run id>/<path to .pt>, "
            "models:/<registered name>@<alias> or models:/<registered name>/<version>")


def check_device(value: str) -> str | None:
    return None if DEVICE.match(value) else "must be 'cpu', 'mps', a GPU index such as '0', or several such as '0,1'"


def check_batch(value: int | float) -> str | None:
    if isinstance(value, int) and (value >= 1 or value == -1):
        return None
    if isinstance(value, float) and 0.0 < value < 1.0:
        return None
    return "must be an integer ≥ 1, -1 (AutoBatch on a GPU), or a fraction in (0, 1) of GPU memory"


def check_imgsz(value: int) -> str | None:
    return None if value >= 32 and value % 32 == 0 else "must be a multiple of 32, at least 32 (e.g. 320, 640)"


def check_cron(value: str) -> str | None:
    fields = value.split()
    if len(fields) in (5, 6) and all(CRON_FIELD.match(f) for f in fields):
        return None
    return "must be a cron string of 5 fields (minute hour day month weekday), e.g. '0 3 * * *', or empty"


def check_url(value: str) -> str | None:
    return None if re.match(r"^https?://[^\s/]+", value) else "must be an http(s) URL such as http://127.0.0.1:3000"


def check_name(value: str) -> str | None:
    return None if re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", value) else "must be letters, digits, '_', '-', '.'"


# --- the schema ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DatasetParams:
    """The dataset directory `dir` (YOLO-pose layout with data.yaml; `data/<name>` by convention)."""

    name: str = _spec("coco8-pose", check=check_name)
    dir: str = "data/coco8-pose"


@dataclass(frozen=True)
class MlflowParams:
    experiment: str = "poseops"
    run_name: str | None = None  # empty: "<dataset>-<model>-<time>"
    registered_model: str = _spec("poseops-pose", check=check_name)


@dataclass(frozen=True)
class PrepareParams:
    min_train_images: int = _spec(1, lo=1)
    min_val_images: int = _spec(1, lo=1)


@dataclass(frozen=True)
class AugmentParams:
    hsv_h: float = _fraction(0.015)
    hsv_s: float = _fraction(0.7)
    hsv_v: float = _fraction(0.4)
    degrees: float = _spec(0.0, lo=0.0, hi=180.0)
    translate: float = _fraction(0.1)
    scale: float = _fraction(0.5)
    shear: float = _spec(0.0, lo=0.0, hi=180.0)
    perspective: float = _spec(0.0, lo=0.0, hi=0.001)
    flipud: float = _fraction(0.0)
    fliplr: float = _fraction(0.5)
    mosaic: float = _fraction(1.0)
    mixup: float = _fraction(0.0)
    close_mosaic: int = _spec(10, lo=0)


@dataclass(frozen=True)
class NewHeadParams:
    """The recipe of a training whose starting weights' keypoint head does not fit the skeleton (another keypoint
    count or names: Ultralytics starts that head new), with `train.recipe: auto` (poseops.training.recipe)."""

    optimizer: str = _spec("AdamW", choices=OPTIMIZERS)
    lr0: float = _spec(0.002, lo=0.0, hi=1.0)
    warmup_epochs: float = _spec(3.0, lo=0.0)
    min_epochs: int = _spec(30, lo=1)  # fewer epochs: a warning (the head usually stays at pose mAP 0)


@dataclass(frozen=True)
class TrainParams:
    model: str = _spec("yolo11n-pose.pt", check=check_model)
    init_weights: str | None = _spec(None, check=check_init_weights)
    epochs: int = _spec(300, lo=1)
    batch: int | float = _spec(16, check=check_batch)
    imgsz: int = _spec(640, check=check_imgsz)
    patience: int = _spec(100, lo=0)
    seed: int = _spec(0, lo=0)
    deterministic: bool = True
    workers: int = _spec(8, lo=0)
    plots: bool = True
    optimizer: str = _spec("auto", choices=OPTIMIZERS)
    lr0: float = _spec(0.01, lo=0.0, hi=1.0)
    lrf: float = _spec(0.01, lo=0.0, hi=1.0)
    momentum: float = _fraction(0.937)
    weight_decay: float = _fraction(0.0005)
    warmup_epochs: float = _spec(3.0, lo=0.0)
    cos_lr: bool = False
    resume: bool = True  # resume an interrupted run of the same params from its last.pt
    # auto: a head that does not fit the skeleton trains with new_head's optimizer, lr0 and warm-up; params: as written
    recipe: str = _spec("auto", choices=("auto", "params"))
    new_head: NewHeadParams = _spec(NewHeadParams())
    augment: AugmentParams = _spec(AugmentParams())


@dataclass(frozen=True)
class EvaluateParams:
    split: str = _spec("val", choices=("val", "test"))
    batch: int = _spec(16, lo=1)
    conf: float = _fraction(0.001)
    iou: float = _fraction(0.7)
    match_conf: float = _fraction(0.25)  # per-keypoint PCK, RMSE, visibility, per-image OKS: detections at least this sure
    gallery_images: int = _spec(12, lo=0, hi=200)  # the error gallery: this many worst val images (lowest OKS)


def check_formats(value: list) -> str | None:
    if not value or any(f not in EXPORT_FORMATS for f in value) or len(set(value)) != len(value):
        return f"must be a list of distinct formats among {', '.join(EXPORT_FORMATS)}, e.g. [onnx, openvino]"
    return None if "onnx" in value else "must include onnx (every registered version carries model.onnx)"


@dataclass(frozen=True)
class ExportParams:
    """What the export step (the end of the evaluate stage) writes, each checked against best.pt on the val split before it is registered
    (poseops.training.exports): `formats` (onnx, openvino on a CPU; engine = TensorRT, on a GPU),
    FP16 (`half`) and OpenVINO INT8 (`int8`, calibrated on `int8_images` of the train split)."""

    formats: list[str] = _spec(["onnx", "openvino"], check=check_formats)
    opset: int | None = _spec(None, lo=7, hi=25)
    simplify: bool = False  # onnxslim: the same outputs, and ONNX Runtime optimizes the graph itself as it loads it
    dynamic: bool = False
    half: bool = False
    int8: bool = False  # also best_int8_openvino_model/ (needs openvino in formats)
    int8_images: int = _spec(300, lo=1)  # train images for the INT8 calibration (fewer when the split is smaller)
    tolerance: float = _spec(0.02, lo=0.0, hi=1.0)  # pose mAP50-95 an fp32/fp16 export may lose against best.pt
    int8_tolerance: float = _spec(0.05, lo=0.0, hi=1.0)  # ... and the INT8 export


@dataclass(frozen=True)
class PromoteParams:
    """Move the `alias` to a new version when `metric` ≥ `min_metric` and ≥ the champion's + `min_improvement`
    (0: at least as good), the champion being of the same dataset and skeleton."""

    metric: str = _spec("pose_mAP50-95", choices=("pose_mAP50-95", "pose_mAP50", "fitness"))
    min_improvement: float = _spec(0.0, lo=-1.0, hi=1.0)
    min_metric: float = _spec(0.01, lo=0.0, hi=2.0)  # the floor, even without a champion (fitness reaches 2)
    alias: str = _spec("champion", check=check_name)
    auto: bool = True  # the training flow promotes after a successful run
    # A challenger whose PCK@0.1 on any keypoint is more than `max_keypoint_drop` below the champion's
    # (same val split) is refused (`refuse`), promoted with a warning (`flag`), or not checked (`off`).
    keypoint_guard: str = _spec("refuse", choices=("refuse", "flag", "off"))
    max_keypoint_drop: float = _fraction(0.05)


@dataclass(frozen=True)
class PullParams:
    """Label Studio → data/<dataset> (poseops.pull, docs/pull.md)."""

    min_images: int = _spec(8, lo=2)  # one image each for train and val at least
    min_images_recommended: int = _spec(250, lo=0)
    val_fraction: float = _spec(0.2, lo=0.01, hi=0.99)
    allow_unlabeled: bool = False
    data_root: str = "data"
    workers: int = _spec(8, lo=1)  # parallel image downloads
    # Label checks (poseops.labelchecks): refuse the pull when more than this share of the labeled tasks is
    # flagged (left/right swap, limb length, the model's disagreement); 1: never refuse.
    max_flagged: float = _fraction(0.1)
    check_model_url: str | None = _spec(None, check=check_url)  # a running poseops service to judge labels; empty: off


@dataclass(frozen=True)
class AutolabelParams:
    """The model pre-labels the tasks nobody labeled (poseops.autolabel, docs/autolabel.md)."""

    task_runner: str = _spec("threads", choices=("threads", "dask"))
    dask_address: str | None = None  # empty: a local Dask cluster
    workers: int = _spec(4, lo=1)
    batch_size: int = _spec(16, lo=1)
    conf_thres: float = _fraction(DEFAULT_CONF_THRES)
    iou_thres: float = _fraction(DEFAULT_IOU_THRES)
    keypoint_conf: float = _fraction(0.5)  # keypoints below this are left for the annotator
    score: str = _spec("confidence", choices=SCORES)  # what orders the queue (poseops.scores); flip: 2 inferences
    # temporal score: folders holding the videos of video frames (found by file name, checked by content hash)
    video_dirs: list[str] = _spec(["."])
    # at most this many near-identical pictures (poseops.diversity) per tier of the queue; 0: no quota
    diversity_quota: int = _spec(3, lo=0)


@dataclass(frozen=True)
class SchedulesParams:
    """`poseops serve-flows`: a cron string per deployment; empty = only when triggered."""

    dataset: str = _spec("demo-people", check=check_name)
    service_url: str | None = _spec(None, check=check_url)  # empty: POSEOPS_SERVICE_URL (settings)
    pull_labels: str | None = _spec(None, check=check_cron)
    train: str | None = _spec(None, check=check_cron)
    autolabel: str | None = _spec("0 * * * *", check=check_cron)
    loop: str | None = _spec("0 3 * * *", check=check_cron)
    # annotation events (Label Studio webhooks to the ML backend): this many changed labels start the loop; 0: never
    retrain_after: int = _spec(0, lo=0)
    retrain_cooldown_minutes: float = _spec(30.0, lo=0.0)  # at most one event-started loop per this long


@dataclass(frozen=True)
class Params:
    dataset: DatasetParams = _spec(DatasetParams())
    skeleton: str = "label_config/skeletons/person.yaml"
    device: str = _spec("cpu", check=check_device)
    mlflow: MlflowParams = _spec(MlflowParams())
    prepare: PrepareParams = _spec(PrepareParams())
    train: TrainParams = _spec(TrainParams())
    evaluate: EvaluateParams = _spec(EvaluateParams())
    export: ExportParams = _spec(ExportParams())
    promote: PromoteParams = _spec(PromoteParams())
    pull: PullParams = _spec(PullParams())
    autolabel: AutolabelParams = _spec(AutolabelParams())
    schedules: SchedulesParams = _spec(SchedulesParams())

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def champion_uri(self) -> str:
        """The registered model's champion: what deploy serves by default."""
        return f"models:/{self.mlflow.registered_model}@{self.promote.alias}"

    def flat(self) -> dict[str, Any]:
        """`section.key: value` pairs (what MLflow logs as params), secrets never included."""
        training = {k: v for k, v in self.to_dict().items() if k not in NOT_TRAINING}
        return {k: ",".join(v) if isinstance(v, list) else v for k, v in _flatten(training).items()
                if not any(h in k.lower() for h in SECRET_HINTS)}

    def replace(self, **overrides: Any) -> Params:
        """A copy with `section.key=value` overrides applied (validated like the file)."""
        doc = self.to_dict()
        for dotted, value in overrides.items():
            _set_dotted(doc, dotted.split("."), value)
        return parse_params(doc, source="overrides")


# --- loading ------------------------------------------------------------------------------


def load_params(path: str | Path = PARAMS_FILE, overrides: dict[str, Any] | None = None,
                missing_ok: bool = False) -> Params:
    """Read and validate a params file; `overrides` (`{"train.epochs": 3}`) are applied on top.

    `missing_ok`: no file means every default (the commands that work outside a pipeline checkout).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if missing_ok:
            text = ""
        else:
            raise ParamsError(f"{path}: no such params file; run from the project root or pass its path") from None
    try:
        doc = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML: {e}") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(doc, dotted.split("."), value)
    return parse_params(doc, source=str(path))


@contextlib.contextmanager
def file_kept(path: str | Path) -> Iterator[None]:
    """Put the params file back byte for byte afterwards (`dvc exp run -S` writes its overrides into it)."""
    path = Path(path)
    before = path.read_bytes() if path.is_file() else None
    try:
        yield
    finally:
        if before is not None and (not path.is_file() or path.read_bytes() != before):
            path.write_bytes(before)


def parse_params(doc: Any, source: str = PARAMS_FILE) -> Params:
    if not isinstance(doc, dict):
        raise ParamsError(f"{source}: expected a mapping of sections (dataset, train, ...), got {type(doc).__name__}")
    return _build(Params, doc, source, prefix="")


def parse_override(text: str) -> tuple[str, Any]:
    """`train.epochs=3` → ("train.epochs", 3): the value is read as YAML, like `dvc exp run -S`."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ParamsError(f"bad override {text!r}: write section.key=value, e.g. train.epochs=3")
    return key.strip(), yaml.safe_load(value) if value.strip() else None


def _build(cls: type, doc: dict, source: str, prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in doc:
        if key not in fields:
            where = f"'{prefix.rstrip('.')}'" if prefix else "the top level"
            close = difflib.get_close_matches(str(key), list(fields), n=1)
            hint = f"; did you mean '{prefix}{close[0]}'?" if close else ""
            raise ParamsError(f"{source}: unknown key '{prefix}{key}' (allowed in {where}: {', '.join(fields)}){hint}")
    values = {}
    for name, f in fields.items():
        key = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            raw = doc.get(name) if doc.get(name) is not None else {}
            if not isinstance(raw, dict):
                raise ParamsError(f"{source}: '{key}' must be a section (a mapping of keys), got {raw!r}")
            values[name] = _build(hint, raw, source, prefix=f"{key}.")
        elif name in doc:
            values[name] = _check(doc[name], hint, f, key, source)
    return cls(**values)


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _type_name(hint: Any) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)] if _is_union(hint) else [hint]
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a section (a mapping)",
             list: "a list of strings"}
    text = " or ".join(names.get(typing.get_origin(a) or a, getattr(a, "__name__", str(a))) for a in args)
    return text + (" (or empty)" if type(None) in typing.get_args(hint) else "")


def _check(value: Any, hint: Any, f: dataclasses.Field, key: str, source: str) -> Any:
    meta = f.metadata
    optional = type(None) in typing.get_args(hint)
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ParamsError(f"{source}: '{key}' is empty; it must be {_type_name(hint)}")
    members = typing.get_args(hint) if _is_union(hint) else (hint,)  # X | None or X | Y, else X (also list[str])
    allowed = [typing.get_origin(a) or a for a in members if a is not type(None)]
    if str in allowed and key == "device" and isinstance(value, int) and not isinstance(value, bool):
        value = str(value)  # `device: 0` in YAML is the GPU index 0
    if float in allowed and isinstance(value, int) and not isinstance(value, bool) and int not in allowed:
        value = float(value)
    if not any(isinstance(value, a) and not (a is not bool and isinstance(value, bool)) for a in allowed) or (
            isinstance(value, list) and not all(isinstance(v, str) for v in value)):
        raise ParamsError(f"{source}: '{key}' must be {_type_name(hint)}, got {value!r} ({type(value).__name__})")
    lo, hi = meta.get("lo"), meta.get("hi")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        span = f"between {lo} and {hi}" if lo is not None and hi is not None else f"≥ {lo}" if lo is not None else f"≤ {hi}"
        raise ParamsError(f"{source}: '{key}' is {value!r}; it must be {span}")
    if meta.get("choices") and value not in meta["choices"]:
        raise ParamsError(f"{source}: '{key}' is {value!r}; allowed: {', '.join(map(str, meta['choices']))}")
    if meta.get("check"):
        problem = meta["check"](value)
        if problem:
            raise ParamsError(f"{source}: '{key}' is {value!r}; it {problem}")
    return value


def _flatten(doc: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in doc.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _set_dotted(doc: dict, keys: list[str], value: Any) -> None:
    node = doc
    for k in keys[:-1]:
        child = node.get(k)
        if child is None:
            child = node[k] = {}
        if not isinstance(child, dict):
            raise ParamsError(f"override {'.'.join(keys)}: '{k}' is not a section")
        node = child
    node[keys[-1]] = value
