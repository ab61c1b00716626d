"""The one retry layer of the flows: Prefect task retries on the tasks that talk to Label Studio.

Clients made inside those tasks do not retry themselves (`retries=0`), so a call is tried
`ATTEMPTS` times in all, and the messages say so.
"""

from __future__ import annotations

from poseops.labelstudio import LabelStudioClient, LabelStudioRefused
from poseops.pull import NotReady, PullError
from poseops.settings import Settings


def worth_retrying(task, task_run, state) -> bool:
    """Retry what may pass on a second try (Label Studio down or failing); not a refusal or bad data."""
    return not isinstance(state.data, LabelStudioRefused | PullError | NotReady)


NETWORK_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 5, 15], "retry_condition_fn": worth_retrying}
ATTEMPTS = NETWORK_RETRIES["retries"] + 1


def label_studio(settings: Settings) -> LabelStudioClient:
    """A Label Studio client for a Prefect task: the task's retries are the only ones."""
    return LabelStudioClient(settings, retries=0)
