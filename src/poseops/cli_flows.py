"""`poseops deploy-flows`: every flow on a Prefect work pool, run by `prefect worker` processes (poseops.flows.pool).

Wired into the main CLI with `cli_flows.register(app)`, beside `serve-flows` (one process serving them all).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from poseops.cli_common import console, fail, user_errors


@user_errors
def deploy_flows(
    pool: Annotated[str, typer.Option("--pool", help="The work pool the flows run on (created as a process pool if missing)")],
    train_pool: Annotated[str | None, typer.Option("--train-pool", help="A pool of its own for the train flow (e.g. GPU machines)")] = None,
    source: Annotated[str, typer.Option("--source", help="Where workers find the project: a folder (default: this one) or a git URL")] = ".",
    params_file: Annotated[Path, typer.Option("--params", help="The params.yaml whose `schedules` section schedules them")] = Path("params.yaml"),
) -> None:
    """Deploy every flow to a Prefect work pool (schedules from params.yaml); `prefect worker start --pool NAME` runs them."""
    from poseops.settings import load_settings
    from poseops.stack import connect_prefect

    settings = load_settings()
    if not connect_prefect(settings):
        raise fail("no Prefect server answers: start one with `poseops prefect up` (or set PREFECT_API_URL to the "
                   "server the workers share)")
    from poseops.flows.pool import deploy_to_pools, worker_command

    deployed = deploy_to_pools(pool, train_pool, str(params_file), source)
    for d in deployed:
        when = f"cron {d.cron}" if d.cron else "when triggered"
        console.print(f"  {escape(d.flow)}/{escape(d.name)} on pool {escape(d.pool)} ({escape(when)})")
    console.print(f"deployed {len(deployed)} flows; see them at {settings.prefect_url}/deployments")
    where = str(Path(source).resolve()) if "://" not in source and not source.startswith("git@") else "the project"
    console.print(f"start a worker for each pool, from {escape(where)} (its .env is read by every run), with "
                  f"PREFECT_API_URL pointing at this server:")
    for name in dict.fromkeys(d.pool for d in deployed):
        console.print(f"  {escape(worker_command(name))}", highlight=False)


def register(app: typer.Typer) -> None:
    app.command("deploy-flows")(deploy_flows)
