"""MLflow tracking: the store, the runs, the registry; Ultralytics' metrics; lineage.

    store     where MLflow keeps runs (`MLFLOW_TRACKING_URI` or a SQLite file in the poseops home),
              a client on it, the checks that a store answers and is not locked, experiments
    runs      what is logged to a run: params, tags, metrics, artifacts, the dataset input
    metrics   Ultralytics' results.csv as rows of poseops metric names, the DVC plots table,
              the per-epoch logging callback
    lineage   the git commit the code ran from, the DVC hash of a dataset folder
    registry  model versions: register (all or nothing), resolve `models:/` URIs and aliases, download
    report    a training run's Markdown summary

Every call goes through an explicit `MlflowClient` and run id (no global active run), so the
DVC stages (separate processes), the Prefect flow and the CLI can all add to the same run.
Ultralytics' own MLflow callback is off (see `poseops.training.yolo`): it ignores the experiment
chosen here, reads `MLFLOW_RUN`/`MLFLOW_EXPERIMENT_NAME`, rewrites metric names and switches
itself off under pytest.
"""

from poseops.tracking.lineage import dvc_hash, git_info
from poseops.tracking.metrics import (
    FITNESS_WEIGHTS,
    SUMMARY_METRICS,
    EpochLogger,
    fitness,
    metric_name,
    read_epochs,
    write_epochs_csv,
)
from poseops.tracking.registry import (
    VersionRef,
    download,
    parse_model_uri,
    register_version,
    resolve_model_uri,
    set_version_tags,
    version_for_alias,
)
from poseops.tracking.report import report_markdown
from poseops.tracking.runs import (
    last_logged_step,
    log_artifacts,
    log_dataset,
    log_metrics,
    log_params,
    set_tags,
    start_run,
)
from poseops.tracking.store import (
    LOCK_WAIT_S,
    TrackingError,
    check_store,
    client,
    experiment_id,
    lock_wait_s,
    run_url,
    store_problem,
    tracking_uri,
)

__all__ = [
    "FITNESS_WEIGHTS", "LOCK_WAIT_S", "SUMMARY_METRICS", "EpochLogger", "TrackingError", "VersionRef", "check_store",
    "client", "download", "dvc_hash", "experiment_id", "fitness", "git_info", "last_logged_step", "lock_wait_s",
    "log_artifacts", "log_dataset", "log_metrics", "log_params", "metric_name", "parse_model_uri", "read_epochs",
    "register_version", "report_markdown", "resolve_model_uri", "run_url", "set_tags", "set_version_tags",
    "start_run", "store_problem", "tracking_uri", "version_for_alias", "write_epochs_csv",
]
