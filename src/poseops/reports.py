"""What each flow reports: a typed summary, its Markdown (the Prefect artifact) and its JSON.

A flow's return value is the summary's `to_dict()`, JSON data that Prefect can keep as
the run's result; the artifact is rendered from the typed summary, so a field renamed on
one side cannot silently empty a table on the other.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from poseops.pull_results import PullResult


def artifact_key(prefix: str, name: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", f"{prefix}-{name}".lower())).strip("-")


def _table(rows: list[tuple[str, Any]]) -> list[str]:
    return ["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]]


# --- pull ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PullSummary:
    dataset: str
    dataset_dir: str
    label_studio_url: str
    label_studio_project_id: int
    export_snapshot_id: int
    tasks: int
    labeled_tasks: int
    train_images: int
    val_images: int
    keypoints_per_label: dict[str, int]
    problems: list[str]
    warnings: list[str]
    dvc_md5: str | None
    pushed: bool
    git_commit: str | None
    downloaded_images: int
    unchanged: bool = False  # the labels and images of the last version: nothing rebuilt, no new version
    record: dict[str, Any] = field(default_factory=dict)  # the pull record as written beside the dataset
    manifest: dict[str, Any] = field(default_factory=dict)  # the dataset's manifest.json
    label_checks: dict[str, Any] = field(default_factory=dict)  # poseops.labelchecks.LabelChecks.to_dict()

    @classmethod
    def of(cls, result: PullResult, downloaded_images: int) -> PullSummary:
        record, manifest = result.pull_record, result.dataset_manifest
        return cls(
            dataset=record.dataset, dataset_dir=str(result.dataset_dir), label_studio_url=record.label_studio_url,
            label_studio_project_id=record.label_studio_project_id, export_snapshot_id=record.export_snapshot_id,
            tasks=record.tasks, labeled_tasks=record.labeled_tasks, train_images=manifest.train_images,
            val_images=manifest.val_images, keypoints_per_label=dict(manifest.conversion.keypoints),
            problems=[f"task {p.task_id}: {p.message}" for p in manifest.conversion.problems],
            warnings=list(result.warnings), dvc_md5=result.dvc_md5, pushed=result.pushed,
            git_commit=result.git_commit, downloaded_images=downloaded_images, unchanged=result.unchanged,
            record=result.record,
            manifest=result.manifest)

    def to_dict(self) -> dict[str, Any]:
        """The flow's result: the pull record and the manifest, with where the dataset went."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("record", "manifest")}
        return {**self.record, **fields, **self.manifest}


def pull_markdown(s: PullSummary) -> str:
    kept = ["**No change since the last pull**: this version was kept, nothing rebuilt.", ""] if s.unchanged else []
    lines = ["## Pulled labels", "", *kept, *_table([
        ("dataset", s.dataset),
        ("DVC version (md5)", s.dvc_md5),
        ("Label Studio project", f"{s.label_studio_url}/projects/{s.label_studio_project_id}"),
        ("export snapshot", s.export_snapshot_id),
        ("tasks / labeled", f"{s.tasks} / {s.labeled_tasks}"),
        ("train / val images", f"{s.train_images} / {s.val_images}"),
        ("images downloaded (the rest from the cache)", s.downloaded_images),
        ("git commit", s.git_commit),
        ("pushed to the DVC remote", s.pushed),
    ])]
    if s.keypoints_per_label:
        lines += ["", "### Labeled keypoints", "", "| keypoint | count |", "|---|---|",
                  *[f"| {k} | {v} |" for k, v in s.keypoints_per_label.items()]]
    if s.problems:
        lines += ["", f"### Dropped or refused ({len(s.problems)})", "", *[f"- {p}" for p in s.problems[:100]]]
    lines += _label_checks_markdown(s.label_checks, f"{s.label_studio_url}/projects/{s.label_studio_project_id}")
    lines += [line for w in s.warnings for line in ("", f"> warning: {w}")]
    return "\n".join(lines) + "\n"


