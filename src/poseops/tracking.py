"""MLflow: runs, per-epoch metrics, lineage, the model registry and the `champion` alias.

Every call goes through an explicit `MlflowClient` and run id (no global active
run), so the DVC stages (separate processes), the Prefect flow and the CLI can all
add to the same run.

We log with our own Ultralytics callback and turn Ultralytics' MLflow callback off
(see `training.configure_ultralytics`): theirs ignores the experiment chosen here,
reads `MLFLOW_RUN`/`MLFLOW_EXPERIMENT_NAME`, rewrites metric names and switches
itself off under pytest.

Metric names: Ultralytics' `metrics/mAP50-95(P)` becomes `pose_mAP50-95`,
`metrics/precision(B)` becomes `box_precision`; losses keep `train/…` and `val/…`;
`fitness` is Ultralytics' pose fitness (see `FITNESS_WEIGHTS`).
"""

from __future__ import annotations

import csv
import json
import os
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poseops.errors import PoseopsError

# Ultralytics 8.4 PoseMetrics.fitness = pose.fitness() + box.fitness(), each
# Metric.fitness = [P, R, mAP50, mAP50-95] · [0, 0, 0, 1]; so fitness = box mAP50-95 + pose mAP50-95.
FITNESS_WEIGHTS = {"box_mAP50-95": 1.0, "pose_mAP50-95": 1.0}
_ULTRALYTICS_METRIC = re.compile(r"^metrics/(?P<name>[\w.-]+)\((?P<kind>[BP])\)$")
SUMMARY_METRICS = ("fitness", "pose_mAP50", "pose_mAP50-95", "box_mAP50", "box_mAP50-95")
LOCK_WAIT_S = 60.0  # how long training waits for a locked SQLite store before it starts


class TrackingError(PoseopsError, RuntimeError):
    """MLflow cannot be used as configured; the message says how to fix it."""


# --- connection -----------------------------------------------------------------------------


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else a SQLite store in the poseops home (`$POSEOPS_HOME/mlflow.db`)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        from poseops.settings import load_settings

        return f"sqlite:///{load_settings().home.resolve() / 'mlflow.db'}"
    if uri.startswith("file:") or "://" not in uri:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={uri!r} is MLflow's file store, which MLflow ≥ 3.13 refuses: "
            "use a database such as sqlite:///path/to/mlflow.db or a tracking server http://host:5000"
        )
    return uri


def client(uri: str | None = None):
    """An `MlflowClient` on `uri` (default `tracking_uri()`), creating a local SQLite file's folder."""
    import mlflow
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def lock_wait_s() -> float:
    """How long training waits for another process's lock on a SQLite store (`POSEOPS_MLFLOW_LOCK_WAIT`, seconds)."""
    text = os.environ.get("POSEOPS_MLFLOW_LOCK_WAIT", "").strip()
    try:
        return float(text) if text else LOCK_WAIT_S
    except ValueError:
        raise TrackingError(f"POSEOPS_MLFLOW_LOCK_WAIT={text!r} is not a number of seconds") from None


def check_store(uri: str | None = None, wait_s: float | None = None) -> None:
    """Before any training time is spent: the tracking server answers, or the SQLite store can be written.

    A SQLite store locked by another process (an open `sqlite3` shell, a stuck writer) is waited
    for up to `wait_s` (default `lock_wait_s()`), saying so; then the error names the file and what
    to do. Call it before `client()`: MLflow reads a SQLite store's schema when the client is made,
    and gives up after 5 s of lock.
    """
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        import httpx

        try:
            answer = httpx.get(f"{uri.rstrip('/')}/health", timeout=5.0)
        except httpx.HTTPError as e:
            raise TrackingError(f"the MLflow tracking server {uri} does not answer ({type(e).__name__}: {e}): start it "
                                "(poseops mlflow up, or mlflow server) or set MLFLOW_TRACKING_URI to one that runs; "
                                "nothing was trained") from None
        if answer.status_code != 200:
            raise TrackingError(f"the MLflow tracking server {uri} answers {answer.status_code} on /health: check "
                                "MLFLOW_TRACKING_URI and the server's log; nothing was trained")
    elif uri.startswith("sqlite:///"):
        path = Path(uri.removeprefix("sqlite:///").split("?")[0])
        if path.is_file() and not _write_lock_free(path, 0.0):
            wait = lock_wait_s() if wait_s is None else wait_s
            print(f"the MLflow store {path} is locked by another process: waiting up to {wait:.0f} s", file=sys.stderr)
            if not _write_lock_free(path, wait):
                raise TrackingError(f"the MLflow store {path} stayed locked by another process for {wait:.0f} s: "
                                    f"find it (fuser {path}), end or commit what holds the lock (an open sqlite3 shell, "
                                    "a stuck training), then run again (POSEOPS_MLFLOW_LOCK_WAIT sets the wait); "
                                    "nothing was trained")


