"""Clear errors instead of tracebacks or silent damage: a half-written deploy cache heals (a
missing skeleton.yaml, a truncated model.onnx), a bad LABEL_STUDIO_URL is named, a spec file
name full of dashes still gives valid XML, a huge keypoint name is refused, and a media type in
capitals is still multipart.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET

import pytest
from conftest import PERSON_SPEC, SHARED

from poseops.settings import SettingsError, load_settings

PRETRAINED = SHARED / "weights" / "yolo11n-pose.pt"


@pytest.fixture
def registered(tmp_path, monkeypatch):
    """A registered model version with the files `poseops train` registers (model.onnx, skeleton.yaml)."""
    import mlflow

    from poseops import tracking
    from poseops.inference import export_onnx

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.chdir(tmp_path)
    files = tmp_path / "artifacts"
    files.mkdir()
    shutil.copyfile(export_onnx(PRETRAINED), files / "model.onnx")
    shutil.copyfile(PERSON_SPEC, files / "skeleton.yaml")
    mlc = tracking.client()
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(files), artifact_path="model")
    tracking.register_version(mlc, "poseops-pose", run.info.run_id, "model", {})
    (files / "skeleton.yaml").unlink()
    with mlflow.start_run() as bare:
        mlflow.log_artifacts(str(files), artifact_path="model")
    tracking.register_version(mlc, "poseops-pose", bare.info.run_id, "model", {})  # version 2: no skeleton.yaml
    return mlc


def test_a_half_written_deploy_cache_heals(registered, tmp_path):
    from poseops.deploy import DeployError, checked_version, fetch_version
    from poseops.detector import ServiceConfig

    settings = load_settings()
    _, files = fetch_version("models:/poseops-pose/1", settings)
    (files / "skeleton.yaml").unlink()  # a download cut short
    _, files = fetch_version("models:/poseops-pose/1", settings)
    assert (files / "skeleton.yaml").is_file()
    model = files / "model.onnx"
    model.write_bytes(model.read_bytes()[:10_000])  # truncated in the cache
    _, files = checked_version(settings, "models:/poseops-pose/1", ServiceConfig(runtime="onnx"))
    assert (files / "model.onnx").stat().st_size > 1_000_000
    with pytest.raises(DeployError, match="has no skeleton.yaml among its files"):
        fetch_version("models:/poseops-pose/2", settings)
    (v2,) = (settings.home / "deployments").glob("poseops-pose-v2-*")  # <name>-v<version>-<run>
    assert [p.name for p in v2.iterdir()] == []  # nothing kept of the refused download


def test_a_damaged_model_is_a_clear_deploy_error(tmp_path):
    from poseops.deploy import DeployError, check_model
    from poseops.detector import ServiceConfig

    (tmp_path / "model.onnx").write_bytes(b"\x08\x07not really onnx")
    shutil.copyfile(PERSON_SPEC, tmp_path / "skeleton.yaml")
    with pytest.raises(DeployError, match="does not load .*the running service was left as it was"):
        check_model(ServiceConfig(runtime="onnx").with_model_files(tmp_path))


@pytest.mark.parametrize("url", ["http://[::1", "127.0.0.1:8080", "http://host:99999", "ftp://x", "http://"])
def test_a_bad_label_studio_url_is_named(url, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LABEL_STUDIO_URL", url)
    with pytest.raises(SettingsError, match="LABEL_STUDIO_URL=.* is not a usable URL"):
        load_settings()


def test_a_spec_file_named_with_dashes_gives_valid_xml(tmp_path):
    from poseops.label_config import label_config_xml
    from poseops.skeleton import load_skeleton

    for name in ("y---", "a--b-", "-"):
        spec = tmp_path / name
        shutil.copyfile(PERSON_SPEC, spec)
        ET.fromstring(label_config_xml(load_skeleton(spec)))


def test_a_huge_keypoint_name_is_refused(tmp_path):
    from poseops.skeleton import SkeletonError, load_skeleton

    spec = tmp_path / "long.yaml"
    spec.write_text(PERSON_SPEC.read_text().replace("nose", "n" * 100_000, 1))
    with pytest.raises(SkeletonError, match="at most 64") as refused:
        load_skeleton(spec)
    assert len(str(refused.value)) < 1000


def test_a_media_type_in_capitals_is_still_multipart():
    import asyncio

    from starlette.requests import Request

    from poseops.detect_api import read_form

    body = (b"--XyZ\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
            b"Content-Type: image/jpeg\r\n\r\nJPEGBYTES\r\n--XyZ--\r\n")
    scope = {"type": "http", "method": "POST", "path": "/detect", "query_string": b"",
             "headers": [(b"content-type", b"MULTIPART/FORM-DATA; boundary=XyZ"),
                         (b"content-length", str(len(body)).encode())]}

    async def receive():
        return {"type": "http.request", "body": body, "more_body": False}

    values = asyncio.run(read_form(Request(scope, receive)))
    assert values["image"] == b"JPEGBYTES"


def test_a_damaged_or_missing_mlflow_store_is_named_not_a_traceback_or_a_new_store(tmp_path):
    import subprocess
    import sys

    from poseops.tracking import TrackingError, client

    (tmp_path / "params.yaml").write_text("")
    damaged = tmp_path / "damaged.db"
    damaged.write_bytes(b"not sqlite " * 200)
    for uri, message in ((f"sqlite:///{damaged}", "is damaged or not a database"),
                         (f"sqlite:///{tmp_path / 'none.db'}", "there is no MLflow store at"),
                         ("sqlite:///", "not a database file")):
        promote = subprocess.run([sys.executable, "-m", "poseops.cli", "promote"], cwd=tmp_path, capture_output=True,
                                 text=True, timeout=300, env={**os.environ, "MLFLOW_TRACKING_URI": uri})
        assert promote.returncode == 1 and message in promote.stderr and "Traceback" not in promote.stderr, promote.stderr
    assert not (tmp_path / "none.db").exists()
    with pytest.raises(TrackingError, match="is damaged"):
        client(f"sqlite:///{damaged}")
