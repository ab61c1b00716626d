"""Training YOLO-pose: the logic the DVC stages, the Prefect flow and the CLI share.

    prepare   check the dataset against the skeleton spec, write the data.yaml to train on
              and dataset.json (DVC hash, Label Studio manifest, counts)
    train     train with Ultralytics (resuming an interrupted run from its last.pt), logging
              params, lineage and per-epoch metrics to an MLflow run
    evaluate  validate best.pt on the val split, write metrics.json, log it to the run
    export    export ONNX, log the model files and register them as a model version
    promote   move the `champion` alias to a version when it is at least as good (not a DVC stage:
              it changes the registry, not files)

Each stage reads its inputs from and writes its outputs to the paths of a `Layout`
(the DVC stages pass them from dvc.yaml), and finds the MLflow run through the state
file the train stage leaves in its output folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from poseops import tracking
from poseops.errors import PoseopsError
from poseops.params import Params
from poseops.processes import alive
from poseops.settings import load_settings
from poseops.skeleton import Skeleton, load_skeleton
from poseops.weights import UnsafeWeightsError, check_checkpoint, load_checkpoint, prepare_ultralytics, resolve_weights

STATE_FILE = "poseops.json"  # in the train folder: the MLflow run id and what the run was trained with
VERSION_FILE = "model_version.json"  # in the model folder: the registered version of this pipeline run
MODEL_ARTIFACTS = "model"  # the run's artifact folder that a model version points to
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"}
SECRET_HINTS = ("password", "token", "secret", "api_key", "apikey", "credential")
ULTRALYTICS_INTEGRATIONS_OFF = ("mlflow", "dvc", "clearml", "comet", "raytune", "tensorboard", "wandb", "sync")


class TrainingError(PoseopsError, RuntimeError):
    """A training step that cannot go on; the message names the problem and the fix."""


@dataclass(frozen=True)
class Layout:
    """Where each stage reads and writes, relative to the project root (dvc.yaml passes the same)."""

    prepared: Path = Path("data/prepared")
    train: Path = Path("runs/train")
    epochs_csv: Path = Path("reports/epochs.csv")
    evaluate: Path = Path("runs/evaluate")
    metrics: Path = Path("reports/metrics.json")
    model: Path = Path("models")

    def under(self, root: Path) -> Layout:
        return Layout(**{k: root / v for k, v in asdict(self).items()})


# --- Ultralytics --------------------------------------------------------------------------------


def configure_ultralytics() -> None:
    """Offline-ready Ultralytics with its own integrations off (we log to MLflow ourselves).

    Its settings file lives in `YOLO_CONFIG_DIR`, the project's `<POSEOPS_HOME>/ultralytics` by default.
    """
    if "ultralytics" not in sys.modules:
        config_dir = os.environ.get("YOLO_CONFIG_DIR")
        prepare_ultralytics(Path(config_dir) if config_dir else load_settings().home / "ultralytics")
    from ultralytics import settings

    off = {key: False for key in ULTRALYTICS_INTEGRATIONS_OFF if settings.get(key) is not False}
    if off:
        settings.update(off)


def ultralytics_train_args(params: Params) -> dict[str, Any]:
    t = params.train
    args = {k: getattr(t, k) for k in ("epochs", "batch", "imgsz", "patience", "seed", "deterministic", "workers", "plots",
                                       "optimizer", "lr0", "lrf", "momentum", "weight_decay", "warmup_epochs", "cos_lr")}
    return {**args, **asdict(t.augment), "device": params.device}


# --- prepare ------------------------------------------------------------------------------------


def prepare(params: Params, root: Path = Path("."), layout: Layout = Layout()) -> dict[str, Any]:
    """Check the dataset against the skeleton spec; write `data.yaml` and `dataset.json` to `layout.prepared`."""
    root = root.resolve()
    dataset_dir = (root / params.dataset.dir).resolve()
    source_yaml = dataset_dir / "data.yaml"
    if not source_yaml.is_file():
        raise TrainingError(f"{source_yaml} is missing: pull the dataset first (its directory needs data.yaml, "
                            "images/{train,val} and labels/{train,val}), or set dataset.dir in params.yaml")
    skeleton_path = root / params.skeleton
    skeleton = load_skeleton(skeleton_path)
    data = yaml.safe_load(source_yaml.read_text(encoding="utf-8")) or {}
    kpt_shape = _check_data_yaml(data, skeleton, source_yaml)

    splits: dict[str, Any] = {}
    for split, minimum in (("train", params.prepare.min_train_images), ("val", params.prepare.min_val_images)):
        splits[split] = _split_stats(dataset_dir, data.get(split), skeleton, kpt_shape, split, source_yaml)
        if splits[split]["images"] < minimum:
            raise TrainingError(f"{dataset_dir}: the {split} split has {splits[split]['images']} images, fewer than "
                                f"prepare.min_{split}_images={minimum}: label more images or lower the minimum")

    out = (root / layout.prepared).resolve()
    out.mkdir(parents=True, exist_ok=True)
    prepared = {
        "path": os.path.relpath(dataset_dir, out),  # relative to this file: portable, resolved before training
        "train": data["train"],
        "val": data["val"],
        **({"test": data["test"]} if data.get("test") else {}),
        "names": dict(enumerate(skeleton.class_names)),
        "kpt_shape": kpt_shape,
        "flip_idx": skeleton.flip_idx,
        "kpt_names": {i: cls.keypoint_names for i, cls in enumerate(skeleton.classes)},
    }
    (out / "data.yaml").write_text(yaml.safe_dump(prepared, sort_keys=False), encoding="utf-8")

    info = {
        "name": params.dataset.name,
        "dir": params.dataset.dir,
        "dvc_hash": tracking.dvc_hash(dataset_dir),
        "manifest": _read_json(dataset_dir / "manifest.json"),  # inside the dataset: counts, problems
        "pull": _read_json(dataset_dir.with_name(f"{dataset_dir.name}.pull.json")),  # beside it: Label Studio snapshot
        "splits": splits,
        "kpt_shape": kpt_shape,
        "skeleton": {"path": params.skeleton, "sha256": hashlib.sha256(skeleton_path.read_bytes()).hexdigest()},
    }
    (out / "dataset.json").write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    return info


def _read_json(path: Path) -> Any:
    return _redact(json.loads(path.read_text(encoding="utf-8"))) if path.is_file() else None


def _check_data_yaml(data: dict, skeleton: Skeleton, where: Path) -> list[int]:
    for key in ("train", "val", "kpt_shape"):
        if not data.get(key):
            raise TrainingError(f"{where}: '{key}' is missing; a YOLO-pose data.yaml needs train, val, names, kpt_shape")
    kpt_shape = data["kpt_shape"]
    if not (isinstance(kpt_shape, list) and len(kpt_shape) == 2 and kpt_shape[1] in (2, 3)):
        raise TrainingError(f"{where}: kpt_shape {kpt_shape!r} must be [keypoints, 2 or 3]")
    if kpt_shape[0] != skeleton.keypoint_count:
        raise TrainingError(f"{where}: kpt_shape {kpt_shape} has {kpt_shape[0]} keypoints but the skeleton spec "
                            f"{skeleton.source} has {skeleton.keypoint_count}: set `skeleton` in params.yaml to the spec "
                            "the dataset was made with, or pull the dataset again with this spec")
    names = data.get("names")
    names = list(names.values()) if isinstance(names, dict) else list(names or [])
    if names and names != skeleton.class_names:
        raise TrainingError(f"{where}: class names {names} differ from the skeleton spec's {skeleton.class_names}: "
                            "use the spec the dataset was made with")
    if data.get("flip_idx") is not None and list(data["flip_idx"]) != skeleton.flip_idx:
        raise TrainingError(f"{where}: flip_idx {data['flip_idx']} differs from the skeleton spec's flip pairs "
                            f"{skeleton.flip_idx}: use the spec the dataset was made with")
    return [int(kpt_shape[0]), int(kpt_shape[1])]


def _split_stats(dataset_dir: Path, entry: Any, skeleton: Skeleton, kpt_shape: list[int], split: str,
                 where: Path) -> dict[str, Any]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for e in entries:
        folder = dataset_dir / str(e)
        if not folder.is_dir():
            raise TrainingError(f"{where}: {split} points to {folder}, which is not a folder of images")
        images += sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    k, dims = kpt_shape
    visible = [0] * k
    labels = instances = 0
    for image in images:
        label = _label_path(image)
        if not label.is_file():
            continue  # an image without a label file is a background image
        labels += 1
        for n, line in enumerate(label.read_text(encoding="utf-8").splitlines(), start=1):
            values = line.split()
            if not values:
                continue
            if len(values) != 5 + k * dims:
                raise TrainingError(f"{label}:{n}: {len(values)} numbers, expected {5 + k * dims} "
                                    f"(class, box x y w h, {k} keypoints × {dims}): re-export the dataset")
            instances += 1
            for i in range(k):
                x, y = float(values[5 + i * dims]), float(values[6 + i * dims])
                v = float(values[7 + i * dims]) if dims == 3 else float(x > 0 or y > 0)
                visible[i] += v > 0
    names = skeleton.classes[0].keypoint_names
    return {"images": len(images), "labels": labels, "instances": instances,
            "keypoints_labeled": dict(zip(names, visible, strict=True))}


def _label_path(image: Path) -> Path:
    parts = list(image.parts)
    i = len(parts) - 1 - parts[::-1].index("images")
    return Path(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if any(h in str(k).lower() for h in SECRET_HINTS) else _redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v) for v in value]
    return value


def resolved_data_yaml(prepared_yaml: Path, dest: Path) -> Path:
    """A copy of the prepared data.yaml with an absolute `path`, which Ultralytics needs."""
    if not prepared_yaml.is_file():
        raise TrainingError(f"{prepared_yaml} is missing: run the prepare stage first (dvc repro prepare)")
    data = yaml.safe_load(prepared_yaml.read_text(encoding="utf-8"))
    data["path"] = str((prepared_yaml.parent / data["path"]).resolve())
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return dest


def read_dataset_info(layout: Layout) -> dict[str, Any]:
    path = layout.prepared / "dataset.json"
    if not path.is_file():
        raise TrainingError(f"{path} is missing: run the prepare stage first (dvc repro prepare)")
    return json.loads(path.read_text(encoding="utf-8"))


# --- initial weights ------------------------------------------------------------------------------


@dataclass(frozen=True)
class InitWeights:
    path: str  # a local .pt, a .yaml architecture, or a name Ultralytics downloads
    source: str  # what params named
    parent_version: str | None = None  # "name/version" when fine-tuned from a registered model
    parent_run_id: str | None = None

    def tags(self) -> dict[str, str | None]:
        return {"poseops.init_weights": self.source, "poseops.parent_model_version": self.parent_version,
                "poseops.parent_run_id": self.parent_run_id}


def resolve_init_weights(params: Params, mlc, cache_dir: Path) -> InitWeights:
    """The weights a new training starts from: `train.init_weights` when set, else `train.model`.

    `runs:/<id>/<file>` and `models:/<name>@<alias>` (or `/<version>`) are downloaded; the
    run and concrete version they came from are the new run's parent.
    """
    spec = params.train.init_weights
    if not spec:
        path = resolve_weights(params.train.model)
        if path.endswith((".pt",)) and not Path(path).is_file() and os.environ.get("YOLO_OFFLINE", "").lower() in {"1", "true", "yes"}:
            raise TrainingError(f"train.model {params.train.model!r} is not a local file and YOLO_OFFLINE is set: put it "
                                "in the folder named by POSEOPS_WEIGHTS_DIR, or unset YOLO_OFFLINE so Ultralytics downloads it")
        return InitWeights(path=path, source=params.train.model)
    if spec.startswith("runs:/"):
        run_id = spec.split("/")[1]
        local = tracking.download(spec, cache_dir / run_id)
        return InitWeights(path=str(_find_weights(local, spec)), source=spec, parent_run_id=run_id)
    if spec.startswith("models:/"):
        mv = tracking.resolve_model_uri(mlc, spec)
        local = tracking.download(f"models:/{mv.name}/{mv.version}", cache_dir / f"{mv.name}-v{mv.version}")
        return InitWeights(path=str(_find_weights(local, spec)), source=spec,
                           parent_version=f"{mv.name}/{mv.version}", parent_run_id=mv.run_id)
    path = resolve_weights(spec)
    if not Path(path).is_file():
        raise TrainingError(f"train.init_weights {spec!r}: no such file (also looked in POSEOPS_WEIGHTS_DIR)")
    return InitWeights(path=path, source=spec)


def _find_weights(local: Path, uri: str) -> Path:
    if local.is_file():
        return local
    for candidate in (local / "best.pt", local / "weights" / "best.pt", *sorted(local.rglob("*.pt"))):
        if candidate.is_file():
            return candidate
    raise TrainingError(f"{uri} holds no .pt weights (looked in {local})")


# --- train ----------------------------------------------------------------------------------------


@dataclass
class TrainResult:
    run_id: str
    resumed: bool
    epochs: list[dict[str, float]] = field(default_factory=list)
    best: Path | None = None


def read_state(train_dir: Path) -> dict[str, Any]:
    path = train_dir / STATE_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def _write_state(train_dir: Path, state: dict[str, Any]) -> None:
    train_dir.mkdir(parents=True, exist_ok=True)
    (train_dir / STATE_FILE).write_text(json.dumps(state, indent=2) + "\n", encoding="utf-8")


def _fingerprint(params: Params, dataset: dict[str, Any], data_yaml_text: str) -> str:
    train = {k: v for k, v in asdict(params.train).items() if k != "resume"}
    blob = json.dumps({"train": train, "device": params.device, "dataset": dataset.get("dvc_hash"),
                       "data": data_yaml_text}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _checkpoint_epochs(last: Path) -> int | None:
    """How many epochs an unfinished last.pt holds, or None when it cannot be resumed (missing, damaged, finished)."""
    if not last.is_file():
        return None
    try:
        ckpt = load_checkpoint(last)  # weights only: a last.pt that would run code is refused, naming the file
    except UnsafeWeightsError as e:
        if e.damaged:  # a last.pt cut short by a kill while it was written
            return None
        raise
    if ckpt.get("epoch", -1) < 0 or ckpt.get("optimizer") is None:
        return None
    return int(ckpt["epoch"]) + 1


def settle_dead_run(mlc, train_dir: Path) -> dict[str, Any]:
    """Close the run of a training whose process died without saying so (SIGKILL, out of memory, power loss).

    Its MLflow run still reads RUNNING: it is marked FAILED, tagged `poseops.interrupted` with
    why, and the state file says `interrupted`. A training still alive on this machine is an error.
    """
    state = read_state(train_dir)
    if state.get("status") != "running" or not state.get("run_id"):
        return state
    pid = state.get("pid")
    if pid and pid != os.getpid() and state.get("host") == socket.gethostname() and alive(pid):
        raise TrainingError(f"a training (pid {pid}) is still running in {train_dir}: wait for it to end, "
                            f"or stop it (kill {pid}) and run again")
    epochs = len(tracking.read_epochs(train_dir / "results.csv"))
    if mlc.get_run(state["run_id"]).info.status == "RUNNING":
        tracking.set_tags(mlc, state["run_id"], {
            "poseops.interrupted": f"the training process (pid {pid}) ended after {epochs} epoch(s) without closing "
                                   "this run: killed (SIGKILL, out of memory) or crashed; marked FAILED by the next "
                                   f"training at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}"})
        tracking.end_run(mlc, state["run_id"], "FAILED")
    state = {**state, "status": "interrupted"}
    _write_state(train_dir, state)
    return state


def _resume_point(params: Params, state: dict[str, Any], fingerprint: str, last: Path) -> tuple[int | None, str]:
    """The epochs the interrupted training completed when it can go on from last.pt, else None and why not."""
    if state.get("status") != "interrupted" or not state.get("run_id"):
        return None, "the last training there " + ("finished" if state.get("status") == "finished" else "is unknown")
    if not params.train.resume:
        return None, "train.resume is false in params.yaml"
    if state.get("fingerprint") != fingerprint:
        return None, "the training params or the dataset differ from the interrupted training's"
    done = _checkpoint_epochs(last)
    if done is None:
        return None, f"{last} is missing or unreadable (killed while it was written?)"
    return done, ""


def interrupted_training(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None) -> dict[str, Any]:
    """What `poseops train --resume` continues: the interrupted run and its epochs; an error saying why when none.

    A dead training's run is marked FAILED on the way (see `settle_dead_run`).
    """
    lay = layout.under(root.resolve())
    mlc = mlc or tracking.client()
    state = settle_dead_run(mlc, lay.train)
    if not state.get("run_id"):
        raise TrainingError(f"nothing to resume in {lay.train}: no training ran there; run `poseops train` "
                            "without --resume")
    fingerprint = _fingerprint(params, read_dataset_info(lay), (lay.prepared / "data.yaml").read_text(encoding="utf-8"))
    done, why = _resume_point(params, state, fingerprint, lay.train / "weights" / "last.pt")
    if done is None:
        raise TrainingError(f"nothing to resume in {lay.train}: {why}; run `poseops train` without --resume "
                            "to train from the start")
    return {"run_id": state["run_id"], "epochs_done": done, "last": str(lay.train / "weights" / "last.pt")}


def train(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None,
          callbacks: Mapping[str, Callable[[Any], None]] | None = None) -> TrainResult:
    """Train (or resume) and log it all to an MLflow run; the run id is kept in the train folder's state file.

    An interrupted training with the same params and dataset goes on from its last.pt in a new
    run that names the interrupted one (`poseops.resumed_from_run`). A training that finished but
    could not be logged (the store stayed locked) is logged without training again.
    """
    tracking.check_store(mlc.tracking_uri if mlc else None)  # before any training time is spent
    mlc = mlc or tracking.client()
    configure_ultralytics()
    from ultralytics import YOLO

    root = root.resolve()
    lay = layout.under(root)
    dataset = read_dataset_info(lay)
    prepared_yaml = lay.prepared / "data.yaml"
    if not prepared_yaml.is_file():
        raise TrainingError(f"{prepared_yaml} is missing: run the prepare stage first (dvc repro prepare)")
    fingerprint = _fingerprint(params, dataset, prepared_yaml.read_text(encoding="utf-8"))
    out = lay.train
    last = out / "weights" / "last.pt"
    state = settle_dead_run(mlc, out)
    if state.get("status") == "trained" and state.get("fingerprint") == fingerprint and (out / "weights" / "best.pt").is_file():
        tracking.reopen_run(mlc, state["run_id"])
        return _log_trained(mlc, state["run_id"], out, lay, resumed=bool(state.get("resumed_from_run")))
    done, _ = _resume_point(params, state, fingerprint, last)

    if done is not None:
        previous = state["run_id"]
        init_tags = {k: state.get(k) for k in InitWeights("", "").tags()}
        resume_tags = {"poseops.resumed_from": str(last), "poseops.resumed_from_run": previous,
                       "poseops.resumed_at_epoch": done + 1}
        run_name = params.mlflow.run_name or f"{mlc.get_run(previous).info.run_name.removesuffix('-resumed')}-resumed"
        run_id = _start_tracked_run(mlc, params, root, lay, dataset, run_name, {**init_tags, **resume_tags}, fingerprint)
        tracking.set_tags(mlc, previous, {"poseops.resumed_by_run": run_id})
        _drop_epochs_after(out / "results.csv", done)  # rows of an epoch whose last.pt was never written
        model = YOLO(str(last))
        kwargs: dict[str, Any] = {"resume": str(last), "data": str(resolved_data_yaml(prepared_yaml, out / "data.yaml"))}
        state = {**state, **init_tags, "resumed_from_run": previous}
    else:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        init = resolve_init_weights(params, mlc, load_settings().home / "cache" / "init")
        run_name = params.mlflow.run_name or (f"{params.dataset.name}-{Path(init.path).stem}-"
                                              f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
        run_id = _start_tracked_run(mlc, params, root, lay, dataset, run_name, init.tags(), fingerprint)
        check_checkpoint(init.path)
        model = YOLO(init.path)
        data_yaml = resolved_data_yaml(prepared_yaml, out / "data.yaml")
        kwargs = {**ultralytics_train_args(params), "data": str(data_yaml), "project": str(out.parent),
                  "name": out.name, "exist_ok": True}
        state = init.tags()
    _write_state(out, {**state, "run_id": run_id, "fingerprint": fingerprint, "status": "running", "pid": os.getpid(),
                       "host": socket.gethostname()})

    logger = tracking.EpochLogger(mlc, run_id, out / "results.csv")
    logger.flush()  # a resumed run carries the interrupted training's epochs too
    model.add_callback("on_fit_epoch_end", logger)
    for event, fn in (callbacks or {}).items():
        model.add_callback(event, fn)
    try:
        with _signals_interrupt():
            model.train(**kwargs)
    except BaseException as e:
        _write_state(out, {**read_state(out), "status": "interrupted"})
        epochs = len(tracking.read_epochs(out / "results.csv"))
        tags = {"poseops.error": f"{type(e).__name__}: {e}"[:500]}
        if isinstance(e, KeyboardInterrupt):
            tags["poseops.interrupted"] = (f"{e or 'interrupted (Ctrl-C)'} after {epochs} epoch(s); "
                                           "`poseops train --resume` goes on from last.pt")
        try:
            logger.flush()
            tracking.set_tags(mlc, run_id, tags)
        finally:
            tracking.end_run(mlc, run_id, "KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise
    _write_state(out, {**read_state(out), "status": "trained"})  # weights complete: never trained again
    return _log_trained(mlc, run_id, out, lay, resumed=done is not None)


def _start_tracked_run(mlc, params: Params, root: Path, lay: Layout, dataset: dict[str, Any], run_name: str,
                       extra_tags: Mapping[str, Any], fingerprint: str) -> str:
    """A new MLflow run with the lineage tags, the params, the dataset as input and the dataset files."""
    git = tracking.git_info(root)
    source = {**(dataset.get("manifest") or {}), **(dataset.get("pull") or {})}
    tags = {
        **git, "mlflow.source.git.commit": git["git_commit"] if git["git_commit"] != "none" else None,
        "poseops.dataset": params.dataset.name, "poseops.dataset_dvc_hash": dataset["dvc_hash"],
        "poseops.label_studio_project": source.get("label_studio_project_id"),
        "poseops.label_studio_snapshot": source.get("export_snapshot_id"),
        "poseops.model": params.train.model, **extra_tags, "poseops.fingerprint": fingerprint,
    }
    run_id = tracking.start_run(mlc, params.mlflow.experiment, run_name, {k: str(v) for k, v in tags.items() if v})
    tracking.log_params(mlc, run_id, params.flat())
    tracking.log_dataset(mlc, run_id, params.dataset.name, dataset["dvc_hash"], str(params.dataset.dir))
    tracking.log_artifacts(mlc, run_id, [lay.prepared / "dataset.json", lay.prepared / "data.yaml",
                                         root / params.skeleton], artifact_path="dataset")
    return run_id


def _log_trained(mlc, run_id: str, out: Path, lay: Layout, resumed: bool) -> TrainResult:
    """Log a finished training's epochs, weights and plots, and end its run.

    When the store stays locked, the weights stay in the train folder and the error says that
    running again logs them without training again.
    """
    try:
        tracking.EpochLogger(mlc, run_id, out / "results.csv", already_logged=tracking.last_logged_step(mlc, run_id)).flush()
        rows = tracking.read_epochs(out / "results.csv")
        tracking.write_epochs_csv(rows, lay.epochs_csv)
        weights = out / "weights"
        tracking.log_artifacts(mlc, run_id, [weights / "best.pt", weights / "last.pt"], artifact_path="weights")
        tracking.log_artifacts(mlc, run_id, [out / "results.csv", out / "args.yaml", lay.epochs_csv], artifact_path="train")
        tracking.log_artifacts(mlc, run_id, sorted(p for p in out.iterdir() if p.suffix in {".png", ".jpg"}),
                               artifact_path="plots/train")
        _write_state(out, {**read_state(out), "status": "finished", "epochs": len(rows)})
        tracking.end_run(mlc, run_id)
    except Exception as e:
        problem = tracking.store_problem(mlc.tracking_uri, e)
        if problem is None:
            raise
        raise tracking.TrackingError(f"the training finished and its weights are kept in {out / 'weights'}, but "
                                     f"logging it failed: {problem}. Then run the same command again: it logs this "
                                     "training without training again") from None
    return TrainResult(run_id=run_id, resumed=resumed, epochs=rows, best=weights / "best.pt")


def _drop_epochs_after(results_csv: Path, epochs: int) -> None:
    """Keep results.csv's rows up to `epochs`, the epochs that last.pt holds (a kill can fall in between)."""
    if not results_csv.is_file():
        return
    header, *rows = results_csv.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = [row for row in rows if row.strip() and int(float(row.split(",")[0])) <= epochs]
    results_csv.write_text("".join([header, *kept]), encoding="utf-8")


