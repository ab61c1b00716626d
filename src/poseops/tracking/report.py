"""A training run's Markdown summary: a link to the run, its final metrics, its version and promotion."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from poseops.tracking.metrics import SUMMARY_METRICS, WARNING_TAG, ZERO_POSE_TAG
from poseops.tracking.store import run_url


def report_markdown(mlc, run_id: str, metrics: Mapping[str, float], version: str | None = None,
                    model_name: str | None = None, promotion: Mapping[str, Any] | None = None) -> str:
    """A short Markdown summary of a training run: a link to it, its final metrics, its version and promotion."""
    run = mlc.get_run(run_id)
    lines = [f"## Training run [{run.info.run_name}]({run_url(mlc, run_id)})", "",
             f"MLflow run `{run_id}` ({run.info.status}), dataset `{run.data.tags.get('poseops.dataset')}` "
             f"`{run.data.tags.get('poseops.dataset_dvc_hash')}`, git `{run.data.tags.get('git_commit', 'none')[:12]}`.", ""]
    parent = run.data.tags.get("poseops.parent_model_version")
    if parent:
        lines += [f"Fine-tuned from `{parent}`.", ""]
    lines += ["| metric (val split) | value |", "| --- | --- |"]
    lines += [f"| {k} | {metrics[k]:.4f} |" for k in (*SUMMARY_METRICS, *sorted(set(metrics) - set(SUMMARY_METRICS)))
              if k in metrics]
    if run.data.tags.get(ZERO_POSE_TAG) == "true":
        lines += ["", f"**Warning:** {run.data.tags.get(WARNING_TAG, 'every pose metric is 0')}."]
    if version:
        lines += ["", f"Registered as `models:/{model_name}/{version}`."]
    if promotion:
        verdict = "promoted to" if promotion["promoted"] else "not promoted to"
        lines += [f"Version {promotion['candidate_version']} {verdict} the champion: {promotion['reason']}."]
    return "\n".join(lines) + "\n"
