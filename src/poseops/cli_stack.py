"""`poseops stack up|down|status`: every server on the chosen profile; `poseops postgres up|down|status`: the
server profile's PostgreSQL alone (a local cluster in `<home>/postgres`, or the databases on a team's cluster).

The profile is POSEOPS_PROFILE (embedded: SQLite, one machine; server: PostgreSQL); `--profile` overrides it
for one command. Wired into the main CLI with `cli_stack.register(app)`.
"""

from __future__ import annotations

import os
from typing import Annotated

import typer

from poseops.cli_common import console, err_console, fail, user_errors
from poseops.settings import PROFILES, Settings, ensure_label_studio_credentials, load_settings

ProfileOption = Annotated[str | None, typer.Option("--profile", help="embedded or server (default: POSEOPS_PROFILE)")]


def stack_settings(profile: str | None, start: bool = False) -> Settings:
    """The settings, on `profile` when given; for a start, with the credentials a first start needs (into .env)."""
    if profile is not None:
        if profile not in PROFILES:
            raise fail(f"--profile {profile!r} is not a profile: use embedded (one machine) or server (PostgreSQL)")
        os.environ["POSEOPS_PROFILE"] = profile  # this command, and what it runs, on that profile
    if not start:
        return load_settings()
    settings = ensure_label_studio_credentials()
    if settings.server_profile and not settings.database_url:
        from poseops.postgres import ensure_database_url

        settings = ensure_database_url()
        err_console.print("POSEOPS_DATABASE_URL was not set: wrote a local cluster's (127.0.0.1, random password) "
                          "into .env")
    return settings


def stack_up(profile: ProfileOption = None,
             timeout: Annotated[float, typer.Option(help="Seconds to wait for each server to answer")] = 900) -> None:
    """Start every server of the profile (or find them running): PostgreSQL (server profile), Label Studio, MLflow,
    the Prefect server."""
    from poseops import stack

    settings = stack_settings(profile, start=True)
    stack.stack_up(settings, say=lambda line: err_console.print(line), timeout=timeout)
    console.print(f"the {settings.profile} profile is up:")
    _print_status(stack.stack_status(settings))


def stack_down(profile: ProfileOption = None) -> None:
    """Stop the servers of the profile that poseops started (and only those)."""
    from poseops import stack

    stopped = stack.stack_down(stack_settings(profile))
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing started by poseops was running")


def stack_status(profile: ProfileOption = None) -> None:
    """Tell which servers of the profile answer; exit 1 when one does not."""
    from poseops import stack

    found = stack.stack_status(stack_settings(profile))
    _print_status(found)
    if not all(status.running for _, status in found):
        raise typer.Exit(1)


def _print_status(found) -> None:
    for name, status in found:
        how = "answering" if status.running else "not answering"
        whose = f" (started by poseops, pid {status.pid})" if status.started_here else ""
        console.print(f"  {name}: {status.url} {how}{whose}")


def postgres_up(timeout: Annotated[float, typer.Option(help="Seconds to wait for it to answer")] = 120) -> None:
    """Start the local cluster (made by the first `up` from POSEOPS_DATABASE_URL) and create the parts' databases;
    on another machine's cluster, only create the databases."""
    from poseops import postgres

    settings = stack_settings(None)
    if not settings.database_url:
        settings = postgres.ensure_database_url()
        err_console.print("POSEOPS_DATABASE_URL was not set: wrote a local cluster's (127.0.0.1, random password) into .env")
    server = postgres.database_server(settings)
    before = postgres.status(settings)
    with err_console.status("waiting for PostgreSQL to answer"):
        postgres.up(settings, timeout)
    if not server.loopback:
        console.print(f"PostgreSQL at {server.address} (not run by poseops): databases {', '.join(_names())} ready")
        return
    how = "already running" if before.running else "started"
    console.print(f"PostgreSQL {how}: {server.address} as {server.user} (state in {settings.home / 'postgres'}); "
                  f"databases {', '.join(_names())}")


def postgres_down() -> None:
    """Stop the local cluster poseops started (and only that one)."""
    from poseops import postgres

    stopped = postgres.down(load_settings())
    console.print("PostgreSQL stopped" if stopped else "nothing to stop: no PostgreSQL started by poseops is running")


def postgres_status() -> None:
    """Tell whether PostgreSQL answers at POSEOPS_DATABASE_URL's host and port."""
    from poseops import postgres

    status = postgres.status(load_settings())
    whose = f" (started by poseops, pid {status.pid})" if status.started_here else ""
    console.print(f"{status.url}: {'answering' if status.running else 'not answering'}{whose}")
    if not status.running:
        raise typer.Exit(1)


def _names() -> list[str]:
    from poseops.postgres import PARTS, database_name

    return [database_name(part) for part in PARTS]


def register(app: typer.Typer) -> None:
    stack_app = typer.Typer(help="Every server of a profile: embedded (SQLite) or server (PostgreSQL).",
                            no_args_is_help=True)
    postgres_app = typer.Typer(help="The server profile's PostgreSQL (a local cluster on 127.0.0.1, state under "
                                    ".poseops/postgres).", no_args_is_help=True)
    for group, prefix, commands in ((stack_app, "stack", (stack_up, stack_down, stack_status)),
                                    (postgres_app, "postgres", (postgres_up, postgres_down, postgres_status))):
        for command in commands:
            group.command(command.__name__.removeprefix(f"{prefix}_"))(user_errors(command))
        app.add_typer(group, name=prefix)
