"""The MLflow store: where it is, a client on it, whether it answers or is locked, experiments."""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path

from poseops.errors import PoseopsError

LOCK_WAIT_S = 60.0  # how long training waits for a locked SQLite store before it starts


class TrackingError(PoseopsError, RuntimeError):
    """MLflow cannot be used as configured; the message says how to fix it."""


def tracking_uri() -> str:
    """`MLFLOW_TRACKING_URI`, else a SQLite store in the poseops home (`$POSEOPS_HOME/mlflow.db`), or on the
    server profile the MLflow tracking server poseops runs (`POSEOPS_MLFLOW_UI_URL`, on PostgreSQL)."""
    uri = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not uri:
        from poseops.settings import load_settings

        settings = load_settings()
        if settings.server_profile:
            return settings.mlflow_ui_url
        return f"sqlite:///{settings.home.resolve() / 'mlflow.db'}"
    if uri.startswith("file:") or "://" not in uri:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={uri!r} is MLflow's file store, which MLflow ≥ 3.13 refuses: "
            "use a database such as sqlite:///path/to/mlflow.db or a tracking server http://host:5000"
        )
    return uri


def client(uri: str | None = None, must_exist: bool = False):
    """An `MlflowClient` on `uri` (default `tracking_uri()`), creating a local SQLite file's folder.

    A SQLite store that is damaged, or missing where `must_exist` (commands that only read
    runs: promote, deploy), is a clear TrackingError instead of a traceback or a new, empty store.
    """
    import mlflow
    from mlflow import MlflowClient

    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///"):
        check_sqlite_store(Path(uri.removeprefix("sqlite:///").split("?")[0]), must_exist)
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def check_sqlite_store(path: Path, must_exist: bool = False) -> None:
    """A clear TrackingError for a SQLite store path that is empty, missing (when `must_exist`) or not a database."""
    if not str(path).strip() or str(path) in (".", "/") or path.is_dir():
        raise TrackingError(f"MLFLOW_TRACKING_URI names {str(path)!r}, not a database file: use sqlite:///path/to/mlflow.db")
    if not path.exists():
        if must_exist:
            raise TrackingError(f"there is no MLflow store at {path}: train a model first (poseops train), or set "
                                "MLFLOW_TRACKING_URI to the store that holds your runs")
        return
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
            tables = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.DatabaseError as e:
        raise TrackingError(f"the MLflow store {path} is damaged or not a database ({e}): restore it from a backup, "
                            "or point MLFLOW_TRACKING_URI at another store") from None
    if path.stat().st_size and tables and "experiments" not in tables:
        raise TrackingError(f"{path} is a SQLite database but not an MLflow store (no experiments table): "
                            "point MLFLOW_TRACKING_URI at the MLflow store")


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
        _check_server(uri)
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


def _check_server(uri: str) -> None:
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
