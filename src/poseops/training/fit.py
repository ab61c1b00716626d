"""The train stage: train with Ultralytics (resuming an interrupted run from its last.pt), logging
params, lineage and per-epoch metrics to an MLflow run whose id the train folder's state file keeps."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from poseops.params import Params
from poseops.settings import load_settings
from poseops.tracking.lineage import git_info
from poseops.tracking.metrics import EpochLogger, read_epochs, write_epochs_csv
from poseops.tracking.runs import (
    last_logged_step,
    log_artifacts,
    log_dataset,
    log_params,
    reopen_run,
    set_tags,
    start_run,
)
from poseops.tracking.store import TrackingError, check_store, client, store_problem
from poseops.training.dataset import DatasetInfo, read_dataset_info
from poseops.training.init_weights import INIT_TAGS, resolve_init_weights
from poseops.training.layout import Layout, TrainingError, read_state, resolved_data_yaml, write_state
from poseops.training.recipe import choose_recipe
from poseops.training.resume import drop_epochs_after, fail_orphaned_runs, fingerprint, resume_point, settle_dead_run
from poseops.training.yolo import configure_ultralytics, ultralytics_train_args
from poseops.weights import load_checkpoint


@dataclass
class TrainResult:
    run_id: str
    resumed: bool
    epochs: list[dict[str, float]] = field(default_factory=list)
    best: Path | None = None


@dataclass(frozen=True)
class _Start:
    """How a training starts: its run, the weights to load, `YOLO.train`'s arguments, the state to keep."""

    run_id: str
    weights: str
    kwargs: dict[str, Any]
    state: dict[str, Any]


@dataclass(frozen=True)
class _Context:
    params: Params
    root: Path
    lay: Layout
    dataset: DatasetInfo
    fingerprint: str


def train(params: Params, root: Path = Path("."), layout: Layout = Layout(), mlc=None,
          callbacks: Mapping[str, Callable[[Any], None]] | None = None) -> TrainResult:
    """Train (or resume) and log it all to an MLflow run; the run id is kept in the train folder's state file.

    An interrupted training with the same params and dataset goes on from its last.pt in a new
    run that names the interrupted one (`poseops.resumed_from_run`). A training that finished but
    could not be logged (the store stayed locked) is logged without training again.
    """
    check_store(mlc.tracking_uri if mlc else None)  # before any training time is spent
    mlc = mlc or client()
    configure_ultralytics()
    root = root.resolve()
    lay = layout.under(root)
    dataset = read_dataset_info(lay)
    prepared_yaml = lay.prepared / "data.yaml"
    if not prepared_yaml.is_file():
        raise TrainingError(f"{prepared_yaml} is missing: run the prepare stage first (dvc repro prepare)")
    ctx = _Context(params, root, lay, dataset, fingerprint(params, dataset, prepared_yaml.read_text(encoding="utf-8")))
    out = lay.train
    state = settle_dead_run(mlc, out)
    fail_orphaned_runs(mlc, params.mlflow.experiment)  # runs of killed trainings this folder no longer names
    if state.get("status") == "trained" and state.get("fingerprint") == ctx.fingerprint and (out / "weights" / "best.pt").is_file():
        reopen_run(mlc, state["run_id"])
        return _log_trained(mlc, state["run_id"], out, lay, resumed=bool(state.get("resumed_from_run")))
    done, _ = resume_point(params, state, ctx.fingerprint, out / "weights" / "last.pt")
    start = _resume(mlc, ctx, state, done) if done is not None else _fresh(mlc, ctx)
    write_state(out, {**start.state, "run_id": start.run_id, "fingerprint": ctx.fingerprint, "status": "running",
                      "pid": os.getpid(), "host": socket.gethostname()})
    _fit(mlc, start, out, callbacks)
    write_state(out, {**read_state(out), "status": "trained"})  # weights complete: never trained again
    return _log_trained(mlc, start.run_id, out, lay, resumed=done is not None)


def _resume(mlc, ctx: _Context, state: dict[str, Any], done: int) -> _Start:
    """Go on from the interrupted training's last.pt, in a new run that names the interrupted one."""
    out, last, previous = ctx.lay.train, ctx.lay.train / "weights" / "last.pt", state["run_id"]
    init_tags = {k: state.get(k) for k in INIT_TAGS}
    resume_tags = {"poseops.resumed_from": str(last), "poseops.resumed_from_run": previous,
                   "poseops.resumed_at_epoch": done + 1}
    run_name = ctx.params.mlflow.run_name or f"{mlc.get_run(previous).info.run_name.removesuffix('-resumed')}-resumed"
    run_id = _start_tracked_run(mlc, ctx, run_name, {**init_tags, **resume_tags})
    set_tags(mlc, previous, {"poseops.resumed_by_run": run_id})
    drop_epochs_after(out / "results.csv", done)  # rows of an epoch whose last.pt was never written
    data_yaml = resolved_data_yaml(ctx.lay.prepared / "data.yaml", out / "data.yaml")
    return _Start(run_id, str(last), {"resume": str(last), "data": str(data_yaml)},
                  {**state, **init_tags, "resumed_from_run": previous})


