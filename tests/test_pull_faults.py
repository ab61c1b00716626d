"""A pull under faults: Label Studio killed mid-pull, an unreachable DVC remote, tasks with bad image URLs.

Real servers only: a Label Studio of this module's own (it gets killed), the shared test
Label Studio, the real Prefect API, DVC and git in a fresh repository.
"""

from __future__ import annotations

import json
import secrets
import shutil
import signal
import time
import uuid
from pathlib import Path

import pytest
from conftest import ROOT, free_port, settings_env
from test_pull import COCO8, PERSON_SPEC, SKELETON, dvc, git, make_project, run_pull, tree_digest

from poseops import labelstudio_server
from poseops import pull as steps
from poseops.coco import read_yolo_pose
from poseops.datasets import create_dataset, upload_images
from poseops.flows import pull_labels as pull_flow
from poseops.labelstudio import LabelStudioClient, LabelStudioError
from poseops.processes import alive, signal_group
from poseops.pull import DvcPushError, NotReady, dataset_lock
from poseops.regions import poses_to_results
from poseops.settings import Settings

pytestmark = pytest.mark.integration
COCO8_IMAGES = read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])


@pytest.fixture(scope="module")
def own_label_studio(tmp_path_factory) -> Settings:
    """A Label Studio that this module alone uses, and may kill."""
    settings = Settings(
        home=tmp_path_factory.mktemp("own-labelstudio-home"),
        label_studio_url=f"http://127.0.0.1:{free_port()}",
        label_studio_username="faults@poseops.local",
        label_studio_password=secrets.token_urlsafe(12),
        label_studio_token=secrets.token_hex(20),
        label_studio_bin=ROOT / ".venv-labelstudio" / "bin" / "label-studio",
    )
    labelstudio_server.up(settings, timeout=900)
    try:
        yield settings
    finally:
        labelstudio_server.down(settings)
        assert not labelstudio_server.answers(settings.label_studio_url)


def kill(settings: Settings) -> None:
    """SIGKILL Label Studio's whole process group, as a crash or an OOM kill would, and wait until it is gone."""
    pid = labelstudio_server.status(settings).pid
    assert pid is not None
    signal_group(pid, signal.SIGKILL)
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(pid) and not labelstudio_server.answers(settings.label_studio_url, timeout=1)


def dataset_files(data: Path, name: str) -> dict[str, str]:
    """What a pull may change: the dataset folder (digest), its .dvc file and pull record."""
    return {"tree": tree_digest(data / name), "dvc": (data / f"{name}.dvc").read_text(),
            "record": (data / f"{name}.pull.json").read_text()}


def test_label_studio_killed_while_images_download(prefect_api, workspace, own_label_studio, monkeypatch):
    for key, value in settings_env(own_label_studio).items():
        monkeypatch.setenv(key, value)
    # One download at a time, so that the kill after the first image lands before the second.
    (workspace / "params.yaml").write_text("pull:\n  min_images: 4\n  val_fraction: 0.25\n  workers: 1\n")
    name = make_project(own_label_studio, COCO8_IMAGES)
    first = run_pull(name)
    assert first["downloaded_images"] == 8
    data = workspace / "data"
    before, head = dataset_files(data, name), git(workspace, "rev-parse", "HEAD")

    cache_dir = own_label_studio.home / "cache" / "images"
    shutil.rmtree(cache_dir)  # the next pull downloads every image again
    real_store, stored = steps.ImageCache.store, []

    def store_then_kill(cache, url, content):
        path = real_store(cache, url, content)
        stored.append(path)
        if len(stored) == 1:
            kill(own_label_studio)
        return path

    real_fetch, attempts = steps.fetch_images, []

    def counted_fetch(*args, **kwargs):
        attempts.append(args)
        return real_fetch(*args, **kwargs)

    monkeypatch.setattr(steps.ImageCache, "store", store_then_kill)
    monkeypatch.setattr(steps, "fetch_images", counted_fetch)
    monkeypatch.setattr("poseops.labelstudio.RETRY_DELAYS", (0.05,))  # the client's own retries, shortened
    with pytest.raises(LabelStudioError) as failed:
        run_pull(name)
    message = str(failed.value)
    print(f"\nkilled mid-pull: failed after {len(attempts)} attempts:\n{message}")

    # Retried by the flow's task (3 retries after 2, 5 and 15 s), the one retry layer, and the message says
    # so; then it names the server, the task and what to do.
    assert len(attempts) == 4 and "(tried 4 times)" in message
    assert pull_flow.fetch_images.retries == 3 and pull_flow.fetch_images.retry_delay_seconds == [2, 5, 15]
    assert own_label_studio.label_studio_url in message and "poseops labelstudio up" in message
    assert "downloading the image of task" in message and "/data/upload/" in message
    assert f"data/{name} is unchanged" in message and "Pull again" in message
    # Nothing changed, nothing left behind.
    assert dataset_files(data, name) == before
    assert git(workspace, "rev-parse", "HEAD") == head and git(workspace, "status", "--porcelain", "--", "data") == ""
    assert not (data / f".{name}.tmp").exists() and not (data / f".{name}.old").exists()
    with dataset_lock(data, name):  # the lock was let go (its file stays: git-ignored, reused)
        pass
    assert len(stored) == 1 and not list(cache_dir.rglob("*.tmp"))
    assert json.loads((cache_dir / "urls.json").read_text())  # the one image that arrived stays cached

    monkeypatch.setattr(steps.ImageCache, "store", real_store)
    labelstudio_server.up(own_label_studio, timeout=300)
    again = run_pull(name)
    assert again["downloaded_images"] == 7  # the one cached before the kill is not downloaded again
    assert again["dvc_md5"] == first["dvc_md5"] and dataset_files(data, name) == before
    assert git(workspace, "rev-parse", "HEAD") == head


