"""Cross-process locks, one home for all of them: `exclusive(settings, name)`.

What each lock guards, and whether a second holder waits or fails (the callers' docstrings say it too):

    pull-<dataset>       one pull of a dataset at a time (`pull.dataset_lock`): the second FAILS at once,
                         so two pulls never build one mixed dataset
    registry-<model>     registering a version of a registered model (`training.register`): WAITS
    champion-<model>     comparing a version with the alias holder and moving the alias (`training.promotion`):
                         WAITS, so two trainings never promote two champions at once
    deploy               replacing the running detection service (`deploy.deploy_lock`): WAITS
    loop-<dataset>       one improvement loop of a dataset at a time (`flows.loop`): the second FAILS at once

Where the lock lives follows the profile (`POSEOPS_PROFILE`):

- **embedded** (one machine): an flock on a file under `<home>/locks/` (or the path the caller names, as the
  pull's `data/.<dataset>.lock`). The kernel lets it go when the holder exits, however it exits.
- **server** (several machines): a Prefect global concurrency limit of 1 named `poseops-<name>`, created on
  first use, on the Prefect server the workers share (`PREFECT_API_URL`, else `POSEOPS_PREFECT_URL`). The
  slot is held under a lease the holder renews (every 3/4 of `LEASE_S`); a holder that dies stops renewing,
  and the server frees the slot once the lease ends (`LEASE_S`, plus its lease check every 15 s). A holder
  that loses its lease (the server unreachable for longer than that) is stopped rather than go on unguarded.
  The holder's description (host, pid, flow run) is kept in a Prefect variable of the same name, so the
  error a busy lock gives names who holds it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from poseops.errors import PoseopsError
from poseops.settings import Settings, load_settings, secure_home

LEASE_S = 120.0  # a server-profile lock's lease: how soon a crashed holder's slot frees itself (Prefect's minimum: 60)
WAIT_FOREVER = None
PREFIX = "poseops-"


class LockBusy(PoseopsError, RuntimeError):
    """The lock is held by someone else (at once for a failing lock, after `wait_s` for a waiting one)."""

    def __init__(self, message: str, holder: str = "") -> None:
        super().__init__(message)
        self.holder = holder


class LockUnavailable(PoseopsError, RuntimeError):
    """The server profile's lock could not be asked for: no Prefect server answers."""


def resource_name(name: str) -> str:
    """The Prefect name of a lock: `poseops-<name>` in lowercase letters, digits and '-' (a hash keeps it unique)."""
    slug = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if slug == name:
        return PREFIX + slug
    return f"{PREFIX}{slug[:80]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"


def machine_lock_file(key: str) -> Path:
    """An embedded lock file for a resource outside the project (an MLflow store): in this user's temporary folder,
    named after `key`, so every process on the machine that uses the same resource finds the same file."""
    folder = Path(tempfile.gettempdir()) / f"poseops-locks-{os.getuid()}"
    folder.mkdir(mode=0o700, exist_ok=True)
    if folder.is_symlink() or folder.stat().st_uid != os.getuid():
        raise LockUnavailable(f"{folder} is not this user's own folder: remove it, then try again")
    return folder / f"{resource_name(key)}.lock"


def holder_description() -> str:
    """Who holds a lock, for the error another holder gets: pid, host, and the Prefect flow run when there is one."""
    who = f"pid {os.getpid()} on {socket.gethostname()}"
    if "prefect" in sys.modules:  # a flow run only runs where Prefect is imported already
        from prefect.context import FlowRunContext

        context = FlowRunContext.get()
        if context is not None and context.flow_run is not None:
            who += f", flow run {context.flow_run.name!r}"
    return who


@contextlib.contextmanager
def exclusive(settings: Settings | None, name: str, *, wait_s: float | None = WAIT_FOREVER, what: str = "",
              lock_file: Path | None = None, lease_s: float = LEASE_S) -> Iterator[None]:
    """Hold the lock `name` across processes (and, on the server profile, across machines) while inside.

    `wait_s`: how long to wait for a busy lock; 0 fails at once, None waits as long as it takes. A lock that
    cannot be had in time raises LockBusy naming `what` (default: the lock's name), its holder, and what to do.
    `lock_file`: the embedded profile's lock file (default `<home>/locks/poseops-<name>.lock`, see resource_name).
    """
    settings = settings or load_settings()
    what = what or f"the lock {name!r}"
    if settings.server_profile:
        with _prefect_lock(settings, name, wait_s, what, lease_s):
            yield
    else:
        path = lock_file or secure_home(settings.home) / "locks" / f"{resource_name(name)}.lock"
        with _file_lock(path, wait_s, what):
            yield


# --- embedded: a lock file ------------------------------------------------------------------------------------


