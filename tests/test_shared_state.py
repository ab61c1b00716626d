"""Concurrency on shared state: concurrent `api-key` runs all land in the keys file, written
atomically; a key revoked with `poseops api-key --revoke` is refused by a running key store at
once, without a restart; a usage database deleted while serving is made again instead of a 500;
two uploads of the same folder at once create each task once, with its template pre-label.
"""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from conftest import PERSON_SPEC, SHARED_DATASETS

from poseops.apikeys import KeyRefused, KeyStore, add_key, load_keys, revoke_key


def api_key_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poseops.cli_serve", "api-key", *args],
                          capture_output=True, text=True, timeout=120)


def test_concurrent_api_key_runs_all_land_in_the_file(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    names = [f"user{i}" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:  # separate processes, as six `poseops api-key` at once
        runs = list(pool.map(lambda n: api_key_cli(n, "--keys-file", str(keys_file)), names))
    assert all(r.returncode == 0 for r in runs), [r.stderr for r in runs]
    printed = {name: r.stdout.strip().splitlines()[-1] for name, r in zip(names, runs, strict=True)}
    store = KeyStore(keys_file)
    assert sorted(k.name for k in load_keys(keys_file)) == names
    assert {name: store.admit(key).name for name, key in printed.items()} == {n: n for n in names}
    assert stat.S_IMODE(keys_file.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.usage.db", "keys.yaml", "keys.yaml.lock"]


def test_a_revoked_key_is_refused_at_once_without_a_restart(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    alice, bob = add_key(keys_file, "alice", None), add_key(keys_file, "bob", 5)
    store = KeyStore(keys_file)  # the running service's
    assert store.admit(alice).name == "alice"
    revoked = api_key_cli("alice", "--revoke", "--keys-file", str(keys_file))
    assert revoked.returncode == 0, revoked.stderr
    with pytest.raises(KeyRefused) as refused:
        store.admit(alice)
    assert refused.value.status == 401
    assert store.admit(bob).name == "bob"
    carol = add_key(keys_file, "carol", None)  # a key added while serving works at once too
    assert store.admit(carol).name == "carol"
    again = api_key_cli("alice", "--revoke", "--keys-file", str(keys_file))
    assert again.returncode == 1 and "no key named 'alice' to revoke" in again.stderr


def test_a_broken_keys_file_admits_no_key(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    key = add_key(keys_file, "alice", None)
    store = KeyStore(keys_file)
    keys_file.write_text("keys: [not: valid, entries")
    with pytest.raises(KeyRefused):
        store.admit(key)


def test_a_usage_database_deleted_while_serving_is_made_again(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    key = add_key(keys_file, "alice", 3)
    store = KeyStore(keys_file)
    store.admit(key)
    store.usage_db.unlink()
    assert store.admit(key).name == "alice"  # not a 500
    assert store.used("alice") == 1
    assert stat.S_IMODE(store.usage_db.stat().st_mode) == 0o600


def test_revoking_leaves_the_other_keys_and_edits_are_serialized_in_one_process(tmp_path):
    keys_file = tmp_path / "keys.yaml"
    threads = [threading.Thread(target=add_key, args=(keys_file, f"t{i}", None)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    revoke_key(keys_file, "t3")
    assert sorted(k.name for k in load_keys(keys_file)) == [f"t{i}" for i in range(8) if i != 3]


@pytest.mark.integration
def test_two_uploads_of_the_same_folder_at_once_create_each_task_once(label_studio, tmp_path):
    from poseops.datasets import TEMPLATE_VERSION, create_dataset, upload_images
    from poseops.labelstudio import LabelStudioClient

    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted((SHARED_DATASETS / "coco8-pose" / "images").rglob("*.jpg")):
        shutil.copy(image, folder / image.name)
    count = len(list(folder.iterdir()))
    name = f"race-{uuid.uuid4().hex[:6]}"
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, PERSON_SPEC)

    def upload(_: int):
        with LabelStudioClient(label_studio) as own:
            return upload_images(own, label_studio, name, [folder], workers=2)

    with ThreadPoolExecutor(2) as pool:
        reports = list(pool.map(upload, range(2)))
    assert sum(len(r.uploaded) for r in reports) == count
    assert sum(len(r.duplicates) for r in reports) == count
    with LabelStudioClient(label_studio) as client:
        tasks = list(client.iter_tasks(project.id))
    assert len(tasks) == count and len({t["data"]["sha256"] for t in tasks}) == count
    assert all(any(p["model_version"] == TEMPLATE_VERSION for p in t["predictions"]) for t in tasks)


@pytest.mark.integration
def test_a_rerun_gives_back_the_template_prelabels_a_race_left_out(label_studio, tmp_path):
    from poseops.datasets import TEMPLATE_VERSION, create_dataset, upload_images
    from poseops.labelstudio import LabelStudioClient

    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted((SHARED_DATASETS / "coco8-pose" / "images" / "val").glob("*.jpg"))[:2]:
        shutil.copy(image, folder / image.name)
    name = f"repair-{uuid.uuid4().hex[:6]}"
    with LabelStudioClient(label_studio) as client:
        project, _ = create_dataset(client, label_studio, name, PERSON_SPEC)
        upload_images(client, label_studio, name, [folder])
        first, second = list(client.iter_tasks(project.id))
        for prediction in first["predictions"]:  # lost its pre-label
            client.request("DELETE", f"/api/predictions/{prediction['id']}")
        (twin,) = client.import_tasks(project.id, [{"data": second["data"]}])  # a second task for one image, bare
        report = upload_images(client, label_studio, name, [folder])
        assert sorted(report.repaired) == sorted([first["id"], twin]) and report.uploaded == []
        tasks = list(client.iter_tasks(project.id))
    assert all(sum(p["model_version"] == TEMPLATE_VERSION for p in t["predictions"]) == 1 for t in tasks)
