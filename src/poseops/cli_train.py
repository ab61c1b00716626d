"""`poseops train` and `poseops promote`: the training pipeline and the champion alias from the command line.

Wired into the main CLI with `cli_train.register(app)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from poseops.cli_common import console, err_console, flow, interrupt_behind, user_errors


@user_errors
def train(
    overrides: Annotated[list[str] | None, typer.Option("--set", "-S", help="Override a param: section.key=value, e.g. train.epochs=3 (repeatable)")] = None,
    root: Annotated[Path, typer.Option(help="Project root with params.yaml (and dvc.yaml)")] = Path("."),
    dvc: Annotated[bool, typer.Option("--dvc/--no-dvc", help="Run through DVC (dvc repro / dvc exp run) or the stages in this process")] = True,
    promote: Annotated[bool | None, typer.Option("--promote/--no-promote", help="Move the champion alias if better (default: promote.auto)")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Go on with the interrupted training from its last.pt; an error when there is none")] = False,
) -> None:
    """Train YOLO-pose: prepare → train → evaluate → export, tracked in MLflow, registered, then promoted if better.

    An interrupted training with the same params resumes by itself; `--resume` insists on it. `-S` overrides
    hold for this run only: params.yaml is left as it was.
    """
    from poseops import training

    if dvc and not training.is_dvc_repo(root):
        console.print(f"[yellow]{root.resolve()} is not a DVC repository (dvc init): running the stages here[/]")
    train_flow = flow("train.train_flow")
    try:
        out = train_flow(root=str(root), overrides=list(overrides or []), use_dvc=dvc and training.is_dvc_repo(root),
                         promote=promote, resume=resume)
    except BaseException as e:  # Ctrl-C, SIGTERM: the training's run is already ended as KILLED
        if interrupt_behind(e) is not None:
            err_console.print("[yellow]`poseops train --resume` goes on from the last finished epoch[/]")
        raise
    if out["resumed"]:
        console.print(f"resumed from {out['resumed']['last']} after epoch {out['resumed']['epochs_done']} "
                      f"(interrupted MLflow run {out['resumed']['run_id']})")
    console.print(f"MLflow run {out['run_id']}: {out['run_url']}")
    console.print(f"registered models:/{out['model']}/{out['version']}")
    console.print_json(json.dumps(out["metrics"]))
    if out["promotion"]:
        _print_promotion(**{k: out["promotion"][k] for k in ("candidate_version", "promoted", "reason")})


@user_errors
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
    p = training.promote(params, root, version=version)
    _print_promotion(p.candidate_version, p.promoted, p.reason)


def _print_promotion(candidate_version: str, promoted: bool, reason: str) -> None:
    verdict = "[green]promoted[/]" if promoted else "[yellow]not promoted[/]"
    console.print(f"version {candidate_version}: {verdict} ({escape(reason)})")


def register(app: typer.Typer) -> None:
    """Add `train` and `promote` to the `poseops` command line."""
    app.command("train")(train)
    app.command("promote")(promote)