def _write_lock_free(path: Path, wait_s: float) -> bool:
    """Whether a write transaction on the SQLite file can begin within `wait_s` seconds (then rolled back)."""
    con = sqlite3.connect(path, timeout=wait_s, isolation_level=None)
    try:
        con.execute("BEGIN IMMEDIATE")
        con.execute("ROLLBACK")
        return True
    except sqlite3.OperationalError as e:
        if "locked" in str(e) or "busy" in str(e):
            return False
        raise TrackingError(f"the MLflow store {path} cannot be written ({e}): check the file and its folder") from None
    finally:
        con.close()


def store_problem(uri: str, error: BaseException) -> str | None:
    """What to tell a person when an MLflow call failed because the store was locked or unreachable, else None."""
    from mlflow.exceptions import MlflowException

    if not isinstance(error, MlflowException):
        return None
    text = str(error)
    if "database is locked" in text:
        path = uri.removeprefix("sqlite:///")
        return (f"the MLflow store {path} stayed locked by another process (MLflow waits 20 s): find it "
                f"(fuser {path}) and end or commit what holds the lock")
    if error.error_code == "TEMPORARILY_UNAVAILABLE" or "Max retries exceeded" in text or "Connection refused" in text:
        return f"the MLflow store {uri} cannot be reached or is busy ({text[:200]}): make it answer"
    return None


def experiment_id(mlc, name: str) -> str:
    """The experiment's id, creating it (artifacts beside a local SQLite store) when missing."""
    found = mlc.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            raise TrackingError(f"MLflow experiment {name!r} is deleted: restore it (mlflow experiments restore) "
                                "or choose another mlflow.experiment in params.yaml")
        return found.experiment_id
    location = None
    uri = mlc.tracking_uri
    if uri.startswith("sqlite:///"):
        location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts" / name).resolve().as_uri()
    return mlc.create_experiment(name, artifact_location=location)


def run_url(mlc, run_id: str) -> str:
    """Where a person sees the run: the tracking server, or `mlflow ui` (`POSEOPS_MLFLOW_UI_URL`) for a local store."""
    from poseops.settings import load_settings

    run = mlc.get_run(run_id)
    uri = mlc.tracking_uri
    base = uri if uri.startswith(("http://", "https://")) else load_settings().mlflow_ui_url
    return f"{base.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"


# --- runs -------------------------------------------------------------------------------------


def start_run(mlc, experiment: str, run_name: str, tags: Mapping[str, str]) -> str:
    run = mlc.create_run(experiment_id(mlc, experiment), run_name=run_name, tags=dict(tags))
    return run.info.run_id


def reopen_run(mlc, run_id: str) -> None:
    """Mark a run (finished, failed or killed) as running again, to continue logging into it."""
    mlc.update_run(run_id, status="RUNNING")


def end_run(mlc, run_id: str, status: str = "FINISHED") -> None:
    mlc.set_terminated(run_id, status=status)


def log_params(mlc, run_id: str, params: Mapping[str, Any]) -> None:
    """Log params once; a value already logged with the same text is skipped (MLflow refuses changes)."""
    from mlflow.entities import Param

    logged = mlc.get_run(run_id).data.params
    fresh = [Param(k, _text(v)) for k, v in params.items() if k not in logged]
    for i in range(0, len(fresh), 100):
        mlc.log_batch(run_id, params=fresh[i:i + 100])


def set_tags(mlc, run_id: str, tags: Mapping[str, Any]) -> None:
    from mlflow.entities import RunTag

    mlc.log_batch(run_id, tags=[RunTag(k, _text(v)) for k, v in tags.items() if v is not None])


def log_metrics(mlc, run_id: str, metrics: Mapping[str, float], step: int | None = None) -> None:
    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    batch = [Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None]
    if batch:
        mlc.log_batch(run_id, metrics=batch)


def log_artifacts(mlc, run_id: str, paths: Iterable[Path], artifact_path: str | None = None) -> None:
    for path in paths:
        if path.is_dir():
            mlc.log_artifacts(run_id, str(path), artifact_path=artifact_path)
        elif path.is_file():
            mlc.log_artifact(run_id, str(path), artifact_path=artifact_path)


def log_dataset(mlc, run_id: str, name: str, digest: str, source: str, context: str = "training") -> None:
    """Record the dataset as a run input (MLflow's Datasets column): name, DVC hash as digest, where it lives."""
    from mlflow.entities import Dataset, DatasetInput, InputTag

    dataset = Dataset(name=name, digest=digest[:36], source_type="local", source=json.dumps({"uri": source}))
    mlc.log_inputs(run_id, datasets=[DatasetInput(dataset, tags=[InputTag("mlflow.data.context", context)])])


