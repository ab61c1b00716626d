"""Pull time when nothing changed, against the first pull and the bare export, in one run.

    python -m benchmarks.pull_nochange [--images 40] [--label-studio-url URL --token TOKEN]

A Label Studio project with up to `--images` labeled images (coco-mini-train with its COCO
keypoint labels) is pulled three ways in a fresh git + DVC workspace:
1. the first pull: export, image download, conversion, `dvc add`, `dvc push`, git commit;
2. export only: Label Studio's export snapshot created and downloaded (what a pull's export step does: the
   baseline), and for reference the direct export the no-change check reads the tasks with (one request);
3. pulls with nothing changed as `poseops pull` runs them: found unchanged before any flow run
   (`poseops.pull_unchanged`), nothing rebuilt; and
4. the same through the `pull-labels` flow itself (as a scheduled deployment runs it), which finds the
   version unchanged too; 2, 3 and 4 in turn (`interleaved`), `--repeat` times, medians.
Without --label-studio-url a Label Studio is started for the run (its first start migrates for
about 90 s, not counted). Prints seconds, the ratios no-change/first and no-change/export, and the load average.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import (
    PERSON_SPEC,
    RESULTS,
    SHARED,
    add_label_studio_arguments,
    interleaved,
    label_studio,
    prepare,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=80, help="at most this many labeled images (coco-mini-train has 28)")
    parser.add_argument("--repeat", type=int, default=5)
    add_label_studio_arguments(parser)
    args = parser.parse_args()
    prepare()

    from poseops.coco import image_results, read_coco_keypoints
    from poseops.datasets import create_dataset, upload_images
    from poseops.demo import make_workspace
    from poseops.labelstudio import LabelStudioClient
    from poseops.pull import export_snapshot, export_tasks
    from poseops.skeleton import load_skeleton

    work = Path(tempfile.mkdtemp(prefix="poseops-bench-pull-"))
    spec = PERSON_SPEC
    skeleton = load_skeleton(spec)
    coco = SHARED / "datasets" / "coco-mini-train"
    labeled = read_coco_keypoints(coco / "annotations" / "person_keypoints_train2017.json", skeleton=skeleton)
    labeled = [im for im in labeled if im.poses][: args.images]
    images = [im.path for im in labeled]
    labels = {im.path: image_results(skeleton, im) for im in labeled}

    with label_studio(args, work) as settings:
        name = f"bench-{uuid.uuid4().hex[:6]}"
        with LabelStudioClient(settings) as client:
            project, _ = create_dataset(client, settings, name, spec)
            upload_images(client, settings, name, images, labels=labels)
        workspace = make_workspace(work / "repo", {"pull": {"min_images": 4, "val_fraction": 0.25}})
        os.chdir(workspace)
        from prefect.testing.utilities import prefect_test_harness

        from poseops.flows.pull_labels import pull_labels
        from poseops.pull_unchanged import unchanged_pull

        pulls: list[dict] = []
        tasks: list[int] = []

        def export_only() -> float:
            with LabelStudioClient(settings) as client:
                t0 = time.perf_counter()
                tasks.append(len(export_snapshot(client, project.id).tasks))
                return time.perf_counter() - t0

        def export_direct() -> float:
            with LabelStudioClient(settings) as client:
                t0 = time.perf_counter()
                export_tasks(client, project.id)
                return time.perf_counter() - t0

        def nochange() -> float:  # as `poseops pull NAME` runs it
            t0 = time.perf_counter()
            pulls.append(unchanged_pull(name) or pull_labels(dataset=name))
            return time.perf_counter() - t0

        def nochange_flow() -> float:  # the flow alone, as its deployment runs it
            t0 = time.perf_counter()
            pulls.append(pull_labels(dataset=name))
            return time.perf_counter() - t0

        with prefect_test_harness(server_startup_timeout=180):
            t0 = time.perf_counter()
            first = pull_labels(dataset=name)
            first_s = time.perf_counter() - t0
            export_only()  # the SDK's first call, not counted
            load = os.getloadavg()[0]
            seconds = interleaved({"export": export_only, "nochange": nochange, "flow": nochange_flow,
                                   "direct": export_direct}, args.repeat)
        export_s, nochange_s = statistics.median(seconds["export"]), statistics.median(seconds["nochange"])
        flow_s, direct_s = statistics.median(seconds["flow"]), statistics.median(seconds["direct"])
        print(RESULTS)
        print(f"images: {len(images)} labeled ({tasks[-1]} tasks exported)")
        print(f"first pull (export, images, convert, DVC add/push, commit): {first_s:7.2f} s  -> {first.get('dvc_md5')}")
        print(f"export only (snapshot create + download), median of {args.repeat}: {export_s:7.3f} s   runs: "
              f"{', '.join(f'{s:.3f}' for s in seconds['export'])}")
        print(f"direct export (one request, no snapshot), median of {args.repeat}: {direct_s:7.3f} s   runs: "
              f"{', '.join(f'{s:.3f}' for s in seconds['direct'])}")
        print(f"no-change pull (poseops pull), median of {args.repeat}: {nochange_s:7.3f} s   runs: "
              f"{', '.join(f'{s:.3f}' for s in seconds['nochange'])}")
        print(f"no-change pull through the flow, median of {args.repeat}: {flow_s:7.3f} s   runs: "
              f"{', '.join(f'{s:.3f}' for s in seconds['flow'])}")
        print(f"-> {pulls[-1].get('dvc_md5')} (same version: {all(p.get('dvc_md5') == first.get('dvc_md5') for p in pulls)}, "
              f"rebuilt: {sum(not p.get('unchanged') for p in pulls)} of {len(pulls)})")
        print(f"ratio no-change/first: {nochange_s / first_s:.2f}   no-change/export: {nochange_s / export_s:.2f}   "
              f"no-change/direct export: {nochange_s / direct_s:.2f}   flow no-change/export: {flow_s / export_s:.2f}   load average {load:.1f} -> {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
