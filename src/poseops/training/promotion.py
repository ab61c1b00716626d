"""Promotion: move the `champion` alias to a version when it is good enough, at least as good as the
champion of the same dataset and skeleton, and no keypoint fell behind the champion's (the keypoint guard)
(not a DVC stage: it changes the registry, not files)."""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from poseops.params import Params
from poseops.skeleton import load_skeleton
from poseops.tracking.registry import download, resolve_model_uri, set_version_tags, version_for_alias
from poseops.tracking.runs import set_tags
from poseops.tracking.store import client
from poseops.training.dataset import read_dataset_info, skeleton_fingerprint
from poseops.training.evaluation import KEYPOINT_REPORT, eval_key, score_keypoints, validate_poses
from poseops.training.gallery import task_links
from poseops.training.init_weights import find_weights
from poseops.training.keypoint_guard import (
    ImageDiff,
    KeypointComparison,
    compare_keypoints,
    image_differences,
    promotion_markdown,
)
from poseops.training.keypoint_metrics import KeypointReport
from poseops.training.layout import MODEL_ARTIFACTS, Layout, TrainingError, resolved_data_yaml
from poseops.training.register import read_version


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str
    metric: str
    candidate_version: str
    candidate_value: float
    champion_version: str | None
    champion_value: float | None
    min_improvement: float
    min_metric: float = 0.0
    keypoint_guard: str = "off"  # promote.keypoint_guard: refuse | flag | off
    flagged: str | None = None  # promoted although the keypoint guard objected (keypoint_guard: flag)
    keypoints: KeypointComparison | None = None  # per keypoint, champion vs candidate (same val split)
    image_diffs: tuple[ImageDiff, ...] = ()  # the val images whose OKS differs most between the two


@dataclass(frozen=True)
class ModelKind:
    """What a model was trained for: its dataset (by name) and its skeleton (`skeleton_fingerprint`)."""

    dataset: str
    skeleton: str  # "unknown" when neither a tag nor the version's skeleton.yaml says

    def __str__(self) -> str:
        return f"dataset {self.dataset!r}, skeleton {self.skeleton}"


def better_enough(candidate: float, champion: float | None, min_improvement: float) -> bool:
    """The promotion rule: no champion yet, or candidate ≥ champion + min_improvement (0: at least as good)."""
    return champion is None or candidate >= champion + min_improvement - 1e-9


PROMOTE_WAIT_S = 3600.0  # how long a promotion waits for another one of the same model (it evaluates both)


def promote(params: Params, root: Path = Path("."), layout: Layout = Layout(), version: str | None = None,
            mlc=None) -> Promotion:
    """Compare a version with the alias holder on the current val split; move the alias when the rule holds.

    Both figures come from the versions' own evaluation when it was made on the same split and
    settings (`eval_key`), else from evaluating their weights now. Both are recorded as tags on
    the candidate version and its run. Promotions of one model run one at a time, from reading the
    champion to moving the alias (`poseops.locks`, `champion-<model>`, across machines on the server
    profile): a second one waits, then compares with the champion the first left, so two trainings
    never promote two champions at once.
    """
    from poseops.locks import exclusive, machine_lock_file

    mlc = mlc or client(must_exist=True)  # promoting needs the runs: a missing store is an error, not a new one
    name = params.mlflow.registered_model
    with exclusive(None, f"champion-{name}", wait_s=PROMOTE_WAIT_S, what=f"promoting a version of {name!r}",
                   lock_file=machine_lock_file(f"{getattr(mlc, 'tracking_uri', '')}|champion-{name}")):
        return _compare_and_move(params, root, layout, version, mlc)


