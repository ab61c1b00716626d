"""Datasets against a real Label Studio server: config, projects, uploads, template pre-labels."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import PERSON_SPEC, SHARED_DATASETS, free_port, settings_env
from PIL import Image

from poseops import labelstudio_server
from poseops.datasets import (
    TEMPLATE_VERSION,
    DatasetError,
    create_dataset,
    load_record,
    set_template,
    upload_images,
)
from poseops.label_config import label_config_xml
from poseops.labelstudio import LabelStudioClient, LabelStudioError
from poseops.regions import Pose, pose_to_results, spec_template
from poseops.skeleton import load_skeleton

pytestmark = pytest.mark.integration
QUADRUPED = Path(__file__).parent / "data" / "quadruped.yaml"
COCO8 = SHARED_DATASETS / "coco8-pose" / "images"


@pytest.fixture
def client(label_studio):
    with LabelStudioClient(label_studio) as c:
        yield c


@pytest.fixture
def name(request) -> str:
    """A dataset name unique to this test run (the server may be shared with other runs)."""
    return f"{request.node.name[5:25].strip('_')}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """Four real images, a duplicate in a subfolder, a truncated JPEG, a text file named .png, an empty file."""
    folder = tmp_path / "images"
    (folder / "more").mkdir(parents=True)
    train = sorted((COCO8 / "train").glob("*.jpg"))
    for p in train:
        shutil.copy(p, folder / p.name)
    shutil.copy(train[0], folder / "more" / "copy-of-first.jpg")
    (folder / "truncated.jpg").write_bytes((COCO8 / "val" / "000000000110.jpg").read_bytes()[:4000])
    (folder / "notes.png").write_text("not a picture")
    (folder / "empty.jpg").write_bytes(b"")
    return folder


def test_up_again_finds_the_running_server(label_studio):
    first = labelstudio_server.status(label_studio)
    again = labelstudio_server.up(label_studio, timeout=30)
    assert first.running and again.running
    assert again.pid == first.pid


def test_down_leaves_a_server_it_did_not_start(label_studio, tmp_path):
    stranger = replace(label_studio, home=tmp_path)  # no pid file of ours here
    assert labelstudio_server.down(stranger) is False
    assert labelstudio_server.answers(label_studio.label_studio_url)


@pytest.mark.parametrize("spec", [PERSON_SPEC, QUADRUPED], ids=["person", "quadruped"])
def test_generated_config_is_accepted_by_label_studio(client, spec):
    client.validate_config(label_config_xml(load_skeleton(spec)))


def test_label_studio_refuses_a_broken_config(client):
    with pytest.raises(LabelStudioError, match="refused the labeling config"):
        client.validate_config("<View><KeyPointLabels name='k' toName='nowhere'><Label value='a'/></KeyPointLabels></View>")


def test_create_is_idempotent_and_updates_the_config(client, label_studio, name):
    project, created = create_dataset(client, label_studio, name, PERSON_SPEC)
    again, created_again = create_dataset(client, label_studio, name, PERSON_SPEC)
    assert created and not created_again and again.id == project.id
    changed, _ = create_dataset(client, label_studio, name, QUADRUPED)
    assert changed.id == project.id
    assert "front_left_paw" in client.get_project(project.id).label_config
    titles = [p["title"] for p in client.json("GET", "/api/projects", params={"page_size": 1000})["results"]]
    assert titles.count(name) == 1


def test_upload_skips_duplicates_and_reports_unreadable_files(client, label_studio, image_folder, name):
    create_dataset(client, label_studio, name, PERSON_SPEC)
    report = upload_images(client, label_studio, name, [image_folder])
    assert len(report.uploaded) == 4
    assert [p.name for p, _ in report.duplicates] == ["copy-of-first.jpg"]
    assert sorted(p.name for p, _ in report.unreadable) == ["empty.jpg", "notes.png", "truncated.jpg"]
    again = upload_images(client, label_studio, name, [image_folder])
    assert again.uploaded == [] and len(again.duplicates) == 5
    tasks = list(client.iter_tasks(report.project.id))
    assert len(tasks) == 4
    assert {t["data"]["source"] for t in tasks} == {p.name for p in (COCO8 / "train").glob("*.jpg")}


def test_every_task_carries_the_template_skeleton(client, label_studio, image_folder, name):
    create_dataset(client, label_studio, name, PERSON_SPEC)
    upload_images(client, label_studio, name, [image_folder / "more"])
    skeleton = load_skeleton(PERSON_SPEC)
    template = spec_template(skeleton, "person")
    project = client.find_project(name)
    assert client.json("GET", f"/api/projects/{project.id}")["model_version"] == TEMPLATE_VERSION
    (task,) = client.iter_tasks(project.id)
    (prediction,) = task["predictions"]
    assert prediction["model_version"] == TEMPLATE_VERSION
    result = prediction["result"]
    boxes = [r for r in result if r["type"] == "rectanglelabels"]
    points = [r for r in result if r["type"] == "keypointlabels"]
    assert len(boxes) == 1 and len(points) == 17
    box = boxes[0]
    with Image.open(image_folder / "more" / "copy-of-first.jpg") as im:
        assert (box["original_width"], box["original_height"]) == im.size
    bx, by, bw, bh = (box["value"][k] for k in ("x", "y", "width", "height"))
    assert box["value"]["rectanglelabels"] == ["person"]
    for i, point in enumerate(points):
        assert point["parentID"] == box["id"]
        assert point["value"]["keypointlabels"] == [skeleton.classes[0].keypoints[i].name]
        fx, fy = template.positions[i]
        assert point["value"]["x"] == pytest.approx(bx + fx * bw)
        assert point["value"]["y"] == pytest.approx(by + fy * bh)
        assert bx <= point["value"]["x"] <= bx + bw and by <= point["value"]["y"] <= by + bh


def test_set_template_from_a_hand_labeled_task(client, label_studio, image_folder, name):
    create_dataset(client, label_studio, name, PERSON_SPEC)
    report = upload_images(client, label_studio, name, [p for p in image_folder.glob("0*.jpg")])
    (labeled_path, labeled_id), (_, other_id) = report.uploaded[:2]
    with Image.open(labeled_path) as im:
        width, height = im.size
    # A crouching person in the left half: box 10%..40% wide, 20%..80% high, keypoints in a diagonal line.
    keypoints = tuple((0.1 + 0.3 * i / 16, 0.2 + 0.6 * i / 16, 2) for i in range(17))
    pose = Pose("person", (0.1, 0.2, 0.3, 0.6), keypoints)
    skeleton = load_skeleton(PERSON_SPEC)
    client.create_annotation(labeled_id, pose_to_results(skeleton, pose, width, height, "hand"))

    template, refreshed = set_template(client, label_studio, name, labeled_id)

    assert template.box_size == pytest.approx((0.3, 0.6))
    assert template.positions[16] == pytest.approx((1.0, 1.0))
    assert template.positions[8] == pytest.approx((0.5, 0.5))
    assert refreshed == len(report.uploaded) - 1
    assert load_record(label_studio, name).template == template.to_dict()
    other = client.get_task(other_id)
    (prediction,) = [p for p in other["predictions"] if p["model_version"] == TEMPLATE_VERSION]
    box = prediction["result"][0]["value"]
    assert (box["width"], box["height"]) == pytest.approx((30.0, 60.0))


def test_set_template_needs_an_annotation(client, label_studio, image_folder, name):
    create_dataset(client, label_studio, name, PERSON_SPEC)
    report = upload_images(client, label_studio, name, [image_folder / "more"])
    with pytest.raises(DatasetError, match="label it by hand first"):
        set_template(client, label_studio, name, report.uploaded[0][1])


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "poseops.cli", *args], env=env, capture_output=True, text=True, timeout=300)


def test_cli_creates_uploads_and_reports(label_studio, image_folder, name):
    env = settings_env(label_studio)
    created = run_cli("dataset", "create", name, "--skeleton", str(PERSON_SPEC), env=env)
    assert created.returncode == 0, created.stderr
    assert f"{label_studio.label_studio_url}/projects/" in created.stdout
    uploaded = run_cli("dataset", "upload", name, str(image_folder), env=env)
    assert uploaded.returncode == 0, uploaded.stderr
    assert "uploaded 4, duplicates 1, unreadable 3" in uploaded.stdout
    assert "truncated.jpg" in uploaded.stderr
    for output in (created.stdout + created.stderr, uploaded.stdout + uploaded.stderr):
        assert label_studio.label_studio_token not in output


def test_a_server_that_is_down_gives_a_clear_error(label_studio):
    down = replace(label_studio, label_studio_url=f"http://127.0.0.1:{free_port()}")
    env = settings_env(down)
    result = run_cli("dataset", "create", "nowhere", "--skeleton", str(PERSON_SPEC), env=env)
    assert result.returncode == 1
    assert "does not answer" in result.stderr and "poseops labelstudio up" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_wrong_token_gives_a_clear_error(label_studio):
    wrong = replace(label_studio, label_studio_token="0" * 40)
    with LabelStudioClient(wrong) as c, pytest.raises(LabelStudioError, match="refused the API token"):
        c.check()


def test_unknown_dataset_says_how_to_create_it(label_studio):
    result = run_cli("dataset", "upload", "never-made", str(COCO8), env=settings_env(label_studio))
    assert result.returncode == 1 and "poseops dataset create never-made" in result.stderr


def test_a_tiff_is_uploaded_as_the_png_a_browser_shows_and_a_video_is_pointed_to_frames(client, label_studio, tmp_path,
                                                                                           name):
    """The upload takes every image type the rest of poseops reads; a video gets a message saying what to do."""
    import io

    import numpy as np

    folder = tmp_path / "mixed"
    folder.mkdir()
    source = sorted((COCO8 / "train").glob("*.jpg"))[0]
    with Image.open(source) as im:
        im.save(folder / "frame.tif")
        expected = np.asarray(im.convert("RGB"))
    (folder / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")  # a video's header is enough to be named one
    create_dataset(client, label_studio, name, PERSON_SPEC)
    report = upload_images(client, label_studio, name, [folder])
    (path, task_id), = report.uploaded
    assert path.name == "frame.tif"
    ((video, why),) = report.unreadable
    assert video.name == "clip.mp4" and "a video, not an image" in why and "poseops dataset add-video" in why
    task = client.get_task(task_id)
    served = client.download(task["data"]["image"])
    assert served[:8] == b"\x89PNG\r\n\x1a\n" and task["data"]["source"] == "frame.tif"
    with Image.open(io.BytesIO(served)) as png:
        assert np.array_equal(np.asarray(png.convert("RGB")), expected)  # lossless: the same pixels
    again = upload_images(client, label_studio, name, [folder / "frame.tif"])
    assert again.uploaded == [] and [t for _, t in again.duplicates] == [task_id]  # the same content: one task
