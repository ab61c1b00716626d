"""Every command obeys the same settings (environment, then `.env`, then defaults), and a refusal prints once.

A user who keeps everything in `.env`, with non-default ports, gets every command pointed at
the servers poseops runs: flow runs show in *that* Prefect server's UI, Prefect's own state
stays under POSEOPS_HOME, the weights folder reaches the model loader, `detect` calls the
configured service.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import SHARED, free_port
from service_server import IMAGES

from poseops.settings import apply_env_file

SECRET_VARS = ("LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    """The environment without any poseops setting, so only `.env` can supply them."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("POSEOPS_", "LABEL_STUDIO_", "PREFECT_", "MLFLOW_", "YOLO_"))}
    return {**env, "HOME": str(home), **extra}


def poseops(cwd: Path, env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poseops.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_env_file_fills_the_environment_below_it_and_keeps_secrets_out(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("POSEOPS_WEIGHTS_DIR=/from/env-file\nYOLO_OFFLINE=true\nPOSEOPS_SERVICE_URL=http://127.0.0.1:3999\n"
                        "LABEL_STUDIO_USER_TOKEN=abc123\nLABEL_STUDIO_PASSWORD=hunter2\n")
    for key in ("POSEOPS_WEIGHTS_DIR", "YOLO_OFFLINE", *SECRET_VARS):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("POSEOPS_SERVICE_URL", "http://127.0.0.1:4001")  # the environment wins over .env
    apply_env_file(env_file)
    assert os.environ["POSEOPS_WEIGHTS_DIR"] == "/from/env-file" and os.environ["YOLO_OFFLINE"] == "true"
    assert os.environ["POSEOPS_SERVICE_URL"] == "http://127.0.0.1:4001"
    assert not any(key in os.environ for key in SECRET_VARS), "secrets must not reach child processes"


def test_predict_finds_the_weights_folder_named_only_in_env_file(tmp_path):
    (tmp_path / ".env").write_text(f"POSEOPS_WEIGHTS_DIR={SHARED / 'weights'}\nYOLO_OFFLINE=true\n")
    env = clean_env(tmp_path, POSEOPS_HOME=str(tmp_path / "home"))
    out = tmp_path / "preds.jsonl"
    done = poseops(tmp_path, env, "predict", str(IMAGES[0]), "--weights", "yolo11n-pose.pt", "--runtime", "torch",
                   "--skeleton", str(Path(__file__).resolve().parents[1] / "label_config/skeletons/person.yaml"),
                   "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.read_text().count("\n") == 1 and '"detections": [{' in out.read_text()


@pytest.mark.integration
def test_settings_in_env_file_reach_prefect_and_a_refusal_prints_once(tmp_path):
    """Non-default Prefect port and home only in `.env`: the run shows in that server, the error prints once."""
    home = tmp_path / "state"
    prefect_url = f"http://127.0.0.1:{free_port()}"
    (tmp_path / ".env").write_text(f"POSEOPS_HOME={home}\nPOSEOPS_PREFECT_URL={prefect_url}\n"
                                   f"MLFLOW_TRACKING_URI=sqlite:///{home / 'mlflow.db'}\n")
    env = clean_env(tmp_path)
    up = poseops(tmp_path, env, "prefect", "up", "--timeout", "240", timeout=300)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        refused = poseops(tmp_path, env, "deploy", "--model", "models:/no-such-model/1")
        assert refused.returncode == 1, refused.stdout[-2000:] + refused.stderr[-2000:]
        output = refused.stdout + refused.stderr
        assert "Traceback" not in output, output[-3000:]
        error_lines = [line for line in output.splitlines() if line.startswith("error:")]
        assert len(error_lines) == 1 and "MLflow store" in error_lines[0], output[-3000:]  # none yet in this home
        reason = error_lines[0].removeprefix("error: ")[:60]
        assert output.count(reason) == 1, f"the refusal is repeated:\n{output[-3000:]}"
        runs = httpx.post(f"{prefect_url}/api/flow_runs/filter", json={"limit": 20}, timeout=30).json()
        flows = {f["id"]: f["name"] for f in httpx.post(f"{prefect_url}/api/flows/filter", json={}, timeout=30).json()}
        assert [(flows[r["flow_id"]], r["state_type"]) for r in runs] == [("deploy", "FAILED")]
        assert (home / "prefect").is_dir() and not (tmp_path / ".prefect").exists(), "Prefect's state left POSEOPS_HOME"
    finally:
        down = poseops(tmp_path, env, "prefect", "down")
        assert down.returncode == 0, down.stderr[-2000:]


@pytest.mark.integration
def test_detect_calls_the_service_named_in_env_file(tmp_path, detect_service):
    (tmp_path / ".env").write_text(f"POSEOPS_SERVICE_URL={detect_service.url}\n")
    env = clean_env(tmp_path, POSEOPS_API_KEY=detect_service.keys["main"])
    done = poseops(tmp_path, env, "detect", str(IMAGES[0]), timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"keypoints"' in done.stdout and '"class": "person"' in done.stdout