@contextmanager
def _signals_interrupt():
    """SIGTERM (and SIGHUP) interrupt training like Ctrl-C does, so that the run ends as KILLED at once."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")

    previous = {s: signal.signal(s, interrupt) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- evaluate -------------------------------------------------------------------------------------


def validate(weights: Path, data_yaml: Path, params: Params, save_dir: Path, plots: bool = False) -> dict[str, float]:
    """Pose and box metrics of `weights` on `evaluate.split` of `data_yaml` (fitness as Ultralytics computes it)."""
    configure_ultralytics()
    from ultralytics import YOLO

    if save_dir.exists():
        shutil.rmtree(save_dir)
    e = params.evaluate
    result = YOLO(str(weights)).val(data=str(data_yaml), split=e.split, imgsz=params.train.imgsz, batch=e.batch,
                                    conf=e.conf, iou=e.iou, device=params.device, plots=plots, workers=0,
                                    project=str(save_dir.parent), name=save_dir.name, exist_ok=True, verbose=False)
    metrics = {tracking.metric_name(k): float(v) for k, v in result.results_dict.items() if k != "fitness"}
    return {"fitness": float(result.fitness), **{k: v for k, v in metrics.items() if k}}


def eval_key(params: Params, dataset: dict[str, Any]) -> str:
    """Identifies an evaluation setting: same key, same val split and conditions, comparable figures."""
    blob = json.dumps({"dataset": dataset.get("dvc_hash"), "split": params.evaluate.split, "imgsz": params.train.imgsz,
                       "conf": params.evaluate.conf, "iou": params.evaluate.iou}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def evaluate(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None) -> dict[str, float]:
    root = root.resolve()
    lay = layout.under(root)
    run_id = _run_id(lay)
    mlc = mlc or tracking.client()
    with tempfile.TemporaryDirectory(prefix="poseops-eval-") as tmp:
        data_yaml = resolved_data_yaml(lay.prepared / "data.yaml", Path(tmp) / "data.yaml")
        metrics = validate(lay.train / "weights" / "best.pt", data_yaml, params, lay.evaluate, plots=params.train.plots)
    lay.metrics.parent.mkdir(parents=True, exist_ok=True)
    lay.metrics.write_text(json.dumps({k: round(v, 6) for k, v in metrics.items()}, indent=2) + "\n", encoding="utf-8")
    tracking.reopen_run(mlc, run_id)
    tracking.log_metrics(mlc, run_id, {f"eval/{k}": v for k, v in metrics.items()})
    tracking.set_tags(mlc, run_id, {"poseops.eval_key": eval_key(params, read_dataset_info(lay)),
                                    "poseops.eval_split": params.evaluate.split})
    tracking.log_artifacts(mlc, run_id, [lay.metrics], artifact_path="eval")
    tracking.log_artifacts(mlc, run_id, sorted(p for p in lay.evaluate.glob("*") if p.suffix in {".png", ".jpg"}),
                           artifact_path="plots/evaluate")
    tracking.end_run(mlc, run_id)
    return metrics


def _run_id(lay: Layout) -> str:
    state = read_state(lay.train)
    if state.get("status") != "finished" or not state.get("run_id"):
        raise TrainingError(f"{lay.train / STATE_FILE} names no finished training: run the train stage first")
    return state["run_id"]


# --- export and registration ----------------------------------------------------------------------


def export(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None) -> tracking.VersionRef:
    """Export best.pt to ONNX, log the model files to the run and register them as a new model version."""
    configure_ultralytics()
    from ultralytics import YOLO

    root = root.resolve()
    lay = layout.under(root)
    run_id = _run_id(lay)
    mlc = mlc or tracking.client()
    if lay.model.exists():
        shutil.rmtree(lay.model)
    lay.model.mkdir(parents=True)
    best = lay.model / "best.pt"  # export beside a copy: the train folder (a DVC output) stays untouched
    shutil.copyfile(lay.train / "weights" / "best.pt", best)
    x = params.export
    precision = {"quantize": 16} if x.half else {}  # Ultralytics 8.4 replaced `half` by `quantize`
    onnx = Path(YOLO(str(best)).export(format=x.format, imgsz=params.train.imgsz, opset=x.opset, simplify=x.simplify,
                                       dynamic=x.dynamic, device=params.device, **precision))
    onnx.rename(lay.model / "model.onnx")

    dataset = read_dataset_info(lay)
    metrics = json.loads(lay.metrics.read_text(encoding="utf-8")) if lay.metrics.is_file() else {}
    files = [best, lay.model / "model.onnx", lay.prepared / "data.yaml", lay.prepared / "dataset.json", lay.metrics]
    tracking.reopen_run(mlc, run_id)
    tracking.log_artifacts(mlc, run_id, files, artifact_path=MODEL_ARTIFACTS)
    mlc.log_artifact(run_id, str(_copy_as(root / params.skeleton, lay.model / "skeleton.yaml")), MODEL_ARTIFACTS)
    run = mlc.get_run(run_id)
    tags = {
        "run_id": run_id,
        "dataset": params.dataset.name,
        "dataset_dvc_hash": dataset["dvc_hash"],
        "git_commit": run.data.tags.get("git_commit"),
        "git_dirty": run.data.tags.get("git_dirty"),
        "parent_model_version": run.data.tags.get("poseops.parent_model_version"),
        "parent_run_id": run.data.tags.get("poseops.parent_run_id"),
        "init_weights": run.data.tags.get("poseops.init_weights"),
        "label_studio_project": run.data.tags.get("poseops.label_studio_project"),
        "label_studio_snapshot": run.data.tags.get("poseops.label_studio_snapshot"),
        "eval_key": eval_key(params, dataset),
        **{f"metrics.{k}": v for k, v in metrics.items()},
    }
    ref = None
    try:
        ref = tracking.register_version(mlc, params.mlflow.registered_model, run_id, MODEL_ARTIFACTS, tags,
                                        description=f"{params.dataset.name} @ {dataset['dvc_hash']}, run {run_id}")
        tracking.set_tags(mlc, run_id, {"poseops.model_version": ref.version})
        (lay.model / VERSION_FILE).write_text(json.dumps(asdict(ref) | {"uri": ref.uri}, indent=2) + "\n", encoding="utf-8")
    except BaseException:
        if ref is not None:  # all or nothing: no version whose pipeline did not finish
            mlc.delete_model_version(ref.name, ref.version)
        tracking.end_run(mlc, run_id, "FAILED")
        raise
    tracking.end_run(mlc, run_id)
    return ref


def _copy_as(src: Path, dest: Path) -> Path:
    shutil.copyfile(src, dest)
    return dest


def read_version(layout: Layout) -> dict[str, str]:
    path = layout.model / VERSION_FILE
    if not path.is_file():
        raise TrainingError(f"{path} is missing: no model version was registered here yet; run the pipeline "
                            "(dvc repro) or name a version (--version)")
    return json.loads(path.read_text(encoding="utf-8"))


# --- promotion ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str
    metric: str
    candidate_version: str
    candidate_value: float
    champion_version: str | None
    champion_value: float | None
    min_improvement: float


def better_enough(candidate: float, champion: float | None, min_improvement: float) -> bool:
    """The promotion rule: no champion yet, or candidate ≥ champion + min_improvement (0: at least as good)."""
    return champion is None or candidate >= champion + min_improvement - 1e-9


def promote(params: Params, root: Path = Path("."), layout: Layout = Layout(), version: str | None = None,
            mlc=None) -> Promotion:
    """Compare a version with the alias holder on the current val split; move the alias when the rule holds.

    Both figures come from the versions' own evaluation when it was made on the same split and
    settings (`eval_key`), else from evaluating their weights now. Both are recorded as tags on
    the candidate version and its run.
    """
    root = root.resolve()
    lay = layout.under(root)
    mlc = mlc or tracking.client()
    name, alias, metric = params.mlflow.registered_model, params.promote.alias, params.promote.metric
    version = version or read_version(lay)["version"]
    candidate = tracking.resolve_model_uri(mlc, f"models:/{name}/{version}")
    champion = tracking.version_for_alias(mlc, name, alias)
    dataset = read_dataset_info(lay)
    key = eval_key(params, dataset)
    with tempfile.TemporaryDirectory(prefix="poseops-promote-") as tmp:
        figure = _Figure(params, lay, key, metric, Path(tmp))
        cand_value = figure(candidate)
        champ_value = figure(champion) if champion is not None else None
    if champion is not None and champion.version == candidate.version:
        promoted, reason = False, f"version {candidate.version} already is {alias}"
    else:
        promoted = better_enough(cand_value, champ_value, params.promote.min_improvement)
        if champ_value is None:
            reason = f"no {alias} yet"
        else:
            rel = "≥" if promoted else "<"
            reason = f"{metric} {cand_value:.4f} {rel} {champ_value:.4f} + {params.promote.min_improvement}"
    result = Promotion(promoted, reason, metric, str(candidate.version), cand_value,
                       str(champion.version) if champion is not None else None, champ_value,
                       params.promote.min_improvement)
    tags = {
        "promotion.metric": metric, "promotion.candidate_value": f"{cand_value:.6f}",
        "promotion.champion_version": result.champion_version or "none",
        "promotion.champion_value": f"{champ_value:.6f}" if champ_value is not None else "none",
        "promotion.min_improvement": params.promote.min_improvement, "promotion.eval_key": key,
        "promotion.decision": "promoted" if promoted else "kept", "promotion.reason": reason,
        "promotion.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    tracking.set_version_tags(mlc, name, str(candidate.version), tags)
    if candidate.run_id:
        tracking.set_tags(mlc, candidate.run_id, tags)
    if promoted:
        mlc.set_registered_model_alias(name, alias, str(candidate.version))
    return result


class _Figure:
    """A version's promotion metric on the current eval setting: from its tags when comparable, else measured."""

    def __init__(self, params: Params, lay: Layout, key: str, metric: str, tmp: Path):
        self.params, self.lay, self.key, self.metric, self.tmp = params, lay, key, metric, tmp

    def __call__(self, mv) -> float:
        if mv.tags.get("eval_key") == self.key and f"metrics.{self.metric}" in mv.tags:
            return float(mv.tags[f"metrics.{self.metric}"])
        local = tracking.download(f"models:/{mv.name}/{mv.version}", self.tmp / f"v{mv.version}")
        data_yaml = resolved_data_yaml(self.lay.prepared / "data.yaml", self.tmp / "data.yaml")
        return validate(_find_weights(local, f"models:/{mv.name}/{mv.version}"), data_yaml, self.params,
                        self.tmp / f"val-v{mv.version}")[self.metric]


