"""Per-keypoint OKS sigmas from double labels: synthetic annotators with a known spread, the spec written
back with its comments, and `poseops estimate-sigmas` against a real Label Studio project."""

from __future__ import annotations

import json
import math
import random
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import ROOT

from poseops.conversion.poses import Pose
from poseops.sigmas import AREA_FACTOR, SigmaError, check_enough, estimate, group_objects, write_sigmas
from poseops.skeleton import load_skeleton

QUADRUPED = ROOT / "tests" / "data" / "quadruped.yaml"
SKELETON = load_skeleton(QUADRUPED)
NAMES = SKELETON.classes[0].keypoint_names
TRUE = {name: 0.02 + 0.01 * i for i, name in enumerate(NAMES)}  # 0.02 .. 0.13


def annotator(truth: Pose, width: int, height: int, rng: random.Random) -> Pose:
    """A label of `truth` by an annotator whose error on keypoint i has E[d²] = σᵢ² s² (s² = 0.53 × box area)."""
    x, y, w, h = truth.box
    s = math.sqrt(AREA_FACTOR * w * width * h * height)
    kps = tuple((kx + rng.gauss(0, TRUE[n] * s / math.sqrt(2)) / width, ky + rng.gauss(0, TRUE[n] * s / math.sqrt(2)) / height, 2)
                for n, (kx, ky, _) in zip(NAMES, truth.keypoints, strict=True))
    return Pose(truth.class_name, truth.box, kps)


def images(n: int, per_image: int = 2, annotations: int = 2, seed: int = 0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        truths = []
        for j in range(per_image):
            box = (0.05 + 0.45 * j, 0.1 + rng.uniform(0, 0.2), rng.uniform(0.2, 0.4), rng.uniform(0.3, 0.6))
            kps = tuple((box[0] + rng.uniform(0, box[2]), box[1] + rng.uniform(0, box[3]), 2) for _ in NAMES)
            truths.append(Pose("dog", box, kps))
        out.append(([[annotator(t, 800, 600, rng) for t in truths] for _ in range(annotations)], 800.0, 600.0))
    return out


@pytest.mark.parametrize("annotations", [2, 3])
def test_the_estimate_recovers_a_known_spread(annotations):
    estimates = estimate(SKELETON, images(400, annotations=annotations))
    assert estimates.objects == 800
    for k in estimates.keypoints:
        assert k.samples == 800
        assert k.estimate == pytest.approx(TRUE[k.keypoint], rel=0.08), k


def test_objects_are_matched_by_box_not_by_order():
    first, second = images(1)[0][0]
    groups = group_objects([first, list(reversed(second))])
    assert len(groups) == 2 and all(g[0].box == g[1].box for g in groups)


def test_too_few_double_labels_are_refused_saying_what_to_do():
    estimates = estimate(SKELETON, images(3))
    with pytest.raises(SigmaError, match=r"3 task\(s\) with two or more annotations, holding 6 object\(s\).*at least 10"):
        check_enough(estimates, "dogs")
    few = estimate(SKELETON, images(2, per_image=1) + [([[p] for p in images(1, per_image=1)[0][0][0]], 800.0, 600.0)])
    assert all(k.estimate is None for k in few.keypoints)  # 2 objects: each keypoint keeps its sigma
    assert few.sigmas == SKELETON.oks_sigmas


def test_write_keeps_comments_and_layout_and_the_spec_stays_valid(tmp_path):
    spec = tmp_path / "quadruped.yaml"
    shutil.copy(QUADRUPED, spec)
    before = spec.read_text()
    write_sigmas(spec, {"nose": 0.031, "back_right_paw": 0.094})
    after = spec.read_text()
    assert after.splitlines()[0] == before.splitlines()[0]  # the comment heading the file
    assert "- {name: nose, sigma: 0.031}" in after
    assert "- {name: back_right_paw, sigma: 0.094}" in after
    skeleton = load_skeleton(spec)
    assert skeleton.oks_sigmas[0] == 0.031 and skeleton.oks_sigmas[-1] == 0.094
    changed = [(a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b]
    assert changed == [("      - {name: nose}", "      - {name: nose, sigma: 0.031}"),
                       ("      - {name: back_right_paw}", "      - {name: back_right_paw, sigma: 0.094}")]


def test_a_bad_value_leaves_the_spec_as_it_was(tmp_path):
    spec = tmp_path / "quadruped.yaml"
    shutil.copy(QUADRUPED, spec)
    before = spec.read_text()
    with pytest.raises(ValueError, match="sigma"):
        write_sigmas(spec, {"nose": 5.0})
    assert spec.read_text() == before
    assert not list(tmp_path.glob(".*.tmp"))


# --- a real Label Studio project with tasks labeled twice ------------------------------------------------------


@pytest.mark.integration
def test_estimate_sigmas_reads_double_labels_from_label_studio_and_writes_the_spec(label_studio, tmp_path):
    from conftest import settings_env

    from poseops.conversion.results import poses_to_results
    from poseops.datasets import create_dataset, project_of
    from poseops.labelstudio import LabelStudioClient

    spec = tmp_path / "quadruped.yaml"
    shutil.copy(QUADRUPED, spec)
    name = f"sigmas-{uuid.uuid4().hex[:8]}"
    data = images(12, per_image=1)
    with LabelStudioClient(label_studio) as client:
        create_dataset(client, label_studio, name, spec)
        project = project_of(client, name).id
        ids = client.import_tasks(project, [{"image": f"/data/upload/{project}/dog{i}.png"} for i in range(len(data))])
        for task_id, (annotations, width, height) in zip(ids, data, strict=True):
            for poses in annotations:
                client.create_annotation(task_id, poses_to_results(SKELETON, poses, int(width), int(height)))
    env = {**settings_env(label_studio), "POSEOPS_HOME": str(label_studio.home)}
    poseops = [str(Path(sys.executable).parent / "poseops"), "estimate-sigmas", name]
    shown = subprocess.run([*poseops, "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0, shown.stdout + shown.stderr
    result = json.loads(shown.stdout[shown.stdout.index("{"):shown.stdout.rindex("}") + 1])
    assert result["tasks"] == 12 and result["objects"] == 12
    assert all(k["samples"] == 12 and k["estimate"] > 0 for k in result["keypoints"])
    assert spec.read_text() == QUADRUPED.read_text()  # without --write the spec is unchanged
    written = subprocess.run([*poseops, "--write"], env=env, capture_output=True, text=True, timeout=120)
    assert written.returncode == 0, written.stdout + written.stderr
    estimates = {k["keypoint"]: k["estimate"] for k in result["keypoints"]}
    assert load_skeleton(spec).oks_sigmas == [estimates[n] for n in NAMES]

    too_few = subprocess.run([*poseops, "--min-objects", "50"], env=env, capture_output=True, text=True, timeout=120)
    assert too_few.returncode == 1 and "at least 50" in too_few.stderr


def test_plain_keypoint_names_become_mappings_with_their_sigma(tmp_path):
    spec = tmp_path / "mouse.yaml"
    spec.write_text("# points only\nclasses:\n  - name: mouse  # the animal\n    box: derived\n"
                    "    keypoints: [snout, tail]\n")
    write_sigmas(spec, {"snout": 0.04})
    text = spec.read_text()
    assert "# points only" in text and "# the animal" in text
    assert load_skeleton(spec).oks_sigmas == [0.04, load_skeleton(spec).oks_sigmas[1]]
