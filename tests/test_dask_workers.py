"""Autolabel on a real two-worker Dask cluster whose workers share no poseops home: each has its own
POSEOPS_HOME (so its own image cache, and no dataset records), as workers on other machines would."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_autolabel import make_dataset

from poseops.labelstudio import LabelStudioClient


def cached_urls(home: Path) -> dict[str, str]:
    """A home's image cache index: image URL → content hash."""
    index = home / "cache" / "images" / "urls.json"
    return json.loads(index.read_text()) if index.is_file() else {}


@pytest.mark.integration
def test_autolabel_on_two_dask_workers_with_their_own_homes(prefect_api, workspace, label_studio, tmp_path):
    from distributed import Client, LocalCluster, WorkerPlugin

    from poseops.flows.autolabel import autolabel

    class OwnHome(WorkerPlugin):
        """POSEOPS_HOME = <base>/<worker name> in each worker: nothing on disk shared with the driver or each other."""

        def __init__(self, base: str):
            self.base = base

        def setup(self, worker):
            import os

            home = Path(self.base) / str(worker.name)
            home.mkdir(parents=True, exist_ok=True)
            os.environ["POSEOPS_HOME"] = str(home)

    base = tmp_path / "workers"
    name, images = make_dataset(label_studio, labeled=0)
    with LabelStudioClient(label_studio) as client:
        project = client.find_project(name)
        urls = {t["id"]: t["data"]["image"] for t in client.iter_tasks(project.id)}
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as dask:
        dask.register_plugin(OwnHome(str(base)))
        homes = dask.run(lambda: __import__("os").environ["POSEOPS_HOME"])
        assert len(set(homes.values())) == 2 and all(Path(h).parent == base for h in homes.values())
        (workspace / "params.yaml").write_text(
            f"autolabel:\n  task_runner: dask\n  dask_address: {cluster.scheduler_address}\n  batch_size: 1\n")
        summary = autolabel(dataset=name, weights="yolo11n-pose.pt")

    assert summary["predicted"] == 4 and summary["failed"] == {}
    with LabelStudioClient(label_studio) as client:
        for task in client.iter_tasks(project.id):  # each task got its prediction, once
            assert [p["model_version"] for p in task["predictions"]].count(summary["model_version"]) == 1, task["id"]
    # every image was downloaded by the worker that needed it, into that worker's own cache
    per_worker = {Path(h): cached_urls(Path(h)) for h in homes.values()}
    print(f"\nimages cached per worker: { {h.name: len(c) for h, c in per_worker.items()} }")
    assert set().union(*per_worker.values()) == set(urls.values())
    assert all(per_worker.values()), "both workers took batches"
    assert not set(urls.values()) & set(cached_urls(label_studio.home))  # the driver's cache was never used
    for home, cache in per_worker.items():
        for url, sha in cache.items():
            assert list((home / "cache" / "images" / sha[:2]).glob(f"{sha}.*")), f"{url} indexed, not cached in {home}"