def _compare_and_move(params: Params, root: Path, layout: Layout, version: str | None, mlc) -> Promotion:
    """`promote` inside its lock."""
    root = root.resolve()
    lay = layout.under(root)
    name, alias, metric = params.mlflow.registered_model, params.promote.alias, params.promote.metric
    version = version or read_version(lay).version
    candidate = resolve_model_uri(mlc, f"models:/{name}/{version}")
    champion = version_for_alias(mlc, name, alias)
    dataset = read_dataset_info(lay)
    key = eval_key(params, dataset)
    with tempfile.TemporaryDirectory(prefix="poseops-promote-") as tmp:
        here = ModelKind(params.dataset.name, dataset.skeleton.get("fingerprint")
                         or skeleton_fingerprint(load_skeleton(root / params.skeleton)))
        cand_kind = model_kind(candidate, Path(tmp))
        if cand_kind != here:
            raise TrainingError(f"version {candidate.version} of {name} was trained for {cand_kind}, but this "
                                f"workspace evaluates {here}: promote it from a workspace of its dataset and skeleton")
        champ_kind = model_kind(champion, Path(tmp)) if champion is not None else None
        mismatch = kind_mismatch(cand_kind, champ_kind, alias, str(champion.version) if champion else "")
        figure = _Figure(params, lay, key, metric, Path(tmp))
        compared = champion is not None and mismatch is None and str(champion.version) != str(candidate.version)
        cand_value, cand_report = figure(candidate, report=compared)
        champ_value, champ_report = figure(champion, report=compared) if compared else (None, None)
        if champion is not None and mismatch is None and not compared:
            champ_value = cand_value  # the candidate already is the champion
    comparison = compare_keypoints(cand_report, champ_report, params.promote.max_keypoint_drop) \
        if cand_report and champ_report else None
    result = decide(params, str(candidate.version), cand_value,
                    str(champion.version) if champion is not None else None, champ_value, mismatch, comparison)
    if comparison is not None:
        diffs = image_differences(cand_report, champ_report, task_links(dataset), params.evaluate.gallery_images)
        result = replace(result, keypoints=comparison, image_diffs=tuple(diffs))
    tags = {
        "promotion.metric": metric, "promotion.candidate_value": f"{cand_value:.6f}",
        "promotion.champion_version": result.champion_version or "none",
        "promotion.champion_value": f"{champ_value:.6f}" if champ_value is not None else "none",
        "promotion.min_improvement": params.promote.min_improvement, "promotion.min_metric": params.promote.min_metric,
        "promotion.eval_key": key, "promotion.skeleton": cand_kind.skeleton,
        "promotion.decision": "promoted" if result.promoted else "kept", "promotion.reason": result.reason,
        "promotion.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "promotion.keypoint_guard": result.keypoint_guard,
        "promotion.keypoint_regressions": ",".join(comparison.regressed) or "none" if comparison else None,
        "promotion.flagged": result.flagged,
    }
    set_version_tags(mlc, name, str(candidate.version), {k: v for k, v in tags.items() if v is not None})
    if candidate.run_id:
        set_tags(mlc, candidate.run_id, tags)
        if comparison is not None:  # the per-keypoint comparison and the images that differ most, in the run
            mlc.log_dict(candidate.run_id, asdict(result), "promotion/promotion.json")
            mlc.log_text(candidate.run_id, promotion_markdown(asdict(result)), "promotion/comparison.md")
    if result.promoted:
        mlc.set_registered_model_alias(name, alias, str(candidate.version))
    return result


