"""Label checks: left/right swaps, stretched limbs and the model's disagreement, on COCO's real labels.

The unit tests run the checks on the COCO sets here (clean: no flag) and on the same labels with
errors put in; the integration test pulls a real Label Studio project with a few wrong labels.
"""

from __future__ import annotations

import dataclasses
import math
import uuid

import pytest
import yaml
from conftest import PERSON_SPEC, SHARED_DATASETS

from poseops.coco import read_coco_keypoints, read_yolo_pose
from poseops.conversion.poses import Pose
from poseops.labelchecks import (
    CHECK_LIMB,
    CHECK_MODEL,
    CHECK_SWAP,
    TASK_FIELD,
    LabelChecks,
    LabeledObject,
    check_labels,
    labeled_object,
    model_flags,
    oks,
    refusal,
)
from poseops.params import ParamsError, load_params
from poseops.reports import PullSummary, pull_markdown
from poseops.skeleton import load_skeleton

integration = pytest.mark.integration
SKELETON = load_skeleton(PERSON_SPEC)
PERSON = SKELETON.classes[0]
COCO_MINI = SHARED_DATASETS / "coco-mini-train"
COCO8 = SHARED_DATASETS / "coco8-pose"


def coco_mini():
    (json_path,) = (COCO_MINI / "annotations").glob("*.json")
    return read_coco_keypoints(json_path, skeleton=SKELETON)


def objects_of(images) -> list[LabeledObject]:
    return [labeled_object(im.file_name, i, pose, im.width, im.height) for im in images for i, pose in enumerate(im.poses)]


def swapped(obj: LabeledObject, left: str, right: str) -> LabeledObject:
    points = list(obj.points)
    a, b = PERSON.index(left), PERSON.index(right)
    points[a], points[b] = points[b], points[a]
    return dataclasses.replace(obj, points=tuple(points))


def stretched(obj: LabeledObject, start: str, end: str, factor: float) -> LabeledObject:
    """The connection start-end made `factor` times as long (its end moved along it)."""
    points = list(obj.points)
    (x0, y0), (x1, y1) = points[PERSON.index(start)], points[PERSON.index(end)]
    points[PERSON.index(end)] = (x0 + factor * (x1 - x0), y0 + factor * (y1 - y0))
    return dataclasses.replace(obj, points=tuple(points))


def flagged(checks: LabelChecks, obj: LabeledObject, check: str) -> bool:
    return any(f.task_id == obj.task_id and f.object_index == obj.index and f.check == check for f in checks.flags)


@pytest.mark.parametrize("name", ["coco8-pose", "coco-mini-train"])
def test_clean_coco_labels_raise_no_flag(name):
    images = (read_yolo_pose(COCO8, "train", ["person"]) + read_yolo_pose(COCO8, "val", ["person"])
              if name == "coco8-pose" else coco_mini())
    checks = check_labels(SKELETON, objects_of(images))
    assert checks.checked_objects >= (8 if name == "coco8-pose" else 30)
    assert checks.flags == [], checks.flags


def big_enough(objects, *names):
    from poseops.labelchecks import _checked

    return [o for o in _checked(objects) if all(o.points[PERSON.index(n)] is not None for n in names)]


@pytest.mark.parametrize(("left", "right", "at_least"), [
    ("left_shoulder", "right_shoulder", 0.8), ("left_elbow", "right_elbow", 0.8), ("left_wrist", "right_wrist", 0.75),
    ("left_hip", "right_hip", 0.65), ("left_knee", "right_knee", 0.6), ("left_ankle", "right_ankle", 0.6),
])
def test_one_swapped_pair_is_caught_on_most_objects_and_nothing_else_is_flagged(left, right, at_least):
    objects = objects_of(coco_mini())
    candidates = big_enough(objects, left, right)
    caught = 0
    for target in candidates:
        checks = check_labels(SKELETON, [swapped(o, left, right) if o is target else o for o in objects])
        caught += flagged(checks, target, CHECK_SWAP)
        assert {f.task_id for f in checks.flags} <= {target.task_id}, checks.flags  # no other object flagged
    assert len(candidates) >= 15
    assert caught / len(candidates) >= at_least, f"{caught} of {len(candidates)} swaps of {left}/{right} caught"


