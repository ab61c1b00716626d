"""A pull with nothing changed, found before the Prefect flow starts.

`poseops pull NAME` asks here first (and the `pull-labels` flow, before any task run). With one Label
Studio client it reads every task of the project the last version came from (Label Studio's direct export:
one request, no export snapshot made) while it checks that project still bears the dataset's name (its
title alone, one small request), reads the skeleton spec and checks the version is whole; then it runs the
ready gate, finds every labeled image in the cache and compares the inputs' digest with the last version's
record (`poseops.pull.kept_version`). When that version was made of these very inputs and is whole, it is
the pull's result, and no flow runs: Prefect is not imported, no flow or task run is made (nor Prefect's
temporary server started when none runs). Anything else (the first pull, a changed label or image, an
image not cached yet, a project not ready, Label Studio not answering, `--no-version`) runs the
`pull-labels` flow as before, which does the whole pull with its retries and reports what fails.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poseops.errors import PoseopsError
from poseops.reports import PullSummary

if TYPE_CHECKING:
    from poseops.pull import PullOptions
    from poseops.pull_results import PullRecord

log = logging.getLogger(__name__)


def unchanged_pull(dataset: str, params_file: str = "params.yaml", allow_unlabeled: bool | None = None,
                   version: bool = True, commit: bool = True) -> dict[str, Any] | None:
    """The pull's summary (as the flow returns it) when nothing changed since the last version; None: run the flow."""
    summary = unchanged_summary(dataset, params_file, allow_unlabeled, version, commit)
    return summary.to_dict() if summary is not None else None


def unchanged_summary(dataset: str, params_file: str = "params.yaml", allow_unlabeled: bool | None = None,
                      version: bool = True, commit: bool = True) -> PullSummary | None:
    """`unchanged_pull`'s summary as a `PullSummary`."""
    from poseops import pull as steps
    from poseops.params import load_params
    from poseops.safepaths import check_dataset_name, inside_project

    options = steps.pull_options(load_params(params_file, missing_ok=True).pull, allow_unlabeled=allow_unlabeled,
                                 version=version, commit=commit)
    check_dataset_name(dataset)  # refused as the flow refuses them, before any path is made of them
    inside_project(options.data_root, "pull.data_root")
    last = steps.last_record(options.data_root / dataset) if options.version else None
    if last is None or last.inputs_sha256 is None or last.dvc_md5 is None:  # no version to keep: build one
        return None
    try:
        return _kept_summary(dataset, options, last)
    except PoseopsError as e:  # not ready, Label Studio not answering, ...: the flow tries again and says why
        log.debug("pull of %s: %s; running the flow", dataset, e)
        return None


def _kept_summary(dataset: str, options: PullOptions, last: PullRecord) -> PullSummary | None:
    """The tasks of the project the last version came from, exported while that project's title is checked
    against the dataset's name (one small request: a deleted or renamed project sends the pull to the flow,
    which looks the name up), the skeleton spec read and the version checked whole; None when anything
    changed."""
    from concurrent.futures import ThreadPoolExecutor

    from poseops import pull as steps
    from poseops.datasets import load_record
    from poseops.labelstudio import LabelStudioClient
    from poseops.settings import load_settings

    settings = load_settings()
    project = f"/api/projects/{last.label_studio_project_id}"
    with LabelStudioClient(settings, retries=0) as client, ThreadPoolExecutor(3) as pool:
        export = pool.submit(steps.export_tasks, client, last.label_studio_project_id)
        named = pool.submit(client.json, "GET", project, params={"include": "id,title"})  # its title only: no counts
        whole = pool.submit(steps.whole_version, options.data_root / dataset, options, last)
        skeleton = load_record(settings, dataset).skeleton_spec()
        if whole.result() is None or named.result().get("title") != dataset:
            return None  # damaged, not committed; or the project renamed (another may bear the name): the flow decides
        snapshot = export.result()
    ready = steps.check_ready(snapshot.tasks, options, dataset, skeleton)
    images = cached_images(ready.labeled, settings.home / "cache" / "images")
    if images is None:
        return None
    kept = steps.kept_version(dataset, skeleton, options, snapshot, ready, images, say=log.info, whole=whole.result())
    return PullSummary.of(kept, 0) if kept is not None else None


def cached_images(tasks: list[dict], cache_dir: Path) -> dict[int, Path] | None:
    """Each task's image from the image cache, without a request; None when any is not there."""
    from poseops.imagecache import ImageCache

    cache = ImageCache(cache_dir)
    images = {}
    for task in tasks:
        if (path := cache.lookup(task)) is None:
            return None
        images[task["id"]] = path
    return images
