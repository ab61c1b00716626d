"""Background servers that poseops starts, finds again, and stops: Label Studio, the Prefect
server, the MLflow UI, the detection service.

Each runs as the leader of its own session, with its output in `<dir>/server.log` and
its pid (and the process's start time, so a reused pid is not mistaken for it) in
`<dir>/server.pid`, so that `up` is idempotent (a second `up` finds the running one) and
`down` stops exactly the process group it started, nothing else.

A server counts as ours only when the process recorded there (or one of its children)
listens on the URL's port: something else answering at the URL is refused, never
adopted. `up`, `down` and `restart` hold `<dir>/server.lock`, so two of them at once run
one after the other, and a failed start removes the pid file only while it names the
process that failed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from poseops.errors import PoseopsError
from poseops.settings import child_env


class ServerError(PoseopsError, RuntimeError):
    pass


@dataclass(frozen=True)
class ServerStatus:
    url: str
    running: bool
    pid: int | None
    started_here: bool
    foreign: bool = False  # something poseops did not start answers at the URL


@dataclass
class ManagedServer:
    name: str  # for messages: "Label Studio"
    state_dir: Path  # pid file and log live here
    url: str  # base URL, for people
    health_url: str  # answers 200 once the server is ready
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)  # added to the caller's environment less its secrets
    cwd: Path | None = None
    hint: str = ""  # what to do when it fails to start

    @property
    def pid_file(self) -> Path:
        return self.state_dir / "server.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / "server.log"

    @property
    def port(self) -> int:
        return port_of(self.url, 0)

    def answers(self, timeout: float = 2.0) -> bool:
        try:
            return httpx.get(self.health_url, timeout=timeout).status_code == 200
        except httpx.HTTPError:
            return False

    def lock(self) -> contextlib.AbstractContextManager[None]:
        """This server's lock: one `up`, `down` or `restart` at a time, across processes."""
        return file_lock(self.state_dir / "server.lock")

    def recorded_pid(self) -> int | None:
        """The pid in the pid file while that very process (same start time) is alive, else None."""
        try:
            fields = self.pid_file.read_text().split()
            pid = int(fields[0])
            started = float(fields[1]) if len(fields) > 1 else None
        except (FileNotFoundError, ValueError, IndexError):
            return None
        if not alive(pid) or (started is not None and start_time(pid) != started):
            return None
        return pid

    def owns_port(self, pid: int) -> bool:
        """True when `pid` or one of its children listens on this server's port."""
        return self.port in listening_ports(pid)

    def status(self) -> ServerStatus:
        pid = self.recorded_pid()
        running = self.answers()
        foreign = running and (pid is None or not self.owns_port(pid))
        return ServerStatus(self.url, running, pid, pid is not None, foreign)

    def up(self, timeout: float = 300.0, progress: Callable[[], None] | None = None) -> ServerStatus:
        """Start the server unless ours already runs; wait until it answers. Refuses a URL something else answers at."""
        with self.lock():
            return self._up(timeout, progress)

    def restart(self, timeout: float = 300.0, progress: Callable[[], None] | None = None) -> ServerStatus:
        """Stop ours (if it runs) and start it again, as one step no other `up`/`down` interleaves with."""
        with self.lock():
            self._down(30.0)
            return self._up(timeout, progress)

    def _up(self, timeout: float, progress: Callable[[], None] | None) -> ServerStatus:
        current = self.status()
        if current.foreign:
            raise ServerError(f"something poseops did not start already answers at {self.url} (port {self.port}), so "
                              f"{self.name} was not started: stop that server first. {self.hint}".rstrip())
        if current.running:
            return current
        if current.pid is not None:  # ours, still starting
            return self.wait(current.pid, timeout, progress)
        # no secrets but those in self.env; what the server writes (databases, logs) is its owner's only
        with open(os.open(self.log_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
            proc = subprocess.Popen(self.command, env=child_env(self.env), stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.cwd, umask=0o077)
        tmp = self.pid_file.with_name(f".server.pid.{proc.pid}")
        tmp.write_text(f"{proc.pid} {start_time(proc.pid)!r}\n")
        tmp.replace(self.pid_file)
        return self.wait(proc.pid, timeout, progress)

    def wait(self, pid: int, timeout: float, progress: Callable[[], None] | None = None) -> ServerStatus:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers() and self.owns_port(pid):
                return ServerStatus(self.url, True, pid, True)
            if not alive(pid):
                self._forget(pid)
                raise ServerError(f"{self.name} exited while starting; the end of {self.log_file}:\n"
                                  f"{tail(self.log_file)}\n{self.hint}".rstrip())
            if progress:
                progress()
            time.sleep(1.0)
        raise ServerError(f"{self.name} did not answer at {self.url} within {timeout:.0f} s; it is still running as "
                          f"pid {pid}: see {self.log_file}. {self.hint}".rstrip())

    def _forget(self, pid: int) -> None:
        """Remove the pid file, only while it names `pid`."""
        try:
            if self.pid_file.read_text().split()[:1] == [str(pid)]:
                self.pid_file.unlink()
        except (FileNotFoundError, IndexError):
            pass

    def down(self, timeout: float = 30.0) -> bool:
        """Stop the server this state dir records (and only that one). True if one was stopped."""
        with self.lock():
            return self._down(timeout)

    def _down(self, timeout: float) -> bool:
        pid = self.recorded_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)  # names no live process of ours
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
        self._forget(pid)
        return True


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on `path` (created 0600 if missing; a symlink there is refused, never followed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        raise ServerError(f"cannot use the lock file {path} ({e.strerror}); if it is a link, remove it") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def start_time(pid: int) -> float | None:
    """When the process started (seconds since the epoch), None when it is gone."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def listening_ports(pid: int) -> set[int]:
    """The TCP ports the process and its children listen on."""
    import psutil

    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return set()
    ports: set[int] = set()
    for process in tree:
        with contextlib.suppress(psutil.Error):
            ports |= {c.laddr.port for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    return ports


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


def stop_group(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> None:
    """Stop a child started in its own process group (`start_new_session=True`): `sig` to the group, then
    SIGKILL if it is still there after `timeout` seconds. Nothing to do when it has ended already."""
    if process.poll() is not None:
        return
    signal_group(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        signal_group(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def port_of(url: str, default: int) -> int:
    tail_part = url.rsplit(":", 1)[-1].split("/")[0]
    return int(tail_part) if tail_part.isdigit() else default