def test_a_whole_object_mirrored_is_a_view_from_behind_not_an_error():
    objects = objects_of(coco_mini())
    target = big_enough(objects, "left_shoulder", "right_shoulder", "left_hip", "right_hip")[0]
    mirrored = target
    for left, right in PERSON.flip_pairs:
        mirrored = swapped(mirrored, left, right)
    checks = check_labels(SKELETON, [mirrored if o is target else o for o in objects])
    assert not checks.flags


def usual_length(objects, start: str, end: str) -> float:
    """The dataset's median length of the connection, relative to object size."""
    from poseops.labelchecks import usual_lengths

    a, b = PERSON.index(start), PERSON.index(end)
    return math.exp(usual_lengths(PERSON, big_enough(objects))[(a, b) if (a, b) in usual_lengths(PERSON, big_enough(
        objects)) else (b, a)].median)


def dragged(obj: LabeledObject, start: str, end: str, length: float) -> LabeledObject:
    """The end of the connection moved along it until the connection is `length` (relative to the object's size)."""
    (x0, y0), (x1, y1) = obj.points[PERSON.index(start)], obj.points[PERSON.index(end)]
    return stretched(obj, start, end, length * obj.scale / math.hypot(x1 - x0, y1 - y0))


def test_a_limb_dragged_to_three_and_a_half_times_its_usual_length_is_caught():
    objects = objects_of(coco_mini())
    usual = usual_length(objects, "left_knee", "left_ankle")
    candidates = big_enough(objects, "left_knee", "left_ankle")
    caught = 0
    for target in candidates:
        checks = check_labels(SKELETON, [dragged(o, "left_knee", "left_ankle", 3.5 * usual) if o is target else o
                                         for o in objects])
        assert {f.task_id for f in checks.flags} <= {target.task_id}
        caught += any(f.check == CHECK_LIMB and "left_ankle-left_knee" in f.detail for f in checks.flags)
    assert caught >= 0.9 * len(candidates), f"{caught} of {len(candidates)}"


def test_too_few_objects_to_know_a_usual_length_are_not_judged():
    objects = big_enough(objects_of(coco_mini()), "left_knee", "left_ankle")[:5]
    checks = check_labels(SKELETON, [stretched(objects[0], "left_knee", "left_ankle", 5.0), *objects[1:]])
    assert not checks.flags
    assert any("not checked" in note for note in checks.notes)


def test_the_model_check_flags_a_confident_detection_far_from_the_label():
    pose = Pose("person", (0.1, 0.1, 0.5, 0.8), tuple((0.2 + 0.01 * i, 0.2 + 0.04 * i, 2) for i in range(17)))
    label = labeled_object(7, 0, pose, 1000, 1000)

    def detection(shift: float, conf: float) -> dict:
        return {"class": "person", "confidence": conf, "x": 100, "y": 100, "width": 500, "height": 800,
                "keypoints": [{"name": n, "x": p[0] + shift, "y": p[1], "confidence": 0.9}
                              for n, p in zip(PERSON.keypoint_names, label.points, strict=True)]}

    assert oks(label, {i: p for i, p in enumerate(label.points)}, SKELETON.oks_sigmas) == pytest.approx(1.0)
    assert model_flags(SKELETON, [label], lambda _: [detection(2.0, 0.9)]) == []  # agrees
    (flag,) = model_flags(SKELETON, [label], lambda _: [detection(150.0, 0.9)])
    assert flag.check == CHECK_MODEL and flag.task_id == 7 and "OKS" in flag.detail
    assert model_flags(SKELETON, [label], lambda _: [detection(150.0, 0.2)]) == []  # the model is not sure: no opinion


def test_the_refusal_counts_the_flagged_tasks_against_pull_max_flagged():
    objects = objects_of(coco_mini())
    targets = big_enough(objects, "left_elbow", "right_elbow")[:6]
    checks = check_labels(SKELETON, [swapped(o, "left_elbow", "right_elbow") if o in targets else o for o in objects])
    checks.checked_tasks = 28
    n = len(checks.flagged_tasks)
    assert n >= 4
    assert refusal(checks, 0.5, "people") is None
    why = refusal(checks, 0.05, "people")
    assert why is not None
    assert f"{n} of 28 labeled task(s) flagged" in why and "pull.max_flagged = 0.05" in why and TASK_FIELD in why
    assert all(str(t) in why for t in checks.flagged_tasks)


