"""Shared fixtures: real servers on 127.0.0.1, started once per session and always stopped."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from poseops import labelstudio_server
from poseops.devservers import free_port, label_studio_env, label_studio_for_run, use_bundled_assets
from poseops.processes import alive
from poseops.settings import Settings, quiet_telemetry

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSEOPS_SHARED_DIR", ROOT.parent / "shared"))
SHARED_DATASETS = Path(os.environ.get("POSEOPS_SHARED_DATASETS", SHARED / "datasets"))
PERSON_SPEC = ROOT / "label_config" / "skeletons" / "person.yaml"

quiet_telemetry()
use_bundled_assets(SHARED)
__all__ = ["free_port"]  # the tests take it from here with the rest of what they share


def _stop_on_sigterm(signum, frame):
    """A terminated test run (e.g. by `timeout`) stops like Ctrl-C, so fixtures still stop the servers they started."""
    raise KeyboardInterrupt(f"terminated by signal {signum}")


signal.signal(signal.SIGTERM, _stop_on_sigterm)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory) -> Settings:
    """A real Label Studio server in its own virtualenv, on a free loopback port, with a fresh database.

    The first start migrates the database (about 90 s). Developers may point the tests at
    a server they already run with POSEOPS_TEST_LABEL_STUDIO_URL and ..._TOKEN.
    """
    home = tmp_path_factory.mktemp("poseops-home")
    if os.environ.get("POSEOPS_TEST_LABEL_STUDIO_URL"):
        yield Settings(home=home, label_studio_url=os.environ["POSEOPS_TEST_LABEL_STUDIO_URL"],
                       label_studio_token=os.environ["POSEOPS_TEST_LABEL_STUDIO_TOKEN"],
                       label_studio_username=os.environ.get("POSEOPS_TEST_LABEL_STUDIO_USERNAME", ""),
                       label_studio_password=os.environ.get("POSEOPS_TEST_LABEL_STUDIO_PASSWORD", ""))
        return
    with label_studio_for_run(home, ROOT / ".venv-labelstudio" / "bin" / "label-studio",
                              username="tests@poseops.local") as settings:
        pid = labelstudio_server.status(settings).pid
        assert pid is not None, "Label Studio answers, but not as the process poseops started"
        assert_listens_on_loopback_only(pid, "Label Studio")
        yield settings
    assert not labelstudio_server.answers(settings.label_studio_url), "Label Studio still answers after down"
    assert not alive(pid), "the Label Studio process survived down"


def listening_addresses(pid: int) -> set[str]:
    """The IP addresses the process (and its children) listen on."""
    import psutil

    root = psutil.Process(pid)
    found = set()
    for process in [root, *root.children(recursive=True)]:
        try:
            found |= {c.laddr.ip for c in process.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            continue
    return found


def assert_listens_on_loopback_only(pid: int, what: str) -> None:
    addresses = listening_addresses(pid)
    assert addresses, f"{what} (pid {pid}) listens on nothing"
    assert addresses == {"127.0.0.1"}, f"{what} listens on {addresses}: servers poseops starts bind 127.0.0.1 only"


def files_containing(root: Path, secrets: list[str], skip: tuple[str, ...] = ()) -> list[str]:
    """Files under `root` (databases and logs included, read as bytes) holding any of `secrets`."""
    needles = [s.encode() for s in secrets if s]
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and not any(part in skip for part in path.relative_to(root).parts):
            data = path.read_bytes()
            hits += [f"{path} holds a secret" for needle in needles if needle in data]
    return hits


def settings_env(settings: Settings) -> dict[str, str]:
    """Environment for running the `poseops` CLI against the given settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
    return {**env, "LABEL_STUDIO_PASSWORD": "unused", **label_studio_env(settings)}


@pytest.fixture(scope="session")
def prefect_api():
    """A real, temporary Prefect API server (SQLite) for the flows under test."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield


@pytest.fixture
def workspace(tmp_path, monkeypatch, label_studio) -> Path:
    """A fresh git repository to work in (as a user's checkout), pointed at the test Label Studio."""
    import subprocess

    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "params.yaml").write_text("pull:\n  min_images: 4\n  min_images_recommended: 250\n  val_fraction: 0.25\n")
    (repo / ".gitignore").write_text(".poseops/\n")
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "tests@poseops.local"],
                ["git", "config", "user.name", "poseops tests"], ["git", "add", "-A"], ["git", "commit", "-qm", "start"]):
        subprocess.run(cmd, cwd=repo, check=True)
    monkeypatch.chdir(repo)
    for key, value in settings_env(label_studio).items():
        monkeypatch.setenv(key, value)
    return repo


@pytest.fixture
def request_log(workspace, label_studio, monkeypatch):
    """The workspace's Label Studio reached through a proxy that records every request it receives."""
    from request_log import RequestLog

    with RequestLog(label_studio.label_studio_url) as log:
        monkeypatch.setenv("LABEL_STUDIO_URL", log.url)
        yield log


# A real S3-compatible endpoint (moto in server mode), tests/s3_server.py; and the real detection service
# (bentoml serve) shared by test_service.py and test_playground.py.
from s3_server import s3_endpoint  # noqa: E402, F401
from service_server import detect_service  # noqa: E402, F401
