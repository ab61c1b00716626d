"""The MLflow model registry: versions registered all or nothing, `models:/` URIs, aliases, downloads."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poseops.tracking.runs import text
from poseops.tracking.store import TrackingError


@dataclass(frozen=True)
class VersionRef:
    name: str
    version: str
    run_id: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def register_version(mlc, name: str, run_id: str, artifact_path: str, tags: Mapping[str, Any],
                     description: str = "") -> VersionRef:
    """Register the run's `artifact_path` as a new version of `name`, with its tags, all or nothing.

    A failure after the version exists (tagging, waiting for READY) deletes it again, so
    no half-registered version is left behind.
    """
    from mlflow.exceptions import MlflowException

    try:
        mlc.get_registered_model(name)
    except MlflowException:
        mlc.create_registered_model(name, description="Pose models trained by poseops (YOLO-pose).")
    version = mlc.create_model_version(name, source=f"runs:/{run_id}/{artifact_path}", run_id=run_id,
                                       description=description)
    try:
        set_version_tags(mlc, name, str(version.version), tags)
        status = mlc.get_model_version(name, version.version).status
        if status != "READY":
            raise TrackingError(f"model version {name}/{version.version} is {status}, not READY")
    except BaseException:
        mlc.delete_model_version(name, version.version)
        raise
    return VersionRef(name, str(version.version), run_id)


def version_for_alias(mlc, name: str, alias: str):
    """The model version an alias points to, or None when the model or alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return mlc.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def set_version_tags(mlc, name: str, version: str, tags: Mapping[str, Any]) -> None:
    """Set the model version's tags whose value is not None, as text."""
    for key, value in tags.items():
        if value is not None:
            mlc.set_model_version_tag(name, version, key, text(value))


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """`models:/name@alias` → (name, alias, None); `models:/name/3` → (name, None, "3")."""
    from poseops.params import MODEL_URI

    m = MODEL_URI.match(uri)
    if not m:
        raise TrackingError(f"{uri!r} is not models:/<name>@<alias> or models:/<name>/<version>")
    return m["name"], m["alias"], m["version"]


def resolve_model_uri(mlc, uri: str):
    """The ModelVersion a `models:/` URI names; a clear error when it does not exist."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_model_uri(uri)
    try:
        return mlc.get_model_version_by_alias(name, alias) if alias else mlc.get_model_version(name, version)
    except MlflowException:
        what = f"alias {alias!r}" if alias else f"version {version}"
        raise TrackingError(f"{uri}: registered model {name!r} has no {what} in {mlc.tracking_uri}; "
                            "train and promote a model first, or name an existing version") from None


def download(uri: str, dest: Path) -> Path:
    """The artifacts a `runs:/` or `models:/` URI names, downloaded into `dest` (created)."""
    import mlflow.artifacts

    dest.mkdir(parents=True, exist_ok=True)
    return Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dest)))
