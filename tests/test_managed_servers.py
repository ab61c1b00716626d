"""Servers poseops manages are the ones it started: a foreign server on the port is refused,
never adopted; two starts at once give one server; a failed start leaves the winner's pid
file; a reused pid is not taken for ours; deploy refuses a port it does not own and checks
that the answering service runs the version just deployed.

Plain Python HTTP servers on free loopback ports stand in for what else may run there.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from conftest import free_port

from poseops.deploy import DeployError, deploy, service_server, verify_serving
from poseops.processes import ManagedServer, ServerError, alive
from poseops.settings import Settings

pytestmark = pytest.mark.integration


class _Answering(BaseHTTPRequestHandler):
    metadata: dict = {}

    def do_GET(self) -> None:  # noqa: N802
        body = json.dumps(self.metadata).encode() if self.path == "/metadata" else b"ok"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def foreign_server() -> Iterator[tuple[str, type[_Answering]]]:
    """Something poseops did not start, answering 200 on every path (/readyz, /health, /metadata) on a free port."""
    handler = type("Handler", (_Answering,), {"metadata": {"lineage": {"model_name": "other", "model_version": "7"}}})
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def http_server(state_dir: Path, port: int) -> ManagedServer:
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", str(port)]
    return ManagedServer("the test server", state_dir, url, f"{url}/", command, cwd=state_dir.parent)


def test_a_foreign_server_on_the_port_is_refused_not_adopted(foreign_server, tmp_path):
    url, _ = foreign_server
    server = http_server(tmp_path / "state", int(url.rsplit(":", 1)[1]))
    assert server.status().foreign
    with pytest.raises(ServerError, match="poseops did not start"):
        server.up(timeout=10)
    assert not server.pid_file.exists()
    assert server.down() is False  # nothing of ours to stop; the foreign one keeps answering
    assert server.answers()


def test_the_detection_service_refuses_a_foreign_server_answering_readyz(foreign_server, tmp_path):
    url, _ = foreign_server
    settings = Settings(home=tmp_path / "home", service_url=url)
    with pytest.raises(ServerError, match="poseops did not start"):
        service_server(settings).up(timeout=10)
    with pytest.raises(DeployError, match="nothing was deployed"):
        deploy(settings, "models:/poseops-pose@champion")
    assert not (settings.home / "service" / "server.pid").exists()


def test_deploy_checks_that_the_answering_service_runs_the_version_just_deployed(foreign_server):
    url, handler = foreign_server
    with pytest.raises(DeployError, match="serves other version 7, not the deployed poseops-pose version 3"):
        verify_serving(url, "poseops-pose", "3")
    handler.metadata = {"lineage": {"model_name": "poseops-pose", "model_version": "3"}}
    verify_serving(url, "poseops-pose", "3")


def test_two_starts_at_once_give_one_server_and_down_stops_it(tmp_path):
    server = http_server(tmp_path / "state", free_port())
    results: list[object] = []

    def start() -> None:
        try:
            results.append(http_server(server.state_dir, server.port).up(timeout=30))
        except ServerError as e:
            results.append(e)

    threads = [threading.Thread(target=start) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pids = {r.pid for r in results if not isinstance(r, Exception)}
    assert len(results) == 4 and len(pids) == 1, results
    (pid,) = pids
    assert server.recorded_pid() == pid
    assert server.down() and not alive(pid) and not server.answers()


def test_a_failed_start_removes_only_its_own_pid_file(tmp_path):
    server = http_server(tmp_path / "state", free_port())
    server.state_dir.mkdir(parents=True)
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        failing = replace(server, command=[sys.executable, "-c", "raise SystemExit(3)"])
        with pytest.raises(ServerError, match="exited while starting"):
            failing.up(timeout=10)
        assert not server.pid_file.exists()
        # the pid file now names another live process (a later start): a late failure must not remove it
        server.pid_file.write_text(f"{other.pid}\n")
        failing._forget(other.pid + 1)
        assert server.pid_file.read_text().split()[0] == str(other.pid)
    finally:
        other.kill()
        other.wait()


def test_a_reused_pid_is_not_taken_for_our_server(tmp_path):
    server = http_server(tmp_path / "state", free_port())
    server.state_dir.mkdir(parents=True)
    stranger = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
    try:
        server.pid_file.write_text(f"{stranger.pid} 12345.0\n")  # same pid, another process's start time
        assert server.recorded_pid() is None
        assert server.down() is False
        assert stranger.poll() is None, "down stopped a process it did not start"
    finally:
        stranger.kill()
        stranger.wait()


def test_deploys_run_one_at_a_time(tmp_path):
    from poseops.deploy import deploy_lock

    settings = Settings(home=tmp_path / "home")
    inside, overlaps = [], []

    def one_deploy(n: int) -> None:
        with deploy_lock(settings):
            if inside:
                overlaps.append(n)
            inside.append(n)
            threading.Event().wait(0.05)
            inside.remove(n)

    threads = [threading.Thread(target=one_deploy, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert overlaps == []
