"""Datasets and artifacts on an S3-compatible endpoint: a real moto server (tests/s3_server.py), real DVC,
a real pull against the test Label Studio, a real `mlflow server` with S3 artifacts."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import files_containing, free_port
from s3_server import SECRET_KEY
from test_pull import COCO8, git, make_project, run_pull, tree_digest

from poseops.coco import read_yolo_pose
from poseops.dvc import REMOTE_COMMANDS
from poseops.pull import DvcPushError
from poseops.settings import Settings, child_env
from poseops.storage import (
    StorageError,
    check_bucket,
    parse_s3_url,
    s3_env,
    wanted_dvc_remote,
)
from poseops.versioning import ensure_dvc, remote_outdated

integration = pytest.mark.integration
COCO8_IMAGES = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])


# --- the settings, without a server -------------------------------------------------------------------------------


def test_s3_env_passes_the_credentials_and_the_endpoint(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "key-id")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "the-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    env = s3_env(Settings(s3_endpoint_url="http://127.0.0.1:9000"))
    assert env["AWS_ACCESS_KEY_ID"] == "key-id" and env["AWS_SECRET_ACCESS_KEY"] == "the-secret-key"
    assert env["AWS_DEFAULT_REGION"] == "eu-west-1" and "AWS_SESSION_TOKEN" not in env
    assert env["AWS_ENDPOINT_URL"] == env["MLFLOW_S3_ENDPOINT_URL"] == "http://127.0.0.1:9000"
    # AWS itself: no endpoint variables; and an ordinary child never gets the secret key
    assert not {"AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL"} & set(s3_env(Settings()))
    assert "AWS_SECRET_ACCESS_KEY" not in child_env()
    assert child_env(s3_env(Settings()))["AWS_SECRET_ACCESS_KEY"] == "the-secret-key"


def test_the_dvc_remote_the_settings_ask_for(tmp_path):
    s3 = wanted_dvc_remote(Settings(dvc_remote="s3://team-data/poseops/", s3_endpoint_url="http://minio:9000"))
    assert (s3.name, s3.url, s3.endpointurl) == ("storage", "s3://team-data/poseops", "http://minio:9000")
    assert wanted_dvc_remote(Settings(dvc_remote="s3://team-data")).endpointurl is None  # AWS itself
    folder = wanted_dvc_remote(Settings(dvc_remote=str(tmp_path / "nas")))
    assert (folder.name, folder.url, folder.endpointurl) == ("local", str(tmp_path / "nas"), None)
    assert wanted_dvc_remote(Settings(home=tmp_path / "home")).url == str(tmp_path / "home" / "dvc-remote")
    with pytest.raises(StorageError, match=r"POSEOPS_DVC_REMOTE='gs://b/p'.*dvc remote add -d"):
        wanted_dvc_remote(Settings(dvc_remote="gs://b/p"))
    with pytest.raises(StorageError, match=r"POSEOPS_DVC_REMOTE='s3:///nobucket' is not an S3 URL.*s3://BUCKET/PATH"):
        parse_s3_url("s3:///nobucket", "POSEOPS_DVC_REMOTE")
    assert {"push", "pull", "fetch"} <= REMOTE_COMMANDS and not {"repro", "exp", "add"} & REMOTE_COMMANDS


def dvc_config(repo: Path) -> str:
    return (repo / ".dvc" / "config").read_text()


def test_the_remote_is_written_into_the_repository_and_a_change_is_applied(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-in-a-config-file")
    repo = tmp_path / "repo"
    repo.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    home = tmp_path / "home"
    assert ensure_dvc(repo, Settings(home=home)) is None  # a fresh repository: the local folder
    assert f"url = {home / 'dvc-remote'}" in dvc_config(repo) and (home / "dvc-remote").is_dir()

    s3 = Settings(home=home, dvc_remote="s3://team-data/poseops", s3_endpoint_url="http://127.0.0.1:9000")
    assert remote_outdated(repo / "data" / "people", s3)
    change = ensure_dvc(repo, s3)
    assert change == (f"DVC remote: POSEOPS_DVC_REMOTE makes 'storage' (s3://team-data/poseops, endpoint "
                      f"http://127.0.0.1:9000) the default remote of {repo}, instead of 'local' ({home / 'dvc-remote'})")
    config = dvc_config(repo)
    assert "remote = storage" in config and "url = s3://team-data/poseops" in config
    assert "endpointurl = http://127.0.0.1:9000" in config
    assert ensure_dvc(repo, s3) is None and not remote_outdated(repo / "data" / "people", s3)  # nothing to change

    moved = Settings(home=home, dvc_remote="s3://team-data/poseops", s3_endpoint_url="http://127.0.0.1:9001")
    assert remote_outdated(repo / "data" / "people", moved)
    assert "endpoint http://127.0.0.1:9001" in ensure_dvc(repo, moved)
    assert "endpointurl = http://127.0.0.1:9001" in dvc_config(repo) and "9000" not in dvc_config(repo)
    assert files_containing(repo / ".dvc", ["never-in-a-config-file"]) == []

    # the setting emptied: the repository keeps the remote it has (as one configured by hand)
    assert ensure_dvc(repo, Settings(home=home)) is None and "remote = storage" in dvc_config(repo)
    assert not remote_outdated(repo / "data" / "people", Settings(home=home))


# --- against the moto server ---------------------------------------------------------------------------------------


@integration
def test_check_bucket_names_the_bucket_the_endpoint_and_what_to_do(s3_endpoint, monkeypatch):
    for key, value in s3_endpoint.credentials().items():
        monkeypatch.setenv(key, value)
    settings = Settings(s3_endpoint_url=s3_endpoint.url)
    assert check_bucket(settings, s3_endpoint.prefix("a/b")).bucket == s3_endpoint.bucket
    with pytest.raises(StorageError) as missing:
        check_bucket(settings, "s3://no-such-bucket/dvc", "POSEOPS_DVC_REMOTE")
    assert str(missing.value) == (
        f"POSEOPS_DVC_REMOTE=s3://no-such-bucket/dvc: bucket 'no-such-bucket' does not exist at the S3 endpoint "
        f"{s3_endpoint.url}: create it (`aws s3 mb s3://no-such-bucket --endpoint-url {s3_endpoint.url}`) "
        "or point POSEOPS_DVC_REMOTE at an existing bucket")
    down = Settings(s3_endpoint_url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(StorageError, match=r"cannot be reached for bucket 'poseops-tests'.*POSEOPS_S3_ENDPOINT_URL"):
        check_bucket(down, s3_endpoint.prefix("dvc"))


def remote_md5s(keys: list[str]) -> set[str]:
    """The content hashes of the objects a DVC remote holds (`<prefix>/files/md5/ab/cdef…`)."""
    return {"".join(key.split("/")[-2:]) for key in keys if "/files/md5/" in key}


@integration
def test_a_pull_pushes_to_s3_and_a_fresh_clone_pulls_it_back(prefect_api, workspace, label_studio, s3_endpoint,
                                                             monkeypatch, tmp_path):
    prefix = f"dvc-{uuid.uuid4().hex[:8]}"
    for key, value in s3_endpoint.env(POSEOPS_DVC_REMOTE=s3_endpoint.prefix(prefix)).items():
        monkeypatch.setenv(key, value)
    name = make_project(label_studio, COCO8_IMAGES[:6])
    summary = run_pull(name)
    assert summary["pushed"] is True
    dataset = workspace / "data" / name
    files = [p for p in dataset.rglob("*") if p.is_file()]
    assert len(files) > 12  # 6 images, their labels, data.yaml, manifest…
    in_bucket = remote_md5s(s3_endpoint.keys(prefix))
    assert {hashlib.md5(p.read_bytes(), usedforsecurity=False).hexdigest() for p in files} | {summary["dvc_md5"]} == in_bucket

    committed = git(workspace, "show", "HEAD:.dvc/config")
    assert f"url = {s3_endpoint.prefix(prefix)}" in committed and f"endpointurl = {s3_endpoint.url}" in committed
    assert files_containing(workspace, [SECRET_KEY], skip=(".poseops",)) == []  # credentials stay in the environment

    clone = tmp_path / "clone"
    git(workspace, "clone", "-q", str(workspace), str(clone))
    assert not (clone / ".dvc" / "cache").exists() and not (clone / "data" / name).exists()
    env = child_env({**s3_endpoint.credentials(), "DVC_NO_ANALYTICS": "1"})  # what a teammate's shell has
    pulled = subprocess.run([sys.executable, "-m", "dvc", "pull", f"data/{name}.dvc"], cwd=clone, env=env,
                            capture_output=True, text=True)
    assert pulled.returncode == 0, pulled.stderr
    assert tree_digest(clone / "data" / name) == tree_digest(dataset)


@integration
def test_switching_the_remote_pushes_the_unchanged_version_there(prefect_api, workspace, label_studio,
                                                                  s3_endpoint, monkeypatch):
    name = make_project(label_studio, COCO8_IMAGES[:6])
    first = run_pull(name)  # the local folder remote
    prefix = f"switch-{uuid.uuid4().hex[:8]}"
    for key, value in s3_endpoint.env(POSEOPS_DVC_REMOTE=s3_endpoint.prefix(prefix)).items():
        monkeypatch.setenv(key, value)
    second = run_pull(name)  # the same labels, another remote
    assert second["dvc_md5"] == first["dvc_md5"] and second["pushed"] is True
    assert first["dvc_md5"] in remote_md5s(s3_endpoint.keys(prefix))
    assert "remote = storage" in git(workspace, "show", "HEAD:.dvc/config")
    third = run_pull(name)  # now nothing to do
    assert third["unchanged"] is True


@integration
def test_a_missing_bucket_fails_the_push_clearly_and_keeps_the_version(prefect_api, workspace, label_studio,
                                                                       s3_endpoint, monkeypatch):
    for key, value in s3_endpoint.env(POSEOPS_DVC_REMOTE="s3://bucket-nobody-made/dvc").items():
        monkeypatch.setenv(key, value)
    name = make_project(label_studio, COCO8_IMAGES[:6])
    with pytest.raises(DvcPushError) as failed:
        run_pull(name)
    message = str(failed.value)
    print(f"\nmissing bucket:\n{message}")
    assert f"data/{name} was built and recorded with DVC locally" in message and "committed to git" in message
    assert "bucket 'bucket-nobody-made' does not exist at the S3 endpoint" in message
    assert "aws s3 mb s3://bucket-nobody-made" in message and f"dvc push data/{name}.dvc" in message
    assert SECRET_KEY not in message
    assert (workspace / "data" / f"{name}.dvc").is_file() and git(workspace, "status", "--porcelain") == ""
    assert git(workspace, "log", "-1", "--format=%s").startswith(f"pull {name}:")


def wait_for(url: str, process: subprocess.Popen, log: Path, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout_s} s:\n{log.read_text()[-3000:]}")


@integration
def test_mlflow_artifacts_land_in_the_bucket_through_the_tracking_server(s3_endpoint, tmp_path):
    """`mlflow server --artifacts-destination s3://…` given `s3_env`: the client uploads through the server,
    which alone holds the S3 credentials; the objects are in the bucket."""
    import mlflow
    from mlflow.tracking import MlflowClient

    prefix = f"mlartifacts-{uuid.uuid4().hex[:8]}"
    settings = Settings(home=tmp_path, s3_endpoint_url=s3_endpoint.url, artifacts_url=s3_endpoint.prefix(prefix))
    port = free_port()
    log = tmp_path / "mlflow-server.log"
    saved = {key: os.environ.pop(key, None) for key in s3_endpoint.credentials()}  # the server's, not this process's
    try:
        os.environ.update(s3_endpoint.credentials())
        server_env = child_env({**s3_env(settings), "MLFLOW_ENABLE_TELEMETRY": "false"})
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    command = [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
               "--backend-store-uri", f"sqlite:///{tmp_path / 'mlflow.db'}",
               "--artifacts-destination", settings.artifacts_url]
    server = subprocess.Popen(command, env=server_env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for(f"{url}/health", server, log)
        assert "AWS_SECRET_ACCESS_KEY" not in os.environ  # the client has no S3 credentials: the server uploads
        client = MlflowClient(tracking_uri=url)
        experiment = client.create_experiment(f"s3-{uuid.uuid4().hex[:6]}")
        run = client.create_run(experiment)
        model = tmp_path / "weights" / "best.pt"
        model.parent.mkdir()
        model.write_bytes(os.urandom(4096))
        client.log_artifact(run.info.run_id, str(model), "weights")
        client.set_terminated(run.info.run_id)
        keys = s3_endpoint.keys(prefix)
        assert [k for k in keys if k.endswith(f"{run.info.run_id}/artifacts/weights/best.pt")], keys
        body = s3_endpoint.client().get_object(Bucket=s3_endpoint.bucket, Key=next(k for k in keys if k.endswith(
            "best.pt")))["Body"].read()
        assert body == model.read_bytes()
        back = Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="weights/best.pt",
                                                        dst_path=str(tmp_path / "back"), tracking_uri=url))
        assert back.read_bytes() == model.read_bytes()
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
