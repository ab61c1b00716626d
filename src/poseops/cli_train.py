"""`poseops train` and `poseops promote`: the training pipeline and the champion alias from the command line.

Wired into the main CLI with `cli_train.register(app)`.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def _user_errors(fn):
    """Known problems print one line and exit 1; anything else keeps its traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from poseops.params import ParamsError
        from poseops.skeleton import SkeletonError
        from poseops.tracking import TrackingError, store_problem, tracking_uri
        from poseops.training import TrainingError

        try:
            return fn(*args, **kwargs)
        except (ParamsError, TrainingError, TrackingError, SkeletonError) as e:
            err_console.print(f"[bold red]error:[/] {escape(str(e))}", highlight=False)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM: the training's run is already ended as KILLED
            err_console.print(f"[yellow]interrupted ({escape(str(e) or 'Ctrl-C')}): `poseops train --resume` goes on "
                              "from the last finished epoch[/]", highlight=False)
            raise typer.Exit(130) from None
        except Exception as e:
            problem = store_problem(tracking_uri(), e)
            if problem is None:
                raise
            err_console.print(f"[bold red]error:[/] {escape(problem)}; then run again", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


@_user_errors
def train(
    overrides: Annotated[list[str] | None, typer.Option("--set", "-S", help="Override a param: section.key=value, e.g. train.epochs=3 (repeatable)")] = None,
    root: Annotated[Path, typer.Option(help="Project root with params.yaml (and dvc.yaml)")] = Path("."),
    dvc: Annotated[bool, typer.Option("--dvc/--no-dvc", help="Run through DVC (dvc repro / dvc exp run) or the stages in this process")] = True,
    promote: Annotated[bool | None, typer.Option("--promote/--no-promote", help="Move the champion alias if better (default: promote.auto)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Go on with the interrupted training from its last.pt; an error when there is none")] = False,
) -> None:
    """Train YOLO-pose: prepare → train → evaluate → export, tracked in MLflow, registered, then promoted if better.

    An interrupted training with the same params resumes by itself; `--resume` insists on it.
    """
    from poseops import tracking, training
    from poseops.params import load_params, parse_override

    overrides = list(overrides or [])
    params = load_params(root / "params.yaml", dict(map(parse_override, overrides)))  # refuse bad params before work
    tracking.check_store()  # an unreachable or locked store fails here, before any training time
    mlc = tracking.client()
    if resume:
        found = training.interrupted_training(params, root, mlc=mlc)
        console.print(f"resuming from {found['last']} after epoch {found['epochs_done']} "
                      f"(interrupted MLflow run {found['run_id']})")
    if dvc and training.is_dvc_repo(root):
        training.dvc_repro(root, overrides)
    else:
        if dvc:
            err_console.print(f"[yellow]{root.resolve()} is not a DVC repository (dvc init): running the stages here[/]")
        training.run_stages(params, root)
    out = training.pipeline_outputs(root)
    console.print(f"MLflow run {out['run_id']}: {tracking.run_url(mlc, out['run_id'])}")
    console.print(f"registered models:/{out['model']}/{out['version']}")
    console.print_json(json.dumps(out["metrics"]))
    if params.promote.auto if promote is None else promote:
        _print_promotion(training.promote(params, root, version=out["version"], mlc=mlc))


@_user_errors
def promote(
    version: Annotated[str | None, typer.Option(help="Model version to consider (default: the one this workspace's pipeline registered)")] = None,
    min_improvement: Annotated[float | None, typer.Option(help="Override promote.min_improvement (0: at least as good)")] = None,
    root: Annotated[Path, typer.Option(help="Project root with params.yaml")] = Path("."),
) -> None:
    """Move the `champion` alias to a model version when it is at least as good on the current val split."""
    from poseops import training
    from poseops.params import load_params

    overrides = {} if min_improvement is None else {"promote.min_improvement": min_improvement}
    params = load_params(root / "params.yaml", overrides)
    _print_promotion(training.promote(params, root, version=version))


def _print_promotion(p) -> None:
    verdict = "[green]promoted[/]" if p.promoted else "[yellow]not promoted[/]"
    console.print(f"version {p.candidate_version}: {verdict} ({escape(p.reason)})")


def register(app: typer.Typer) -> None:
    """Add `train` and `promote` to the `poseops` command line."""
    app.command("train")(train)
    app.command("promote")(promote)
