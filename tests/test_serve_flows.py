"""`serve-flows` against a real Prefect server: every deployment with its schedule, and a triggered run completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import replace

import httpx
import pytest
from conftest import PERSON_SPEC, ROOT, SHARED_DATASETS, assert_listens_on_loopback_only, files_containing, free_port

from poseops.coco import read_yolo_pose
from poseops.datasets import create_dataset, upload_images
from poseops.labelstudio import LabelStudioClient
from poseops.regions import poses_to_results
from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration


def test_deployments_appear_with_schedules_and_a_triggered_run_completes(workspace, label_studio, tmp_path):
    from poseops.settings import load_settings
    from poseops.stack import prefect_server

    skeleton = load_skeleton(PERSON_SPEC)
    images = read_yolo_pose(SHARED_DATASETS / "coco8-pose", "train", ["person"]) + read_yolo_pose(
        SHARED_DATASETS / "coco8-pose", "val", ["person"])
    name = f"served-{uuid.uuid4().hex[:6]}"
    with LabelStudioClient(label_studio) as client:
        create_dataset(client, label_studio, name, PERSON_SPEC)
        upload_images(client, label_studio, name, [im.path for im in images],
                      labels={im.path: poses_to_results(skeleton, im.poses, im.width, im.height) for im in images})
    (workspace / "params.yaml").write_text(
        "pull:\n  min_images: 4\n  val_fraction: 0.25\n"
        f"schedules:\n  dataset: {name}\n  autolabel: '0 * * * *'\n  loop: '0 3 * * *'\n")

    settings = replace(load_settings(), home=tmp_path / "prefect-home", prefect_url=f"http://127.0.0.1:{free_port()}")
    server = prefect_server(settings)
    server.up(timeout=240)
    api = f"{settings.prefect_url}/api"
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}, "PREFECT_API_URL": api,
           "PYTHONPATH": str(ROOT)}
    served = subprocess.Popen([sys.executable, "-c", "from poseops.flows.serve import serve_all; serve_all()"], cwd=workspace,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deployments = wait_for(lambda: deployments_with_schedules(api), lambda d: len(d) == 4, 180, served)
        assert set(deployments) == {"pull-labels", "train", "autolabel", "loop"}
        assert deployments["autolabel"]["crons"] == ["0 * * * *"]
        assert deployments["loop"]["crons"] == ["0 3 * * *"]
        assert deployments["pull-labels"]["crons"] == [] and deployments["train"]["crons"] == []
        assert deployments["pull-labels"]["parameters"]["dataset"] == name

        run = api_json("post", f"{api}/deployments/{deployments['pull-labels']['id']}/create_flow_run", json={})
        state = wait_for(lambda: api_json("get", f"{api}/flow_runs/{run['id']}")["state"]["type"],
                         lambda s: s in ("COMPLETED", "FAILED", "CRASHED"), 300, served)
        assert state == "COMPLETED"
        assert (workspace / "data" / name / "data.yaml").is_file()
        assert_listens_on_loopback_only(server.status().pid, "the Prefect server")
        # the Label Studio token and password appear in none of what the run left: Prefect's logs and
        # artifacts, its database and log, the dataset, DVC and git files
        logs = httpx.post(f"{api}/logs/filter", json={"logs": {"flow_run_id": {"any_": [run["id"]]}}}).json()
        artifacts = httpx.post(f"{api}/artifacts/filter", json={}).json()
        assert len(logs) > 3 and artifacts
        secrets = [label_studio.label_studio_token, label_studio.label_studio_password]
        shown = json.dumps(logs) + json.dumps(artifacts)
        assert not [s for s in secrets if s and s in shown], "a secret is in Prefect's logs or artifacts"
        assert files_containing(settings.home, secrets) == []
        assert files_containing(workspace, secrets) == []
    finally:
        os.killpg(served.pid, 15)
        served.wait(timeout=30)
        server.down()


def deployments_with_schedules(api: str) -> dict:
    found = httpx.post(f"{api}/deployments/filter", json={}).json()
    return {d["name"]: {"id": d["id"], "parameters": d.get("parameters") or {},
                        "crons": [s["schedule"].get("cron") for s in d.get("schedules") or []]} for d in found}


def api_json(method: str, url: str, **kwargs) -> dict:
    """One Prefect API call, tried again on a 5xx (its SQLite database may be busy) as Prefect's own client does."""
    for attempt in range(5):
        r = httpx.request(method, url, timeout=30, **kwargs)
        if r.status_code < 500:
            break
        time.sleep(2 ** attempt)
    assert r.is_success, f"{method.upper()} {url}: {r.status_code} {r.text[:2000]}"
    return r.json()


def wait_for(get, done, timeout: float, process: subprocess.Popen):
    deadline = time.monotonic() + timeout
    value = None
    while time.monotonic() < deadline:
        assert process.poll() is None, f"serve-flows exited: {process.stderr.read().decode()[-3000:]}"
        try:
            value = get()
        except httpx.HTTPError:
            value = None
        if value is not None and done(value):
            return value
        time.sleep(1)
    raise AssertionError(f"timed out; last value: {value}")