def _fresh(mlc, ctx: _Context) -> _Start:
    """A training from the initial weights, in an empty train folder."""
    out, params = ctx.lay.train, ctx.params
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    init = resolve_init_weights(params, mlc, load_settings().home / "cache" / "init")
    run_name = params.mlflow.run_name or (f"{params.dataset.name}-{Path(init.path).stem}-"
                                          f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}")
    # weights only: initial weights that would run code are refused (loaded once, for the recipe too)
    checkpoint = load_checkpoint(init.path) if Path(init.path).suffix.lower() == ".pt" else None
    recipe = choose_recipe(params, init.path, ctx.lay.prepared / "data.yaml", checkpoint)
    print(f"recipe: {recipe.name}: {recipe.reason}", file=sys.stderr, flush=True)
    if recipe.warning:
        print(f"WARNING: {recipe.warning}", file=sys.stderr, flush=True)
    run_id = _start_tracked_run(mlc, ctx, run_name, {**init.tags(), **recipe.tags()})
    data_yaml = resolved_data_yaml(ctx.lay.prepared / "data.yaml", out / "data.yaml")
    kwargs = {**ultralytics_train_args(params), **recipe.args, "data": str(data_yaml), "project": str(out.parent),
              "name": out.name, "exist_ok": True}
    return _Start(run_id, init.path, kwargs, init.tags())


def _fit(mlc, start: _Start, out: Path, callbacks: Mapping[str, Callable[[Any], None]] | None) -> None:
    """`YOLO.train`, each epoch logged; an interruption or failure ends the run KILLED or FAILED, saying why."""
    from ultralytics import YOLO

    model = YOLO(start.weights)
    logger = EpochLogger(mlc, start.run_id, out / "results.csv")
    logger.flush()  # a resumed run carries the interrupted training's epochs too
    model.add_callback("on_fit_epoch_end", logger)
    model.add_callback("on_train_start", _no_final_validation)
    for event, fn in (callbacks or {}).items():
        model.add_callback(event, fn)
    try:
        with _signals_interrupt():
            model.train(**start.kwargs)
    except BaseException as e:
        write_state(out, {**read_state(out), "status": "interrupted"})
        epochs = len(read_epochs(out / "results.csv"))
        tags = {"poseops.error": f"{type(e).__name__}: {e}"[:500]}
        if isinstance(e, KeyboardInterrupt):
            tags["poseops.interrupted"] = (f"{e or 'interrupted (Ctrl-C)'} after {epochs} epoch(s); "
                                           "`poseops train --resume` goes on from last.pt")
        try:
            logger.flush()
            set_tags(mlc, start.run_id, tags)
        finally:
            mlc.set_terminated(start.run_id, status="KILLED" if isinstance(e, KeyboardInterrupt) else "FAILED")
        raise


def _no_final_validation(trainer: Any) -> None:
    """Ultralytics' trainer ends by validating best.pt (with plots); the evaluate stage validates the same best.pt
    on the same split (with plots, per-keypoint metrics and the gallery), so the trainer's pass would be the same
    work twice. The trainer still strips the optimizer from last.pt and best.pt, as its final step does."""
    from ultralytics.utils.torch_utils import strip_optimizer

    def strip_only() -> None:
        ckpt = strip_optimizer(trainer.last) if trainer.last.exists() else {}
        if trainer.best.exists():
            strip_optimizer(trainer.best, updates={"train_results": ckpt.get("train_results")})

    trainer.final_eval = strip_only


def _start_tracked_run(mlc, ctx: _Context, run_name: str, extra_tags: Mapping[str, Any]) -> str:
    """A new MLflow run with the lineage tags, the params, the dataset as input and the dataset files."""
    params, dataset, lay = ctx.params, ctx.dataset, ctx.lay
    git = git_info(ctx.root)
    source = dataset.source
    tags = {
        **git, "mlflow.source.git.commit": git["git_commit"] if git["git_commit"] != "none" else None,
        "poseops.dataset": params.dataset.name, "poseops.dataset_dvc_hash": dataset.dvc_hash,
        "poseops.label_studio_project": source.get("label_studio_project_id"),
        "poseops.label_studio_snapshot": source.get("export_snapshot_id"),
        "poseops.model": params.train.model, **extra_tags, "poseops.fingerprint": ctx.fingerprint,
    }
    run_id = start_run(mlc, params.mlflow.experiment, run_name, {k: str(v) for k, v in tags.items() if v})
    log_params(mlc, run_id, params.flat())
    log_dataset(mlc, run_id, params.dataset.name, dataset.dvc_hash, str(params.dataset.dir))
    log_artifacts(mlc, run_id, [lay.prepared / "dataset.json", lay.prepared / "data.yaml", ctx.root / params.skeleton],
                  artifact_path="dataset")
    return run_id


def _log_trained(mlc, run_id: str, out: Path, lay: Layout, resumed: bool) -> TrainResult:
    """Log a finished training's epochs, weights and plots, and end its run.

    When the store stays locked, the weights stay in the train folder and the error says that
    running again logs them without training again.
    """
    try:
        EpochLogger(mlc, run_id, out / "results.csv", already_logged=last_logged_step(mlc, run_id)).flush()
        rows = read_epochs(out / "results.csv")
        write_epochs_csv(rows, lay.epochs_csv)
        weights = out / "weights"
        log_artifacts(mlc, run_id, [weights / "best.pt", weights / "last.pt"], artifact_path="weights")
        log_artifacts(mlc, run_id, [out / "results.csv", out / "args.yaml", lay.epochs_csv], artifact_path="train")
        log_artifacts(mlc, run_id, sorted(p for p in out.iterdir() if p.suffix in {".png", ".jpg"}),
                      artifact_path="plots/train")
        write_state(out, {**read_state(out), "status": "finished", "epochs": len(rows)})
        mlc.set_terminated(run_id, status="FINISHED")
    except Exception as e:
        problem = store_problem(mlc.tracking_uri, e)
        if problem is None:
            raise
        raise TrackingError(f"the training finished and its weights are kept in {out / 'weights'}, but "
                            f"logging it failed: {problem}. Then run the same command again: it logs this "
                            "training without training again") from None
    return TrainResult(run_id=run_id, resumed=resumed, epochs=rows, best=weights / "best.pt")


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
