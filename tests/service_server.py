"""The real detection service for the tests: `poseops serve` (which runs `bentoml serve`) on 127.0.0.1.

`conftest.py` imports the `detect_service` fixture from here, so that the service
tests and the playground test share one server per session.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from conftest import PERSON_SPEC, ROOT, SHARED_DATASETS, free_port

from poseops.processes import stop_group

IMAGES = sorted((SHARED_DATASETS / "coco8-pose" / "images").glob("*/*.jpg"))
WEIGHTS = "yolo11n-pose.pt"  # found through POSEOPS_WEIGHTS_DIR (conftest sets it to shared/weights)
START_TIMEOUT_S = 300


@dataclass
class RunningService:
    url: str
    home: Path
    keys_file: Path
    keys: dict[str, str]  # name -> the key itself
    lineage: dict[str, str]
    log: Path
    pid: int | None = None  # of `poseops serve`; bentoml serve and its workers run below it
    # what the start-up poll saw while the model was loading: /readyz statuses and one /detect answer
    readyz_seen: list[int] = field(default_factory=list)
    detect_while_loading: tuple[int, dict] | None = None

    def headers(self, key: str = "main") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}


def make_keys(keys_file: Path) -> dict[str, str]:
    from poseops.apikeys import add_key

    return {
        "main": add_key(keys_file, "main", None),
        "limited": add_key(keys_file, "limited", 2),  # test_quota_spent_is_403
        "persist": add_key(keys_file, "persist", 1),  # test_restart_torch_runtime_keeps_counts
    }


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(command, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the process group this test started (the server and its workers); SIGKILL if it lingers."""
    stop_group(process, signal.SIGTERM, timeout=60)


def wait_ready(service: RunningService, process: subprocess.Popen, probe_image: Path | None = None) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    with httpx.Client(timeout=10) as http:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the service exited with {process.returncode}:\n{service.log.read_text()[-4000:]}")
            try:
                status = http.get(service.url + "/readyz").status_code
            except httpx.TransportError:
                time.sleep(0.3)
                continue
            service.readyz_seen.append(status)
            if status == 200:
                return
            if probe_image is not None and service.detect_while_loading is None:
                r = http.post(service.url + "/detect", files={"image": probe_image.read_bytes()}, headers=service.headers())
                if r.status_code == 503:
                    service.detect_while_loading = (r.status_code, r.json())
            time.sleep(0.2)
    raise RuntimeError(f"the service was not ready after {START_TIMEOUT_S} s:\n{service.log.read_text()[-4000:]}")


LINEAGE = {
    "model_name": "person-pose",
    "model_version": "3",
    "mlflow_run_id": "0123456789abcdef0123456789abcdef",
    "dataset_dvc_hash": "d41d8cd98f00b204e9800998ecf8427e.dir",
    "label_studio_snapshot_id": "17",
}


@pytest.fixture(scope="session")
def detect_service(tmp_path_factory) -> Iterator[RunningService]:
    """`poseops serve` with the shared yolo11n-pose weights, API keys on, a fresh POSEOPS_HOME (so the ONNX export runs)."""
    assert IMAGES, f"no test images under {SHARED_DATASETS / 'coco8-pose' / 'images'}"
    home = tmp_path_factory.mktemp("service-home")
    keys_file = home / "api-keys.yaml"
    port = free_port()
    lineage_file = home / "lineage.json"
    lineage_file.write_text(json.dumps(LINEAGE))
    service = RunningService(f"http://127.0.0.1:{port}", home, keys_file, make_keys(keys_file), LINEAGE, home / "service.log")
    env = {**os.environ, "POSEOPS_HOME": str(home), "YOLO_OFFLINE": "true"}
    command = [
        sys.executable, "-m", "poseops.cli_serve", "serve",
        "--weights", WEIGHTS, "--skeleton", str(PERSON_SPEC), "--api-keys", str(keys_file), "--lineage", str(lineage_file),
        "--host", "127.0.0.1", "--port", str(port), "--service-dir", str(ROOT / "bentos"),
    ]  # fmt: skip
    process = start(command, env, service.log)
    service.pid = process.pid
    try:
        wait_ready(service, process, probe_image=IMAGES[0])
        yield service
    finally:
        stop(process)
    with pytest.raises(httpx.TransportError):
        httpx.get(service.url + "/healthz", timeout=2)
