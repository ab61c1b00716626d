"""Servers for one run: a free loopback port, a Label Studio for this run, the detection service for this run.

Trying poseops without touching the servers you already run, measuring it, and testing it all
need the same thing: poseops' own servers (`labelstudio_server`, `deploy.service_server`) started
on 127.0.0.1 on a port nobody uses, with fresh state and fresh credentials, and stopped afterwards.
This module is that one mechanism. It lives in the package, not beside the tests, because
what it does is the product's start/stop with throw-away settings (no test logic), and because the
benchmarks (run as scripts) and the tests (run by pytest) can then both import it as
`poseops.devservers` without either reaching into the other through `sys.path`. The load client
they share is `poseops.loadtest.run_load`, the code behind `poseops load-test`.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from poseops.settings import Settings


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nothing listens on right now at `host` (the system picks it)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def label_studio_env(settings: Settings) -> dict[str, str]:
    """The environment variables through which poseops commands and flows reach this Label Studio."""
    env = {"POSEOPS_HOME": str(settings.home), "LABEL_STUDIO_URL": settings.label_studio_url,
           "LABEL_STUDIO_USER_TOKEN": settings.label_studio_token}
    if settings.label_studio_password:
        env["LABEL_STUDIO_PASSWORD"] = settings.label_studio_password
    return env


@contextmanager
def label_studio_for_run(home: Path, label_studio_bin: Path, url: str | None = None, token: str | None = None,
                         username: str = "admin@poseops.local", timeout: float = 900.0) -> Iterator[Settings]:
    """Settings for the Label Studio at `url` (with `token`), or for one started for this run and stopped after it.

    A started one listens on a free 127.0.0.1 port, keeps its database under `home`, and gets a random
    password and API token; its first start migrates the database (about 90 s).
    """
    if url:
        if not token:
            raise ValueError(f"an API token for the Label Studio at {url} is needed as well")
        yield Settings(home=home, label_studio_url=url.rstrip("/"), label_studio_token=token, label_studio_bin=label_studio_bin)
        return
    from poseops import labelstudio_server

    settings = Settings(home=home, label_studio_url=f"http://127.0.0.1:{free_port()}", label_studio_username=username,
                        label_studio_password=secrets.token_urlsafe(12), label_studio_token=secrets.token_hex(20),
                        label_studio_bin=label_studio_bin)
    labelstudio_server.up(settings, timeout=timeout)
    try:
        yield settings
    finally:
        labelstudio_server.down(settings)


@contextmanager
def service_for_run(config, home: Path | None = None, timeout: float = 300.0):
    """The detection service as `poseops deploy` runs it (`deploy.service_server`), configured by `config`
    (a `ServiceConfig`), on a free 127.0.0.1 port with its state in `home` (a new folder when not given); stopped after.
    """
    from poseops.deploy import service_server

    home = home or Path(tempfile.mkdtemp(prefix="poseops-service-"))
    settings = Settings(home=home, service_url=f"http://127.0.0.1:{free_port()}")
    server = service_server(settings, config)
    server.up(timeout=timeout)
    try:
        yield server
    finally:
        server.down()


def use_bundled_assets(shared: Path) -> None:
    """Ultralytics offline and, where `shared` holds them, the bundled weights (as the Makefile sets for a checkout).

    Only defaults: what the environment already says wins.
    """
    os.environ.setdefault("YOLO_OFFLINE", "true")
    if (shared / "weights").is_dir():
        os.environ.setdefault("POSEOPS_WEIGHTS_DIR", str(shared / "weights"))