def test_pull_max_flagged_is_validated(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"pull": {"max_flagged": 1.5}}))
    with pytest.raises(ParamsError, match="pull.max_flagged"):
        load_params(path)
    path.write_text(yaml.safe_dump({"pull": {"check_model_url": "localhost:3000"}}))
    with pytest.raises(ParamsError, match="pull.check_model_url"):
        load_params(path)


def test_the_pull_artifact_lists_each_flag_linked_to_its_task():
    objects = objects_of(coco_mini())
    target = big_enough(objects, "left_elbow", "right_elbow")[0]
    checks = check_labels(SKELETON, [swapped(o, "left_elbow", "right_elbow") if o is target else o for o in objects])
    summary = PullSummary("people", "data/people", "http://ls", 3, 9, 30, 28, 22, 6, {}, [], [], None, False, None, 0,
                          label_checks=checks.to_dict())
    markdown = pull_markdown(summary)
    assert "Label checks: 1 of" in markdown
    assert f"[{target.task_id}](http://ls/projects/3/data?task={target.task_id})" in markdown
    assert "left_elbow/right_elbow look swapped" in markdown


# --- through a real Label Studio ------------------------------------------------------------------------------


def wrong_labels(images):
    """The COCO images with three labels made wrong: the elbows swapped on two people, a shin dragged to 3.5 times
    its usual length on a third (the first candidates the unit-tested checks catch: this tests the way through
    Label Studio, the tags and the pull, not the detection rates)."""
    images = list(images)
    objects = objects_of(images)
    usual = usual_length(objects, "left_knee", "left_ankle")
    size = {im.file_name: (im.width, im.height) for im in images}
    changes: dict[str, LabeledObject] = {}
    plans = [(2, CHECK_SWAP, big_enough(objects, "left_elbow", "right_elbow"),
              lambda o: swapped(o, "left_elbow", "right_elbow")),
             (1, CHECK_LIMB, big_enough(objects, "left_knee", "left_ankle"),
              lambda o: dragged(o, "left_knee", "left_ankle", 3.5 * usual))]
    for wanted, check, candidates, change in plans:
        for target in candidates:
            changed = change(target)
            x, y = changed.points[PERSON.index("left_ankle")]
            inside = 0 < x < size[target.task_id][0] and 0 < y < size[target.task_id][1]
            if len([c for c in changes.values() if c is not None]) >= 3 or target.task_id in changes or not inside:
                continue
            checks = check_labels(SKELETON, [changed if o is target else o for o in objects])
            if flagged(checks, target, check):
                changes[target.task_id] = changed
                wanted -= 1
            if not wanted:
                break
    out = []
    for image in images:
        poses = list(image.poses)
        changed = changes.get(image.file_name)
        if changed is not None:
            w, h = size[image.file_name]
            pose = poses[changed.index]
            kps = tuple((p[0] / w, p[1] / h, kp[2]) if p is not None else kp
                        for p, kp in zip(changed.points, pose.keypoints, strict=True))
            poses[changed.index] = dataclasses.replace(pose, keypoints=kps)
        out.append(image._replace(poses=poses))
    return out, sorted(changes)


