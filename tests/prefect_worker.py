"""A real Prefect server and real `prefect worker` processes for the tests that run flows from a work pool.

    from prefect_worker import prefect_server, prefect_worker, wait_for_flow_run  # noqa: F401 (prefect_server: fixture)

    def test_x(prefect_server, workspace):                    # a `prefect server start` on a free loopback port
        with prefect_worker(prefect_server, "pool-a", cwd=workspace, env={...}) as worker:
            ...  # deploy to "pool-a", then run_deployment(...); the worker runs it in its own process
            run = wait_for_flow_run(prefect_server, run_id)   # its final state (FlowRun), or AssertionError

API:
- `prefect_server` (module fixture) -> `PrefectServer(url, api_url, home)`: a real `prefect server start`
  (its services on: scheduler, lease expiry every second) with its own SQLite database, stopped after the
  module. While it is active, this test process's Prefect client points at it (`use_prefect_server`).
- `running_prefect_server(home, settings=None)`: the same server as a context manager, for a fixture of
  another scope or a server-profile `Settings` (the Prefect server on PostgreSQL).
- `use_prefect_server(server)`: a context in which this process's Prefect client talks to `server`.
- `prefect_worker(server, pool, cwd, env=None, limit=None, name=None)`: a context manager starting
  `prefect worker start --pool POOL --type process` (the pool is created if missing) in `cwd`, with this
  process's environment plus `env`, PREFECT_API_URL and a PREFECT_HOME of its own; it returns once the worker has polled the server
  (its heartbeat shows in the pool) and always stops it (SIGINT to its process group, then SIGKILL).
  `worker.log()` is its output so far (printed when a test fails inside the context).
- `wait_for_flow_run(server, run_id, timeout=300)`: the flow run once it is final.
- `flow_run_logs(server, run_id)`: the run's log lines, as one text.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port

from poseops.processes import stop_group
from poseops.settings import Settings
from poseops.stack import prefect_server as managed_prefect_server

QUERY_S = "1"  # how often the workers ask for runs (Prefect's default: 10 s)


@dataclass(frozen=True)
class PrefectServer:
    url: str  # http://127.0.0.1:PORT
    home: Path

    @property
    def api_url(self) -> str:
        return f"{self.url}/api"


@contextlib.contextmanager
def running_prefect_server(home: Path, settings: Settings | None = None) -> Iterator[PrefectServer]:
    """`prefect server start` on a free loopback port, stopped on exit: its SQLite database under `home`, or as
    `settings` say (`poseops.stack.prefect_server`: on PostgreSQL for the server profile, at its prefect_url)."""
    settings = settings or Settings(home=home, prefect_url=f"http://127.0.0.1:{free_port()}")
    server = managed_prefect_server(settings)
    server.env.update({"PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "1", "PREFECT_UI_ENABLED": "false",
                       "PREFECT_SERVER_UI_ENABLED": "false", "PREFECT_API_URL": f"{settings.prefect_url}/api"})
    server.up(timeout=300)
    try:
        yield PrefectServer(settings.prefect_url, server.state_dir)
    finally:
        server.down()


@contextlib.contextmanager
def use_prefect_server(server: PrefectServer) -> Iterator[None]:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: server.api_url}):
        yield


@pytest.fixture(scope="module")
def prefect_server(tmp_path_factory) -> Iterator[PrefectServer]:
    with running_prefect_server(tmp_path_factory.mktemp("prefect-server")) as server, use_prefect_server(server):
        yield server


@dataclass
class Worker:
    name: str
    pool: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""


@contextlib.contextmanager
def prefect_worker(server: PrefectServer, pool: str, cwd: Path, env: dict[str, str] | None = None,
                   limit: int | None = None, name: str | None = None, start_timeout: float = 180.0) -> Iterator[Worker]:
    """A `prefect worker start --pool POOL --type process` in `cwd`, polling `server`; always stopped."""
    name = name or f"worker-{uuid.uuid4().hex[:6]}"
    log_path = server.home / f"{name}.log"
    command = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, "--type", "process",
               "--name", name, "--install-policy", "never", *(["--limit", str(limit)] if limit else [])]
    full_env = {**os.environ, "PREFECT_HOME": str(server.home / "worker-home"), **(env or {}),
                "PREFECT_API_URL": server.api_url, "PREFECT_WORKER_QUERY_SECONDS": QUERY_S,
                "PREFECT_WORKER_PREFETCH_SECONDS": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with open(log_path, "ab") as out:
        process = subprocess.Popen(command, cwd=cwd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    worker = Worker(name, pool, process, log_path)
    try:
        _wait_until_polling(server, worker, start_timeout)
        yield worker
    except BaseException:
        print(f"--- {name}'s log ---\n{worker.log()[-6000:]}")
        raise
    finally:
        _stop(process)


def _wait_until_polling(server: PrefectServer, worker: Worker, timeout: float) -> None:
    from prefect import get_client

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert worker.process.poll() is None, f"the worker exited ({worker.process.returncode}):\n{worker.log()[-4000:]}"
        with use_prefect_server(server), get_client(sync_client=True) as client:
            with contextlib.suppress(Exception):
                if any(w.name == worker.name for w in client.read_workers_for_work_pool(worker.pool, limit=100, offset=0)):
                    return
        time.sleep(0.5)
    raise AssertionError(f"the worker never polled {server.url} in {timeout:.0f} s:\n{worker.log()[-4000:]}")


def _stop(process: subprocess.Popen) -> None:
    stop_group(process, signal.SIGINT, timeout=30)


def wait_for_flow_run(server: PrefectServer, run_id, timeout: float = 300.0):
    """The flow run once its state is final (COMPLETED, FAILED, CRASHED, CANCELLED); AssertionError after `timeout`."""
    from prefect import get_client

    deadline = time.monotonic() + timeout
    while True:
        with use_prefect_server(server), get_client(sync_client=True) as client:
            run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        assert time.monotonic() < deadline, f"flow run {run.name} still {run.state_type} after {timeout:.0f} s"
        time.sleep(0.5)


def flow_run_logs(server: PrefectServer, run_id) -> str:
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.client.schemas.sorting import LogSort

    with use_prefect_server(server), get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200, offset=0,
                                sort=LogSort.TIMESTAMP_ASC)
    return "\n".join(log.message for log in logs)