def test_an_unreachable_dvc_remote_fails_after_recording_the_version_locally(prefect_api, workspace, label_studio):
    remote = workspace.parent / "dvc-remote"
    remote.mkdir()
    dvc(workspace, "init", "-q")
    dvc(workspace, "remote", "add", "-d", "shared", str(remote))
    name = make_project(label_studio, COCO8_IMAGES[:6])
    first = run_pull(name)
    assert first["pushed"] is True
    with LabelStudioClient(label_studio) as client:  # two more labeled images: a new version to push
        upload_images(client, label_studio, name, [im.path for im in COCO8_IMAGES[6:]],
                      labels={im.path: poses_to_results(SKELETON, im.poses, im.width, im.height)
                              for im in COCO8_IMAGES[6:]})
    parked = remote.with_name("dvc-remote.parked")
    remote.rename(parked)
    remote.write_text("the remote's disk is gone")  # unreachable: not a folder any more
    with pytest.raises(DvcPushError) as failed:
        run_pull(name)
    message = str(failed.value)
    print(f"\nunreachable remote:\n{message}")
    dataset, dvc_file = f"data/{name}", f"data/{name}.dvc"
    assert f"{dataset} was built and recorded with DVC locally" in message and "committed to git" in message
    assert f"the DVC remote 'shared' ({remote}) did not take it" in message and "Not a directory" in message
    assert f"dvc push {dvc_file}" in message

    # The new version is complete here: in the local DVC cache, its .dvc file and record committed.
    data = workspace / "data"
    assert len(list((data / name / "images").rglob("*.jpg"))) == 8
    record = json.loads((data / f"{name}.pull.json").read_text())
    assert record["dvc_md5"] != first["dvc_md5"] and record["labeled_tasks"] == 8
    assert json.loads(dvc(workspace, "status", "--json") or "{}") == {}
    assert git(workspace, "status", "--porcelain") == ""
    assert git(workspace, "log", "-1", "--format=%s").startswith(f"pull {name}:")
    assert git(workspace, "show", "HEAD:" + dvc_file) == (data / f"{name}.dvc").read_text().strip()

    remote.unlink()
    parked.rename(remote)
    dvc(workspace, "push", "-q", dvc_file)  # what the message says to do
    assert json.loads(dvc(workspace, "status", "--cloud", "--json") or "{}") == {}
    shutil.rmtree(workspace / ".dvc" / "cache")  # the remote alone brings it back
    shutil.rmtree(data / name)
    dvc(workspace, "pull", "-q", dvc_file)
    assert json.loads(dvc(workspace, "status", "--json") or "{}") == {}
    assert len(list((data / name / "images").rglob("*.jpg"))) == 8


def test_tasks_with_image_urls_that_lead_elsewhere_stop_the_pull(prefect_api, workspace, label_studio):
    name = f"bad-urls-{uuid.uuid4().hex[:8]}"
    with LabelStudioClient(label_studio) as client:
        create_dataset(client, label_studio, name, PERSON_SPEC)
        upload_images(client, label_studio, name, [im.path for im in COCO8_IMAGES],
                      labels={im.path: poses_to_results(SKELETON, im.poses, im.width, im.height)
                              for im in COCO8_IMAGES})
        project = client.find_project(name)
        image = COCO8_IMAGES[0]
        result = poses_to_results(SKELETON, image.poses, image.width, image.height)
        bad = ["../../etc/passwd", "file:///etc/passwd", "/data/upload/%2e%2e/%2e%2e/etc/passwd"]
        bad_ids = client.import_tasks(project.id, [{"data": {"image": url}, "annotations": [{"result": result}]}
                                                   for url in bad])
    with pytest.raises(NotReady) as refused:
        run_pull(name)
    message = str(refused.value)
    assert f"3 labeled task(s) of {name!r}" in message and all(f"task {i}:" in message for i in bad_ids)
    assert "fix or delete those tasks" in message
    assert not (workspace / "data" / name).exists() and not (workspace / "data" / f".{name}.tmp").exists()
