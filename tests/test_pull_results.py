"""The pull's typed results (offline): the record and manifest written beside and inside
the dataset keep their JSON keys, and the conversion's counts are reachable by name.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import PERSON_SPEC, SHARED_DATASETS

from poseops import pull as steps
from poseops.coco import read_coco_keypoints, to_label_studio_tasks
from poseops.pull_results import PullRecord
from poseops.settings import Settings
from poseops.skeleton import load_skeleton

COCO_MINI = SHARED_DATASETS / "coco-mini-train"
RECORD_KEYS = ["dataset", "label_studio_url", "label_studio_project_id", "export_snapshot_id", "pulled_at", "tasks",
               "labeled_tasks", "unlabeled_task_ids", "skipped_task_ids"]
MANIFEST_KEYS = ["dataset", "label_studio_project_id", "labeled_tasks", "train_images", "val_images", "conversion"]


def a_record(**changes) -> PullRecord:
    record = PullRecord("people", "http://127.0.0.1:8080", 3, 12, "2026-01-02T03:04:05+00:00", 10, 8, [4, 9], [])
    return replace(record, **changes)


def test_the_record_keeps_its_json_keys_in_order():
    assert list(a_record().to_record()) == RECORD_KEYS  # not yet versioned: no dvc_md5
    versioned = a_record(dvc_md5="0" * 32 + ".dir").to_record()
    assert list(versioned) == [*RECORD_KEYS, "dvc_md5"]
    assert PullRecord.from_record(json.loads(json.dumps(versioned)), "x.pull.json") == a_record(dvc_md5="0" * 32 + ".dir")


@pytest.mark.parametrize("data, expected", [
    ([], "expected a pull record (a JSON object), found a list"),
    ({"dataset": "people"}, "not a pull record (no label_studio_url, label_studio_project_id"),
])
def test_a_broken_record_is_named(data, expected):
    with pytest.raises(ValueError, match=r"data/people\.pull\.json: ") as e:
        PullRecord.from_record(data, "data/people.pull.json")
    assert expected in str(e.value) and ("delete it and pull again" in str(e.value) or isinstance(data, list))


@pytest.fixture(scope="module")
def pulled(tmp_path_factory):
    """`build_dataset` without DVC on coco-mini's labels, as the pull flow calls it."""
    work = tmp_path_factory.mktemp("pull")
    skeleton = load_skeleton(PERSON_SPEC)
    images = read_coco_keypoints(COCO_MINI / "annotations" / "person_keypoints_train2017.json", skeleton=skeleton)
    tasks = to_label_studio_tasks(skeleton, images, image_url=lambda image: f"/data/upload/3/{image.file_name}")
    tasks += [{"id": 900, "data": {"image": "/data/upload/3/a.jpg"}, "annotations": []},  # not labeled
              {"id": 901, "data": {"image": "/data/upload/3/b.jpg"},  # skipped by the annotator
               "annotations": [{"id": 901, "result": [], "was_cancelled": True}]}]
    options = steps.PullOptions(data_root=work / "data", version=False, commit=False, min_images=2,
                                allow_unlabeled=True)
    ready = steps.check_ready(tasks, options, "people")
    paths = {task["id"]: image.path for task, image in zip(tasks, images, strict=False)}
    snapshot = steps.Snapshot(project_id=3, export_id=12, tasks=tasks)
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(work)  # the data root lies inside the project
        with steps.dataset_lock(options.data_root, "people"):
            result = steps.build_dataset(Settings(home=work / "home"), "people", skeleton, options, snapshot, ready,
                                         paths, "http://127.0.0.1:8080")
    return result, work / "data"


def test_the_result_is_typed_and_matches_the_files(pulled):
    result, data = pulled
    on_disk = json.loads((data / "people.pull.json").read_text())
    assert list(on_disk) == RECORD_KEYS and result.record == on_disk and result.pull_record.dvc_md5 is None
    record = result.pull_record
    assert (record.tasks, record.labeled_tasks, record.unlabeled_task_ids, record.skipped_task_ids) == (82, 80, [900], [901])
    assert (record.label_studio_project_id, record.export_snapshot_id) == (3, 12)
    manifest = json.loads((result.dataset_dir / "manifest.json").read_text())
    assert list(manifest) == MANIFEST_KEYS and result.manifest == manifest
    conversion = result.dataset_manifest.conversion
    # the per-keypoint counts, by name: every keypoint label of the spec in model order
    assert list(conversion.keypoints) == list(load_skeleton(PERSON_SPEC).keypoint_labels())
    assert conversion.keypoints == manifest["conversion"]["keypoints_per_label"]
    assert sum(conversion.keypoints.values()) == manifest["conversion"]["keypoints"] > 0
    assert result.dataset_manifest.train_images + result.dataset_manifest.val_images == conversion.annotations_used
    # the report points at the dataset's final place, not the temporary folder it was written in
    assert Path(conversion.out_dir) == result.dataset_dir.resolve() and Path(conversion.data_yaml).is_file()
