"""Start and stop a local Label Studio server in its own virtualenv.

The server binds to 127.0.0.1, keeps its SQLite database and uploads under
`<home>/labelstudio/`, and gets its admin user and API token through the
environment (never on the command line, where `ps` would show them). A pid file
records the process we started, so `down` stops exactly that one.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from poseops.settings import Settings


class LabelStudioServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class ServerStatus:
    url: str
    running: bool
    pid: int | None
    started_here: bool


def _pid_file(settings: Settings) -> Path:
    return settings.label_studio_dir / "server.pid"


def log_file(settings: Settings) -> Path:
    return settings.label_studio_dir / "server.log"


def answers(url: str, timeout: float = 2.0) -> bool:
    """True when a Label Studio server answers its health check at `url`."""
    try:
        r = httpx.get(f"{url}/health", timeout=timeout)
    except httpx.HTTPError:
        return False
    return r.status_code == 200


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _recorded_pid(settings: Settings) -> int | None:
    try:
        pid = int(_pid_file(settings).read_text().strip())
    except (FileNotFoundError, ValueError):
        return None
    return pid if _alive(pid) else None


def status(settings: Settings) -> ServerStatus:
    pid = _recorded_pid(settings)
    return ServerStatus(settings.label_studio_url, answers(settings.label_studio_url), pid, pid is not None)


def up(settings: Settings, timeout: float = 600.0, progress=None) -> ServerStatus:
    """Start Label Studio unless one already answers at the configured URL; wait until it answers."""
    current = status(settings)
    if current.running:
        return current
    if current.pid is not None:  # ours, still starting (first start migrates the database)
        return _wait(settings, current.pid, timeout, progress)
    binary = settings.label_studio_bin
    if not binary.exists():
        raise LabelStudioServerError(
            f"Label Studio is not installed at {binary}. Run `make install` (it creates that virtualenv), "
            "or set POSEOPS_LABEL_STUDIO_BIN to the `label-studio` command of your own installation."
        )
    if not settings.label_studio_password or not settings.label_studio_token:
        raise LabelStudioServerError(
            "LABEL_STUDIO_PASSWORD and LABEL_STUDIO_USER_TOKEN must be set (environment or .env) to start Label Studio."
        )
    data_dir = settings.label_studio_dir.resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "LABEL_STUDIO_USERNAME": settings.label_studio_username,
        "LABEL_STUDIO_PASSWORD": settings.label_studio_password,
        "LABEL_STUDIO_USER_TOKEN": settings.label_studio_token,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LOCAL_FILES_SERVING_ENABLED": "true",
        "LOCAL_FILES_DOCUMENT_ROOT": os.environ.get("LOCAL_FILES_DOCUMENT_ROOT", str(Path.cwd().resolve())),
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
    }
    for key in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME"):
        env.pop(key, None)
    cmd = [
        str(binary.resolve()), "start", "--no-browser",
        "--internal-host", "127.0.0.1",
        "--port", str(settings.label_studio_port),
        "--data-dir", str(data_dir),
    ]
    with open(log_file(settings), "ab") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, cwd=data_dir)
    _pid_file(settings).write_text(str(proc.pid))
    return _wait(settings, proc.pid, timeout, progress)


def _wait(settings: Settings, pid: int, timeout: float, progress=None) -> ServerStatus:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if answers(settings.label_studio_url):
            return ServerStatus(settings.label_studio_url, True, pid, True)
        if not _alive(pid):
            _pid_file(settings).unlink(missing_ok=True)
            tail = _tail(log_file(settings))
            raise LabelStudioServerError(
                f"Label Studio exited while starting; the end of {log_file(settings)}:\n{tail}\n"
                "If the port is taken, set LABEL_STUDIO_URL to another port."
            )
        if progress:
            progress()
        time.sleep(1.0)
    raise LabelStudioServerError(
        f"Label Studio did not answer at {settings.label_studio_url} within {timeout:.0f} s "
        f"(the first start migrates its database for about 90 s). It is still running as pid {pid}: "
        f"see {log_file(settings)}, then run `poseops labelstudio up` again or `poseops labelstudio down`."
    )


def down(settings: Settings, timeout: float = 30.0) -> bool:
    """Stop the Label Studio this project started (and only that one). True if one was stopped."""
    pid = _recorded_pid(settings)
    if pid is None:
        _pid_file(settings).unlink(missing_ok=True)
        return False
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        _signal_group(pid, signal.SIGKILL)
    _reap(pid)
    _pid_file(settings).unlink(missing_ok=True)
    return True


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)  # the server was started as the leader of its own session
    except ProcessLookupError:
        pass


def _reap(pid: int) -> None:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"
