"""What every `poseops` command shares: the consoles, the one error handler, and how a flow is run.

Exit codes, for every command: 0 done; 1 a problem the user can fix (a `PoseopsError`,
printed once as `error: ...`, no traceback); 2 a bad command line (Typer's own); 130
interrupted (Ctrl-C, SIGTERM). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from poseops.errors import PoseopsError

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def fail(message: str) -> typer.Exit:
    """Print one `error:` line; raise what this returns (exit 1)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    return typer.Exit(1)


def user_errors(fn):
    """The one handler: known problems print one line and exit 1; Ctrl-C exits 130; bugs keep their traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PoseopsError as e:
            raise fail(str(e)) from None
        except KeyboardInterrupt as e:
            _interrupted(e)
        except Exception as e:
            cause = interrupt_behind(e)
            if cause is not None:  # Prefect's temporary server went down with us while it recorded the crash
                _interrupted(cause)
            from poseops.tracking import store_problem, tracking_uri

            problem = store_problem(tracking_uri(), e)  # a broken MLflow store: say which and what to do
            if problem is None:
                raise
            raise fail(f"{problem}; then run again") from None

    return wrapper


def interrupt_behind(error: BaseException) -> KeyboardInterrupt | None:
    """The Ctrl-C or SIGTERM that an error happened while handling, if any."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, KeyboardInterrupt):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


def _interrupted(error: KeyboardInterrupt) -> NoReturn:
    """Exit 130 at once, saying why.

    Ctrl-C and SIGTERM reach the whole process group, Prefect's temporary server included; its
    client would then wait at exit for a server that is gone. What had to be recorded (the MLflow
    run ended as KILLED, the flow run's state where a server still answers) is recorded by now.
    """
    err_console.print(f"[yellow]interrupted ({escape(str(error) or 'Ctrl-C')})[/]", highlight=False)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


def progress_bar() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=err_console, transient=False)


class _KnownFailures(logging.Filter):
    """Keeps Prefect's console from repeating a known refusal (with tracebacks) that the CLI prints once.

    The records still reach the Prefect server (its UI shows the failure); only the terminal is spared.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, PoseopsError):
            return False
        message = record.getMessage()
        return not (message.startswith("Finished in state Failed") or any(n in message for n in _known_names()))


def _known_names() -> set[str]:
    """`NotReady: ` and the like, as Prefect writes a failed state's message."""
    names, todo = set(), [PoseopsError]
    while todo:
        cls = todo.pop()
        names.add(f"{cls.__name__}: ")
        todo += cls.__subclasses__()
    return names


_KNOWN = _KnownFailures()


def flow(path: str) -> Any:
    """A flow of `poseops.flows` ("pull_labels.pull_labels"), with Prefect pointed at poseops' server first."""
    from poseops.settings import load_settings
    from poseops.stack import connect_prefect

    connect_prefect(load_settings())
    module, _, name = path.rpartition(".")
    found = getattr(importlib.import_module(f"poseops.flows.{module}"), name)
    for logger in [logging.root, *(logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
                                   if n.startswith("prefect"))]:
        for handler in logger.handlers:
            if type(handler).__name__ == "PrefectConsoleHandler" and _KNOWN not in handler.filters:
                handler.addFilter(_KNOWN)
    return found
