"""Flows that take seconds (a pull, an autolabel run) without Prefect's one-second wait at their end.

Prefect's flow engine sends heartbeats from a thread that sleeps in whole seconds, and every flow
run waits for that thread when it ends: up to a second per run (and per subflow), whatever the
flow did. A `QuickFlow` run in this process (the CLI, a parent flow such as the loop, the tests)
sends no heartbeats; the runs of its deployment (`poseops serve-flows`) start the flow through
the runner and keep them, so Prefect can still tell a crashed scheduled run.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prefect import Flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings


class QuickFlow(Flow):
    """A Prefect flow whose in-process runs send no heartbeats (see the module's docstring)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            return super().__call__(*args, **kwargs)


def quick_flow(**options: Any) -> Callable[[Callable[..., Any]], QuickFlow]:
    """`@flow(**options)` making a `QuickFlow`."""
    return lambda fn: QuickFlow(fn, **options)
