"""Every flow's artifact, rendered from real results (offline): no table is silently empty.

The pull's artifact once read `keypoint_counts` where the report wrote `keypoints_per_label`,
so its per-keypoint table never showed; summaries are typed now, and this renders each one.
"""

from __future__ import annotations

from pathlib import Path

from conftest import PERSON_SPEC, SHARED_DATASETS

from poseops import coco
from poseops.autolabel import AutolabelReport
from poseops.convert import convert_export
from poseops.pull_results import DatasetManifest, PullRecord, PullResult
from poseops.reports import (
    AutolabelSummary,
    DeploySummary,
    LoopSummary,
    PullSummary,
    artifact_key,
    autolabel_markdown,
    deploy_markdown,
    loop_markdown,
    pull_markdown,
)
from poseops.skeleton import load_skeleton

COCO_JSON = SHARED_DATASETS / "coco-mini-train" / "annotations" / "person_keypoints_train2017.json"
PERSON = load_skeleton(PERSON_SPEC)


def real_pull(tmp_path: Path) -> PullResult:
    """A pull's result around a real conversion of the COCO labels (one keypoint with a label the spec lacks)."""
    images = coco.read_coco_keypoints(COCO_JSON, skeleton=PERSON)
    tasks = coco.to_label_studio_tasks(PERSON, images)
    odd = next(r for t in tasks for r in t["annotations"][0]["result"] if r["type"] == "keypointlabels")
    odd["value"]["keypointlabels"] = ["tail"]  # not in the person spec: a problem the artifact lists
    report = convert_export(tasks, PERSON, {t["id"]: i.path for t, i in zip(tasks, images, strict=True)},
                            tmp_path / "ds", val_fraction=0.25)
    record = PullRecord("people", "http://127.0.0.1:8080", 3, 17, "2026-11-25T12:00:00+00:00", len(tasks),
                        len(tasks), [], [], dvc_md5="0" * 32 + ".dir")
    return PullResult(tmp_path / "ds", DatasetManifest("people", 3, len(tasks), report), record,
                      warnings=["1 region(s) changed"], dvc_md5=record.dvc_md5, pushed=True, git_commit="abc123")


def test_the_pull_artifact_shows_the_labeled_keypoints_and_the_problems(tmp_path):
    result = real_pull(tmp_path)
    summary = PullSummary.of(result, downloaded_images=12)
    markdown = pull_markdown(summary)
    counts = result.dataset_manifest.conversion.keypoints
    assert sum(counts.values()) > 700 and len(counts) == 17
    for name, count in counts.items():
        assert f"| {name} | {count} |" in markdown
    assert "| train / val images |" in markdown and "| images downloaded (the rest from the cache) | 12 |" in markdown
    problems = result.dataset_manifest.conversion.problems
    assert problems and f"### Dropped or refused ({len(problems)})" in markdown
    assert "> warning: 1 region(s) changed" in markdown
    flat = summary.to_dict()  # the flow's JSON result keeps the record's and the manifest's keys
    assert flat["conversion"]["keypoints_per_label"] == counts and flat["export_snapshot_id"] == 17
    assert flat["dvc_md5"] == result.dvc_md5 and flat["train_images"] + flat["val_images"] == 80


def test_the_autolabel_deploy_and_loop_artifacts_render_every_row():
    report = AutolabelReport("poseops-pose:3", predicted={11: 0.91, 12: 0.35, 13: 0.6}, failed={14: "OSError: bad"})
    summary = AutolabelSummary("people", report.model_version, len(report.predicted), report.failed, 2, 1,
                               sorted(report.predicted.items(), key=lambda kv: kv[1]))
    markdown = autolabel_markdown(summary)
    rows = [line for line in markdown.splitlines() if line.startswith("| 1")]
    assert rows == ["| 12 | 0.350 |", "| 13 | 0.600 |", "| 11 | 0.910 |"]  # least confident first
    assert "**3** task(s)" in markdown and "- task 14 failed: OSError: bad" in markdown
    deployed = deploy_markdown(DeploySummary("models:/p@champion", "p:3", "r" * 32, "poseops:abc", "http://h:1", "/x"))
    assert "`p:3` (models:/p@champion)" in deployed and "`poseops:abc`" in deployed
    loop = LoopSummary("people", [("pull labels", "dataset version d1"), ("train", "model version 3")], "completed")
    assert loop_markdown(loop).splitlines()[-2:] == ["| pull labels | dataset version d1 |", "| train | model version 3 |"]
    assert artifact_key("pull", "My_Dataset.v2") == "pull-my-dataset-v2"