def last_logged_step(mlc, run_id: str, key: str = "fitness") -> int:
    history = mlc.get_metric_history(run_id, key)
    return max((m.step for m in history), default=0)


def _text(value: Any) -> str:
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value)
    return "" if value is None else str(value)


# --- per-epoch metrics from Ultralytics' results.csv ---------------------------------------------


def metric_name(column: str) -> str | None:
    """Our name for a results.csv column; None for columns not logged per epoch (`epoch`)."""
    column = column.strip()
    m = _ULTRALYTICS_METRIC.match(column)
    if m:
        return f"{'box' if m['kind'] == 'B' else 'pose'}_{m['name']}"
    if column == "epoch":
        return None
    if column == "time":
        return "train_time_s"
    return column


def fitness(row: Mapping[str, float]) -> float:
    return sum(weight * float(row.get(key, 0.0) or 0.0) for key, weight in FITNESS_WEIGHTS.items())


def read_epochs(results_csv: Path) -> list[dict[str, float]]:
    """Ultralytics' results.csv as rows of our metric names, each with `epoch` and `fitness`."""
    if not results_csv.is_file():
        return []
    rows: list[dict[str, float]] = []
    with results_csv.open(newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row: dict[str, float] = {"epoch": int(float(raw["epoch"]))}
            for column, value in raw.items():
                name = metric_name(column)
                if name and value not in (None, ""):
                    row[name] = float(value)
            row["fitness"] = fitness(row)
            rows.append(row)
    return rows


def write_epochs_csv(rows: list[dict[str, float]], path: Path) -> None:
    """The per-epoch table DVC plots: epoch, the summary metrics first, then losses and learning rates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["epoch", *SUMMARY_METRICS]
    for row in rows:
        columns += [k for k in row if k not in columns]
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (int(v) if k == "epoch" else round(v, 6)) for k, v in row.items()})


class EpochLogger:
    """An Ultralytics `on_fit_epoch_end` callback that logs every new results.csv row to the run.

    A store that is locked or unreachable at the end of an epoch is reported and does not stop
    the training; the rows it missed go out with a later epoch's (tried again after
    `RETRY_AFTER_S`, so a long lock costs the training one wait a minute), or at the end.

    It reads results.csv rather than `trainer.metrics`, so Ultralytics' final validation of
    best.pt (which also fires `on_fit_epoch_end`) adds no extra epoch, and `flush` after a
    multi-GPU (DDP) training, whose worker processes run no callbacks of ours, logs what is missing.
    """

    RETRY_AFTER_S = 60.0

    def __init__(self, mlc, run_id: str, results_csv: Path, already_logged: int = 0):
        self.mlc, self.run_id, self.results_csv = mlc, run_id, results_csv
        self.logged = already_logged
        self.failed_at: float | None = None

    def __call__(self, trainer: Any = None) -> None:
        if self.failed_at is not None and time.monotonic() - self.failed_at < self.RETRY_AFTER_S:
            return
        try:
            self.flush()
            self.failed_at = None
        except Exception as e:  # a locked or unreachable store does not stop the training: later epochs catch up
            problem = store_problem(self.mlc.tracking_uri, e)
            if problem is None:
                raise
            self.failed_at = time.monotonic()
            print(f"warning: epoch metrics not logged yet, {problem}; training goes on and logs them later",
                  file=sys.stderr)

    def flush(self) -> int:
        for row in read_epochs(self.results_csv):
            epoch = int(row["epoch"])
            if epoch > self.logged:
                log_metrics(self.mlc, self.run_id, {k: v for k, v in row.items() if k != "epoch"}, step=epoch)
                self.logged = epoch
        return self.logged


# --- lineage ----------------------------------------------------------------------------------------


def git_info(root: Path) -> dict[str, str]:
    """The commit the code ran from and whether tracked files differed from it (`dirty`)."""

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return ""
        return out.stdout.strip() if out.returncode == 0 else ""

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": "none", "git_dirty": "unknown"}
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": "true" if dirty else "false", "git_branch": git("rev-parse", "--abbrev-ref", "HEAD")}


class _SkipUltralyticsCaches:
    """Without a DVC repo there is no .dvcignore: skip the label caches Ultralytics writes into the dataset."""

    def walk(self, fs: Any, path: str, **kwargs: Any):
        for root, dirs, files in fs.walk(path, **kwargs):
            yield root, dirs, [f for f in files if not f.endswith(".cache")]

    def find(self, fs: Any, path: str):
        for root, _, files in self.walk(fs, path):
            for f in files:
                yield f"{root}{fs.sep}{f}"


def dvc_hash(path: Path) -> str:
    """The DVC hash of a dataset directory (`<md5>.dir`), as `dvc add`/dvc.lock record it.

    Prefers the `<dir>.dvc` file the dataset pull wrote; else computes it, honouring the
    repository's .dvcignore when the directory is inside a DVC repository.
    """
    path = path.resolve()
    dvc_file = path.with_name(path.name + ".dvc")
    if dvc_file.is_file():
        import yaml

        outs = (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or []
        if outs and outs[0].get("md5"):
            return str(outs[0]["md5"])
    from dvc_data.hashfile.build import build
    from dvc_data.hashfile.db import HashFileDB
    from dvc_objects.fs.local import LocalFileSystem
    from dvc_objects.fs.memory import MemoryFileSystem

    odb = HashFileDB(MemoryFileSystem(), "/poseops-hash")
    repo_root = next((p for p in (path, *path.parents) if (p / ".dvc").is_dir()), None)
    if repo_root is not None:
        from dvc.repo import Repo

        with Repo(str(repo_root)) as repo:
            _, _, obj = build(odb, str(path), repo.fs, "md5", ignore=repo.dvcignore, dry_run=True)
    else:
        _, _, obj = build(odb, str(path), LocalFileSystem(), "md5", ignore=_SkipUltralyticsCaches(), dry_run=True)
    return str(obj.hash_info.value)


# --- registry -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def register_version(mlc, name: str, run_id: str, artifact_path: str, tags: Mapping[str, Any],
                     description: str = "") -> VersionRef:
    """Register the run's `artifact_path` as a new version of `name`, with its tags, all or nothing.

    A failure after the version exists (tagging, waiting for READY) deletes it again, so
    no half-registered version is left behind.
    """
    from mlflow.exceptions import MlflowException

    try:
        mlc.get_registered_model(name)
    except MlflowException:
        mlc.create_registered_model(name, description="Pose models trained by poseops (YOLO-pose).")
    version = mlc.create_model_version(name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id,
                                       description=description)
    try:
        for key, value in tags.items():
            if value is not None:
                mlc.set_model_version_tag(name, version.version, key, _text(value))
        status = mlc.get_model_version(name, version.version).status
        if status != "READY":
            raise TrackingError(f"model version {name}/{version.version} is {status}, not READY")
    except BaseException:
        mlc.delete_model_version(name, version.version)
        raise
    return VersionRef(name, str(version.version), run_id)


def version_for_alias(mlc, name: str, alias: str):
    """The model version an alias points to, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return mlc.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_version_tags(mlc, name: str, version: str, tags: Mapping[str, Any]) -> None:
    for key, value in tags.items():
        if value is not None:
            mlc.set_model_version_tag(name, version, key, _text(value))


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` → (name, alias, None); `models:/name/3` → (name, None, "3")."""
    from poseops.params import MODEL_URI

    m = MODEL_URI.match(uri)
    if not m:
        raise TrackingError(f"{uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    return m["name"], m["alias"], m["version"]


def resolve_model_uri(mlc, uri: str):
    """The ModelVersion a `models:/` URI names; a clear error when it does not exist."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    try:
        return mlc.get_model_version_by_alias(name, alias) if alias else mlc.get_model_version(name, version)
    except MlflowException:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise TrackingError(f"{uri}: registered model {name!r} has no {what} in {mlc.tracking_uri}; "
                            "train and promote a model first, or name an existing version") from None


def download(uri: str, dest: Path) -> Path:
    import mlflow.artifacts

    dest.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))


# --- reports -------------------------------------------------------------------------------------------


def report_markdown(mlc, run_id: str, metrics: Mapping[str, float], version: str | None = None,
                    model_name: str | None = None, promotion: Mapping[str, Any] | None = None) -> str:
    """A short Markdown summary of a training run: a link to it, its final metrics, its version and promotion."""
    run = mlc.get_run(run_id)
    lines = [f"## Training run [{run.info.run_name}]({run_url(mlc, run_id)})", "",
             f"MLflow run `{run_id}` ({run.info.status}), dataset `{run.data.tags.get('poseops.dataset')}` "
             f"`{run.data.tags.get('poseops.dataset_dvc_hash')}`, git `{run.data.tags.get('git_commit', 'none')[:12]}`.", ""]
    parent = run.data.tags.get("poseops.parent_model_version")
    if parent:
        lines += [f"Fine-tuned from `{parent}`.", ""]
    lines += ["| metric (val split) | value |", "| --- | --- |"]
    lines += [f"| {k} | {metrics[k]:.4f} |" for k in (*SUMMARY_METRICS, *sorted(set(metrics) - set(SUMMARY_METRICS)))
              if k in metrics]
    if version:
        lines += ["", f"Registered as `models:/{model_name}/{version}`."]
    if promotion:
        verdict = "promoted to" if promotion["promoted"] else "not promoted to"
        lines += [f"Version {promotion['candidate_version']} {verdict} the champion: {promotion['reason']}."]
    return "\n".join(lines) + "\n"