@integration
def test_wrong_labels_are_tagged_in_label_studio_listed_and_refuse_the_pull_over_the_threshold(
        prefect_api, workspace, label_studio):
    from test_pull import make_project, run_pull

    from poseops.datasets import project_of
    from poseops.labelstudio import LabelStudioClient
    from poseops.pull import NotReady

    images, wrong = wrong_labels(coco_mini())
    assert len(wrong) == 3
    name = make_project(label_studio, images, name=f"checks-{uuid.uuid4().hex[:8]}")
    with LabelStudioClient(label_studio) as client:
        project = project_of(client, name).id
        labeled = len(list(client.iter_tasks(project)))
    params = workspace / "params.yaml"
    doc = yaml.safe_load(params.read_text())
    doc["pull"]["max_flagged"] = 0.02  # 3 of the 80 images
    params.write_text(yaml.safe_dump(doc))
    with pytest.raises(NotReady) as refused:
        run_pull(name)
    message = str(refused.value)
    assert "3 of" in message and "labeled task(s) flagged" in message and "pull.max_flagged = 0.02" in message
    assert not (workspace / "data" / name).exists()  # nothing written
    with LabelStudioClient(label_studio) as client:
        tagged = {t["id"]: t["data"].get(TASK_FIELD) for t in client.iter_tasks(project)}
        columns = client.json("GET", "/api/dm/columns", params={"project": project})
    flagged_ids = sorted(i for i, tag in tagged.items() if tag)
    assert len(flagged_ids) == 3
    assert sorted(tagged[i] for i in flagged_ids) == sorted([CHECK_LIMB, CHECK_SWAP, CHECK_SWAP])
    assert all(str(i) in message for i in flagged_ids)
    assert any(c.get("id") == TASK_FIELD for c in columns["columns"]), "no Data Manager column to filter on"

    doc["pull"]["max_flagged"] = 0.2
    params.write_text(yaml.safe_dump(doc))
    result = run_pull(name)
    checks = result["label_checks"]
    assert sorted(checks["flagged_tasks"]) == flagged_ids
    assert checks["counts"] == {CHECK_SWAP: 2, CHECK_LIMB: 1}
    assert checks["checked_tasks"] == labeled
    assert (workspace / "data" / name / "manifest.json").is_file()
    import httpx
    from prefect.settings import PREFECT_API_URL

    from poseops.reports import artifact_key

    artifact = httpx.get(f"{PREFECT_API_URL.value()}/artifacts/{artifact_key('pull', name)}/latest").json()
    assert "Label checks: 3 of" in artifact["data"]
    assert all(f"data?task={i})" in artifact["data"] for i in flagged_ids)


@integration
def test_labels_the_deployed_model_places_elsewhere_are_flagged(prefect_api, workspace, label_studio, detect_service,
                                                               monkeypatch):
    """The real service (yolo11n-pose) on coco-mini-train with one person's keypoints all moved half their box's
    width sideways: limbs and sides stay plausible, so only the model's disagreement can catch it."""
    from test_pull import make_project, run_pull

    images = coco_mini()
    objects = objects_of(images)
    target = max(big_enough(objects, "left_shoulder", "right_shoulder", "left_hip", "right_hip"), key=lambda o: o.scale)
    n = next(i for i, im in enumerate(images) if im.file_name == target.task_id)
    pose = images[n].poses[target.index]
    shift = pose.box[2] / 2 if pose.box[0] + pose.box[2] * 3 / 2 < 1 else -pose.box[2] / 2
    moved = tuple((x + shift, y, v) if v else (x, y, v) for x, y, v in pose.keypoints)
    poses = list(images[n].poses)
    poses[target.index] = dataclasses.replace(pose, keypoints=moved)
    images[n] = images[n]._replace(poses=poses)
    assert not check_labels(SKELETON, objects_of(images)).flags  # the geometry alone sees nothing wrong
    name = make_project(label_studio, images, name=f"model-{uuid.uuid4().hex[:8]}")
    params = workspace / "params.yaml"
    doc = yaml.safe_load(params.read_text())
    doc["pull"].update(check_model_url=detect_service.url, max_flagged=1.0)
    params.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("POSEOPS_API_KEY", detect_service.keys["main"])
    checks = run_pull(name)["label_checks"]
    model = [f for f in checks["flags"] if f["check"] == CHECK_MODEL]
    assert model, checks
    with_ids = {f["task_id"] for f in model}
    assert len(with_ids) <= 3, model  # the moved label, and at most a couple of COCO's own doubtful ones
    from poseops.datasets import project_of
    from poseops.imagecache import image_sha256
    from poseops.labelstudio import LabelStudioClient

    with LabelStudioClient(label_studio) as client:
        tasks = {t["id"]: t for t in client.iter_tasks(project_of(client, name).id)}
    digest = image_sha256(images[n].path)
    (moved_task,) = [i for i, t in tasks.items() if t["data"].get("sha256") == digest]
    assert moved_task in with_ids
    assert CHECK_MODEL in tasks[moved_task]["data"][TASK_FIELD]