# --- the whole pipeline ---------------------------------------------------------------------------


def pipeline_outputs(root: Path = Path("."), layout: Layout = Layout()) -> dict[str, Any]:
    """What the last pipeline run left: its MLflow run id, registered version and metrics."""
    lay = layout.under(root.resolve())
    version = read_version(lay)
    metrics = json.loads(lay.metrics.read_text(encoding="utf-8")) if lay.metrics.is_file() else {}
    return {"run_id": _run_id(lay), "version": version["version"], "model": version["name"], "metrics": metrics,
            "epochs": tracking.read_epochs(lay.train / "results.csv")}


def run_stages(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None) -> tracking.VersionRef:
    """prepare → train → evaluate → export in this process (what `dvc repro` runs, without DVC's caching)."""
    mlc = mlc or tracking.client()
    prepare(params, root, layout)
    train(params, root, layout, mlc=mlc)
    evaluate(params, root, layout, mlc=mlc)
    return export(params, root, layout, mlc=mlc)


def dvc_repro(root: Path, overrides: list[str] | None = None, extra: list[str] | None = None,
              stream: bool = True) -> subprocess.CompletedProcess:
    """`dvc repro`, or `dvc exp run -S key=value …` when there are overrides; raises on failure."""
    cmd = [sys.executable, "-m", "dvc"]
    cmd += ["exp", "run", *[a for o in overrides for a in ("-S", o)]] if overrides else ["repro"]
    cmd += extra or []
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = subprocess.run(cmd, cwd=root, text=True, capture_output=not stream, env=env)
    if result.returncode != 0:
        tail = f"\n{(result.stdout or '')[-3000:]}{(result.stderr or '')[-3000:]}" if not stream else ""
        raise TrainingError(f"`{' '.join(cmd[2:])}` failed with exit code {result.returncode} in {root}{tail}")
    return result


def run_stage(step: Callable[[], Any]) -> None:
    """Run a stage script's step; a problem a person can fix ends it with one line on stderr, exit code 1."""
    from poseops.params import ParamsError
    from poseops.skeleton import SkeletonError

    try:
        step()
    except (ParamsError, TrainingError, tracking.TrackingError, SkeletonError) as e:
        raise SystemExit(f"error: {e}") from None


def is_dvc_repo(root: Path) -> bool:
    return (root / ".dvc").is_dir() and (root / "dvc.yaml").is_file()
