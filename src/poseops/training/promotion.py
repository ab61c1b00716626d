"""Promotion: move the `champion` alias to a version when it is good enough and at least as good as the
champion of the same dataset and skeleton (not a DVC stage: it changes the registry, not files)."""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from poseops.params import Params
from poseops.skeleton import load_skeleton
from poseops.tracking.registry import download, resolve_model_uri, set_version_tags, version_for_alias
from poseops.tracking.runs import set_tags
from poseops.tracking.store import client
from poseops.training.dataset import read_dataset_info, skeleton_fingerprint
from poseops.training.evaluation import eval_key, validate
from poseops.training.init_weights import find_weights
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


def promote(params: Params, root: Path = Path("."), layout: Layout = Layout(), version: str | None = None,
            mlc=None) -> Promotion:
    """Compare a version with the alias holder on the current val split; move the alias when the rule holds.

    Both figures come from the versions' own evaluation when it was made on the same split and
    settings (`eval_key`), else from evaluating their weights now. Both are recorded as tags on
    the candidate version and its run.
    """
    root = root.resolve()
    lay = layout.under(root)
    mlc = mlc or client(must_exist=True)  # promoting needs the runs: a missing store is an error, not a new one
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
        cand_value = figure(candidate)
        champ_value = figure(champion) if champion is not None and mismatch is None else None
    result = decide(params, str(candidate.version), cand_value,
                    str(champion.version) if champion is not None else None, champ_value, mismatch)
    tags = {
        "promotion.metric": metric, "promotion.candidate_value": f"{cand_value:.6f}",
        "promotion.champion_version": result.champion_version or "none",
        "promotion.champion_value": f"{champ_value:.6f}" if champ_value is not None else "none",
        "promotion.min_improvement": params.promote.min_improvement, "promotion.min_metric": params.promote.min_metric,
        "promotion.eval_key": key, "promotion.skeleton": cand_kind.skeleton,
        "promotion.decision": "promoted" if result.promoted else "kept", "promotion.reason": result.reason,
        "promotion.time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    set_version_tags(mlc, name, str(candidate.version), tags)
    if candidate.run_id:
        set_tags(mlc, candidate.run_id, tags)
    if result.promoted:
        mlc.set_registered_model_alias(name, alias, str(candidate.version))
    return result


def decide(params: Params, candidate: str, cand_value: float, champion: str | None, champ_value: float | None,
           mismatch: str | None = None) -> Promotion:
    """The decision and its reason in words.

    Never below `promote.min_metric` (champion or not), never against a champion of another dataset or
    skeleton (`mismatch`, from `kind_mismatch`), else the rule of `better_enough`.
    """
    p = params.promote
    alias, metric, margin, floor = p.alias, p.metric, p.min_improvement, p.min_metric
    promoted = False
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
    return Promotion(promoted, reason, metric, candidate, cand_value, champion, champ_value, margin, floor)


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
    """A version's promotion metric on the current eval setting: from its tags when comparable, else measured."""

    def __init__(self, params: Params, lay: Layout, key: str, metric: str, tmp: Path):
        self.params, self.lay, self.key, self.metric, self.tmp = params, lay, key, metric, tmp

    def __call__(self, mv) -> float:
        if mv.tags.get("eval_key") == self.key and f"metrics.{self.metric}" in mv.tags:
            return float(mv.tags[f"metrics.{self.metric}"])
        local = download(f"models:/{mv.name}/{mv.version}", self.tmp / f"v{mv.version}")
        data_yaml = resolved_data_yaml(self.lay.prepared / "data.yaml", self.tmp / "data.yaml")
        return validate(find_weights(local, f"models:/{mv.name}/{mv.version}"), data_yaml, self.params,
                        self.tmp / f"val-v{mv.version}")[self.metric]
