"""Background servers that poseops starts, finds again, and stops: Label Studio, the Prefect
server, the MLflow UI, the detection service.

Each runs as the leader of its own session, with its output in `<dir>/server.log` and
its pid in `<dir>/server.pid`, so that `up` is idempotent (a second `up` finds the
running one) and `down` stops exactly the process group it started, nothing else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from poseops.errors import PoseopsError


class ServerError(PoseopsError, RuntimeError):
    pass


@dataclass(frozen=True)
class ServerStatus:
    url: str
    running: bool
    pid: int | None
    started_here: bool


@dataclass
class ManagedServer:
    name: str  # for messages: "Label Studio"
    state_dir: Path  # pid file and log live here
    url: str  # base URL, for people
    health_url: str  # answers 200 once the server is ready
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    hint: str = ""  # what to do when it fails to start

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    def answers(self, timeout: float = 2.0) -> bool:
        try:
            return httpx.get(self.health_url, timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def recorded_pid(self) -> int | None:
        try:
            pid = int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None
        return pid if alive(pid) else None

    def status(self) -> ServerStatus:
        pid = self.recorded_pid()
        return ServerStatus(self.url, self.answers(), pid, pid is not None)

    def up(self, timeout: float = 300.0, progress: Callable[[], None] | None = None) -> ServerStatus:
        """Start the server unless one already answers; wait until it answers."""
        current = self.status()
        if current.running:
            return current
        if current.pid is not None:  # ours, still starting
            return self.wait(current.pid, timeout, progress)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **self.env}
        with open(self.log_file, "ab") as log:
            proc = subprocess.Popen(self.command, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, cwd=self.cwd)
        self.pid_file.write_text(str(proc.pid))
        return self.wait(proc.pid, timeout, progress)

    def wait(self, pid: int, timeout: float, progress: Callable[[], None] | None = None) -> ServerStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                return ServerStatus(self.url, True, pid, True)
            if not alive(pid):
                self.pid_file.unlink(missing_ok=True)
                raise ServerError(f"{self.name} exited while starting; the end of {self.log_file}:\n"
                                  f"{tail(self.log_file)}\n{self.hint}".rstrip())
            if progress:
                progress()
            time.sleep(1.0)
        raise ServerError(f"{self.name} did not answer at {self.url} within {timeout:.0f} s; it is still running as "
                          f"pid {pid}: see {self.log_file}. {self.hint}".rstrip())

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the server this state dir records (and only that one). True if one was stopped."""
        pid = self.recorded_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if alive(pid):
            signal_group(pid, signal.SIGKILL)
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        self.pid_file.unlink(missing_ok=True)
        return True


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours is not alive
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def port_of(url: str, default: int) -> int:
    tail_part = url.rsplit(":", 1)[-1].split("/")[0]
    return int(tail_part) if tail_part.isdigit() else default