@contextlib.contextmanager
def _file_lock(path: Path, wait_s: float | None, what: str) -> Iterator[None]:
    """An flock on `path` (0600, a link refused), the holder's description written in it for the next one to read."""
    from poseops.safepaths import open_lock_file

    path.parent.mkdir(parents=True, exist_ok=True)
    with open_lock_file(path) as lock:
        if not _flock(lock, wait_s):
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            waited = "" if not wait_s else f" for {wait_s:.0f} s"
            raise LockBusy(f"{what}: its lock {path} is held by {holder}{waited}; wait for it to finish, then try "
                           "again", holder)
        lock.seek(0)
        lock.truncate()
        lock.write(holder_description())
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _flock(lock, wait_s: float | None) -> bool:
    if wait_s is None:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return True
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))


# --- server: a Prefect global concurrency limit of 1, held under a lease ---------------------------------------


@contextlib.contextmanager
def _prefect_lock(settings: Settings, name: str, wait_s: float | None, what: str, lease_s: float) -> Iterator[None]:
    import logging

    from prefect.concurrency.sync import concurrency

    logging.getLogger("prefect._internal.concurrency").addFilter(_QUIET)  # once: filters are a set
    resource = resource_name(name)
    with _prefect_api(settings) as api, contextlib.ExitStack() as held:
        ensure_limit(resource)
        try:
            held.enter_context(concurrency(
                resource, occupy=1, timeout_seconds=wait_s or None, max_retries=0 if wait_s == 0 else None,
                lease_duration=max(60.0, lease_s), strict=True, holder=_lease_holder(),
                raise_on_lease_renewal_failure=True))
        except Exception as e:
            if not _busy(e):
                raise LockUnavailable(f"could not take {what} on the Prefect server at {api} "
                                      f"({type(e).__name__}: {e}); check that it answers") from None
            holder = _read_holder(resource)
            waited = "" if not wait_s else f" for {wait_s:.0f} s"
            raise LockBusy(f"{what}: its lock, the global concurrency limit {resource!r} on {api}, is held by "
                           f"{holder}{waited}; wait for it to finish, then try again. A holder that died frees it within "
                           f"{max(60.0, lease_s):.0f} s (its lease); `prefect gcl inspect {resource}` shows it",
                           holder) from None
        _write_holder(resource)
        yield


class _QuietRefusals:
    """Drops Prefect's ERROR line for a slot it could not get: the caller gets that error, and says it clearly."""

    def filter(self, record) -> bool:
        return not (record.msg == "Service %r failed to process item %r" and record.args
                    and record.args[0] == "ConcurrencySlotAcquisitionWithLeaseService")


_QUIET = _QuietRefusals()


def _busy(error: Exception) -> bool:
    """Whether acquiring failed because the slot is taken (timed out, or refused with 423 when not waiting)."""
    import httpx

    cause = error.__cause__
    return isinstance(error, TimeoutError) or (
        isinstance(cause, httpx.HTTPStatusError) and cause.response.status_code == 423)


@contextlib.contextmanager
def _prefect_api(settings: Settings) -> Iterator[str]:
    """Prefect's client pointed at the shared server (`PREFECT_API_URL`, else POSEOPS_PREFECT_URL), checked to answer.

    Never Prefect's temporary per-process server: a lock there would guard nothing.
    """
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    configured = PREFECT_API_URL.value()
    api = configured or f"{settings.prefect_url}/api"
    with temporary_settings(updates={PREFECT_API_URL: api}) if not configured else contextlib.nullcontext():
        with get_client(sync_client=True) as client:
            problem = client.api_healthcheck()
        if problem is not None:
            raise LockUnavailable(f"the server profile keeps its locks on the Prefect server, and none answers at "
                                  f"{api} ({type(problem).__name__}): start it (`poseops prefect up`) or set "
                                  "PREFECT_API_URL / POSEOPS_PREFECT_URL to the one the workers share")
        yield api


def ensure_limit(resource: str) -> None:
    """Create the global concurrency limit `resource` (1 slot) unless it exists (two creators at once are fine)."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(resource)
            return
        except ObjectNotFound:
            pass
        try:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=resource, limit=1))
        except ObjectAlreadyExists:
            pass


def _lease_holder():
    """The lease's holder as Prefect records it: the flow run (or task run) this runs in, else none."""
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.context import FlowRunContext, TaskRunContext

    task = TaskRunContext.get()
    if task is not None and task.task_run is not None:
        return ConcurrencyLeaseHolder(type="task_run", id=task.task_run.id)
    run = FlowRunContext.get()
    if run is not None and run.flow_run is not None:
        return ConcurrencyLeaseHolder(type="flow_run", id=run.flow_run.id)
    return None


def _write_holder(resource: str) -> None:
    from prefect.variables import Variable

    with contextlib.suppress(Exception):  # only for messages: a lock is held whether or not this is written
        Variable.set(resource, holder_description(), overwrite=True)


def _read_holder(resource: str) -> str:
    from prefect.variables import Variable

    try:
        return str(Variable.get(resource, default="") or "") or "another process"
    except Exception:  # noqa: BLE001 - only for the message
        return "another process"