def decide(params: Params, candidate: str, cand_value: float, champion: str | None, champ_value: float | None,
           mismatch: str | None = None, keypoints: KeypointComparison | None = None) -> Promotion:
    """The decision and its reason in words.

    Never below `promote.min_metric` (champion or not), never against a champion of another dataset or
    skeleton (`mismatch`, from `kind_mismatch`), else the rule of `better_enough`, and then the keypoint
    guard: a keypoint whose PCK fell more than `promote.max_keypoint_drop` below the champion's
    (`keypoints`) refuses the candidate (`promote.keypoint_guard: refuse`) or flags it (`flag`).
    """
    p = params.promote
    alias, metric, margin, floor = p.alias, p.metric, p.min_improvement, p.min_metric
    promoted, flagged = False, None
    if champion is not None and champion == candidate:
        reason = f"version {candidate} already is {alias}"
    elif cand_value < floor - 1e-9:
        reason = (f"{metric} {cand_value:.4f} < promote.min_metric {floor}: too poor to serve, "
                  f"{'no ' + alias + ' yet' if champion is None else alias + ' stays version ' + champion}")
    elif mismatch is not None:
        reason = mismatch
    else:
        promoted = better_enough(cand_value, champ_value, margin)
        if champ_value is None:
            reason = f"no {alias} yet, {metric} {cand_value:.4f} ≥ promote.min_metric {floor}"
        else:
            rel = "≥" if promoted else "<"
            reason = f"{metric} {cand_value:.4f} {rel} {champ_value:.4f} + {margin}"
            why = keypoints.reason() if keypoints is not None and p.keypoint_guard != "off" else None
            if why and promoted and p.keypoint_guard == "refuse":
                promoted, reason = False, f"{reason}, but {why}: refused (promote.keypoint_guard: refuse)"
            elif why and promoted:
                flagged, reason = why, f"{reason}; flagged (promote.keypoint_guard: flag): {why}"
            elif why:
                reason = f"{reason}; also {why}"
    return Promotion(promoted, reason, metric, candidate, cand_value, champion, champ_value, margin, floor,
                     p.keypoint_guard, flagged)


def kind_mismatch(candidate: ModelKind, champion: ModelKind | None, alias: str, champion_version: str) -> str | None:
    """Why the candidate may not compete with the champion (another dataset or skeleton), or None."""
    if champion is None or champion == candidate:
        return None
    return (f"the {alias} (version {champion_version}) was trained for {champion}, this version for {candidate}: "
            "models of different datasets or skeletons never compete; give each dataset its own registered "
            "model (mlflow.registered_model), or move the alias by hand")


def model_kind(mv, tmp: Path) -> ModelKind:
    """A version's dataset and skeleton from its tags; the skeleton from its skeleton.yaml when untagged."""
    fingerprint = mv.tags.get("skeleton_fingerprint")
    if not fingerprint and mv.run_id:
        try:
            spec = download(f"runs:/{mv.run_id}/{MODEL_ARTIFACTS}/skeleton.yaml", tmp / f"spec-v{mv.version}")
            fingerprint = skeleton_fingerprint(load_skeleton(spec))
        except Exception:  # noqa: BLE001 - not downloadable or not a spec: the skeleton is unknown
            fingerprint = None
    return ModelKind(mv.tags.get("dataset") or "unknown", fingerprint or "unknown")


class _Figure:
    """A version's promotion metric (and per-keypoint report) on the current eval setting: from its tags and
    its run's evaluation when comparable, else measured now."""

    def __init__(self, params: Params, lay: Layout, key: str, metric: str, tmp: Path):
        self.params, self.lay, self.key, self.metric, self.tmp = params, lay, key, metric, tmp

    def __call__(self, mv, report: bool = False) -> tuple[float, KeypointReport | None]:
        if mv.tags.get("eval_key") == self.key and f"metrics.{self.metric}" in mv.tags:
            recorded = self._recorded_report(mv) if report else None
            if recorded is not None or not report:
                return float(mv.tags[f"metrics.{self.metric}"]), recorded
        local = download(f"models:/{mv.name}/{mv.version}", self.tmp / f"v{mv.version}")
        data_yaml = resolved_data_yaml(self.lay.prepared / "data.yaml", self.tmp / "data.yaml")
        metrics, poses = validate_poses(find_weights(local, f"models:/{mv.name}/{mv.version}"), data_yaml,
                                        self.params, self.tmp / f"val-v{mv.version}")
        scored = score_keypoints(poses, data_yaml, self.params.evaluate.match_conf) if report else None
        return metrics[self.metric], scored

    def _recorded_report(self, mv) -> KeypointReport | None:
        """The per-keypoint report the version's evaluate stage logged, or None (a version evaluated before)."""
        if not mv.run_id:
            return None
        try:
            path = download(f"runs:/{mv.run_id}/eval/{KEYPOINT_REPORT}", self.tmp / f"kp-v{mv.version}")
            return KeypointReport.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except Exception:  # noqa: BLE001 - not logged (an older version): measured instead
            return None
