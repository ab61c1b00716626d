"""Pull time when nothing changed, against the first pull and the bare export, in one run.

    python -m benchmarks.pull_nochange [--images 40] [--label-studio-url URL --token TOKEN]

A Label Studio project with up to `--images` labeled images (coco-mini-train with its COCO
keypoint labels) is pulled three ways in a fresh git + DVC workspace:
1. the first pull: export, image download, conversion, `dvc add`, `dvc push`, git commit;
2. export only: Label Studio's export snapshot created and downloaded (the least any pull does), and
3. pulls with nothing changed: the same flow, which finds the version unchanged and rebuilds nothing;
   2 and 3 in turn (`interleaved`), `--repeat` times, medians.
Without --label-studio-url a Label Studio is started for the run (its first start migrates for
about 90 s, not counted). Prints seconds and the ratios no-change/first and no-change/export.
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
    from poseops.pull import export_snapshot
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

        pulls: list[dict] = []
        tasks: list[int] = []

        def export_only() -> float:
            with LabelStudioClient(settings) as client:
                t0 = time.perf_counter()
                tasks.append(len(export_snapshot(client, project.id).tasks))
                return time.perf_counter() - t0

        def nochange() -> float:
            t0 = time.perf_counter()
            pulls.append(pull_labels(dataset=name))
            return time.perf_counter() - t0

        with prefect_test_harness(server_startup_timeout=180):
            t0 = time.perf_counter()
            first = pull_labels(dataset=name)
            first_s = time.perf_counter() - t0
            export_only()  # the SDK's first call, not counted
            seconds = interleaved({"export": export_only, "nochange": nochange}, args.repeat)
        export_s, nochange_s = statistics.median(seconds["export"]), statistics.median(seconds["nochange"])
        print(RESULTS)
        print(f"images: {len(images)} labeled ({tasks[-1]} tasks exported)")
        print(f"first pull (export, images, convert, DVC add/push, commit): {first_s:7.2f} s  -> {first.get('dvc_md5')}")
        print(f"export only (snapshot create + download), median of {args.repeat}: {export_s:7.2f} s   runs: "
              f"{', '.join(f'{s:.2f}' for s in seconds['export'])}")
        print(f"no-change pull, median of {args.repeat}: {nochange_s:7.2f} s   runs: "
              f"{', '.join(f'{s:.2f}' for s in seconds['nochange'])}  -> {pulls[-1].get('dvc_md5')} "
              f"(same version: {all(p.get('dvc_md5') == first.get('dvc_md5') for p in pulls)}, "
              f"rebuilt: {sum(not p.get('unchanged') for p in pulls)} of {len(pulls)})")
        print(f"ratio no-change/first: {nochange_s / first_s:.2f}   no-change/export: {nochange_s / export_s:.2f}")


if __name__ == "__main__":
    main()