def _label_checks_markdown(checks: dict[str, Any], project_url: str) -> list[str]:
    """The label checks' section: each flagged task linked to Label Studio, with what was found."""
    if not checks:
        return []
    flags = checks.get("flags", [])
    lines = ["", f"### Label checks: {len(checks.get('flagged_tasks', []))} of {checks.get('checked_tasks', 0)} "
             "labeled task(s) flagged", "",
             "Tagged in Label Studio: filter the Data Manager on the column `poseops_checks`.", ""]
    if flags:
        lines += ["| task | object | check | what |", "|---|---|---|---|"]
        lines += [f"| [{f['task_id']}]({project_url}/data?task={f['task_id']}) | {f['class_name']} #{f['object_index'] + 1} "
                  f"| {f['check']} | {f['detail']} |" for f in flags[:200]]
    lines += [f"- {note}" for note in checks.get("notes", [])]
    return lines


# --- autolabel -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class AutolabelSummary:
    dataset: str
    model_version: str
    predicted: int
    failed: dict[int, str]
    skipped_labeled: int
    skipped_done: int
    least_confident: list[tuple[int, float]]  # (task id, score), lowest first
    score: str = "confidence"  # what the scores measure (params autolabel.score, poseops.scores)
    diversity_quota: int = 0  # near-identical pictures per tier of the queue (poseops.diversity); 0: none
    moved_back: int = 0  # tasks the quota moved back (their score + their tier)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SCORE_MEANS = {"confidence": "mean detection confidence", "min_keypoint": "least confident keypoint",
               "flip": "agreement with the mirror image's prediction",
               "temporal": "agreement with the neighbouring frames' predictions (flip for non-video images)"}


def autolabel_markdown(s: AutolabelSummary) -> str:
    lines = [
        "## Autolabel", "",
        f"Model version **{s.model_version}** pre-labeled **{s.predicted}** task(s) of `{s.dataset}`; "
        f"{s.skipped_labeled} already labeled, {s.skipped_done} already pre-labeled by this version, "
        f"{len(s.failed)} failed.", "",
        "The project now serves the **least confident tasks first** (Label Studio's uncertainty sampling): "
        "fixing those teaches the next model the most.", "",
        f"| task | score ({SCORE_MEANS.get(s.score, s.score)}) |", "|---|---|",
        *[f"| {task_id} | {score:.3f} |" for task_id, score in s.least_confident],
    ]
    if s.diversity_quota:
        lines += ["", f"Diversity quota: at most {s.diversity_quota} near-identical pictures before the queue moves on; "
                  f"{s.moved_back} task(s) moved back (score + 1 per quota of near-identical tasks before them).", ""]
    lines += [f"- task {task_id} failed: {why}" for task_id, why in list(s.failed.items())[:50]]
    return "\n".join(lines) + "\n"


# --- deploy -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeploySummary:
    model_uri: str
    model: str
    run_id: str
    bento: str
    url: str
    files: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def deploy_markdown(s: DeploySummary) -> str:
    return "\n".join(["## Deployed", "", *_table([
        ("model", f"`{s.model}` ({s.model_uri})"),
        ("MLflow run", f"`{s.run_id}`"),
        ("Bento", f"`{s.bento}`"),
        ("service", f"{s.url} (playground {s.url}/, docs {s.url}/docs)"),
    ])]) + "\n"


# --- the loop -----------------------------------------------------------------------------------


@dataclass
class LoopSummary:
    dataset: str
    steps: list[tuple[str, str]] = field(default_factory=list)  # (step, what happened)
    outcome: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def loop_markdown(s: LoopSummary) -> str:
    lines = [f"## Improvement loop: {s.outcome}", "", "| step | result |", "|---|---|"]
    lines += [f"| {step} | {result} |" for step, result in s.steps]
    return "\n".join(lines) + "\n"
