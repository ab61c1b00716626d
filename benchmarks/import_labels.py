"""Importing 1,000 labeled images: time and Label Studio requests, against uploading the same images unlabeled.

    python -m benchmarks.import_labels [--images 1000] [--max-side 320] [--label-studio-url URL --token TOKEN]

The images: the labeled photos of coco-mini-train (80, people and negatives) and coco8-pose (8),
each downscaled to at most `--max-side` pixels and re-encoded as JPEG at a different quality per
copy (75, 76, ...), until there are `--images` files of distinct content, with their COCO labels
scaled along into one COCO keypoints file (real labels on real photos; only the encodings repeat).
Three runs, each into a fresh dataset of the person skeleton, through a proxy that counts every
request Label Studio receives:
1. upload: `poseops dataset upload` of the images (template pre-labels, no labels): the baseline;
2. import: `poseops dataset import --format coco` of the same images and labels;
3. import again: the same import into the same dataset (adds nothing).
Without --label-studio-url a Label Studio is started for the run (its first start migrates for
about 90 s, not counted). Prints seconds, requests, and the ratios import/upload.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import replace
from pathlib import Path

from benchmarks.common import PERSON_SPEC, RESULTS, ROOT, SHARED, add_label_studio_arguments, label_studio, prepare


def make_images(count: int, max_side: int, out: Path) -> Path:
    """`count` JPEGs of distinct content with their labels, as `out/annotations/kp.json` + `out/images/`."""
    from PIL import Image

    from poseops.coco import read_coco_keypoints, read_yolo_pose
    from poseops.skeleton import load_skeleton

    datasets = SHARED / "datasets"
    coco = datasets / "coco-mini-train"
    sources = read_coco_keypoints(coco / "annotations" / "person_keypoints_train2017.json", coco / "images")
    sources += [im for split in ("train", "val") for im in read_yolo_pose(datasets / "coco8-pose", split, ["person"])]
    (out / "images").mkdir(parents=True)
    keypoint_names = load_skeleton(PERSON_SPEC).classes[0].keypoint_names
    doc: dict = {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person", "keypoints": keypoint_names}]}
    for n in range(count):
        source = sources[n % len(sources)]
        with Image.open(source.path) as im:
            im = im.convert("RGB")
            im.thumbnail((max_side, max_side))
            buffer = io.BytesIO()
            im.save(buffer, format="JPEG", quality=75 + n // len(sources))
            width, height = im.size
        name = f"{n:05d}-{Path(source.file_name).stem}.jpg"
        (out / "images" / name).write_bytes(buffer.getvalue())
        doc["images"].append({"id": n, "file_name": name, "width": width, "height": height})
        for pose in source.poses:
            x, y, w, h = pose.box
            keypoints = [c for kx, ky, v in pose.keypoints for c in (kx * width, ky * height, v)]
            doc["annotations"].append({"id": len(doc["annotations"]) + 1, "image_id": n, "category_id": 1, "iscrowd": 0,
                                       "bbox": [x * width, y * height, w * width, h * height], "keypoints": keypoints,
                                       "num_keypoints": sum(1 for _, _, v in pose.keypoints if v)})
    (out / "annotations").mkdir()
    (out / "annotations" / "kp.json").write_text(json.dumps(doc))
    return out / "annotations" / "kp.json"


def counted(settings, run) -> tuple[float, int, Counter]:
    """Seconds and Label Studio requests of `run(settings)`, with settings pointed through a counting proxy."""
    sys.path.insert(0, str(ROOT / "tests"))
    from request_log import RequestLog

    with RequestLog(settings.label_studio_url) as log:
        started = time.perf_counter()
        run(replace(settings, label_studio_url=log.url))
        seconds = time.perf_counter() - started
        kinds = Counter(f"{r.method} {r.path.split('?')[0].rstrip('/').rsplit('/', 1)[-1]}" for r in log.requests)
        return seconds, len(log.requests), kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--max-side", type=int, default=320)
    add_label_studio_arguments(parser)
    args = parser.parse_args()
    prepare()

    from poseops.datasets import create_dataset, upload_images
    from poseops.importing.upload import import_labels
    from poseops.labelstudio import LabelStudioClient

    work = Path(tempfile.mkdtemp(prefix="poseops-bench-import-"))
    coco_file = make_images(args.images, args.max_side, work / "set")
    images = sorted((work / "set" / "images").glob("*.jpg"))
    print(f"{len(images)} images in {work / 'set'}", flush=True)
    results = {}
    with label_studio(args, work) as settings:
        names = {"upload": f"bench-up-{uuid.uuid4().hex[:6]}", "import": f"bench-im-{uuid.uuid4().hex[:6]}"}
        with LabelStudioClient(settings) as client:
            for name in names.values():
                create_dataset(client, settings, name, PERSON_SPEC)

        def upload(s):
            with LabelStudioClient(s) as client:
                results["upload_report"] = upload_images(client, s, names["upload"], [work / "set" / "images"])

        def do_import(key):
            def run(s):
                with LabelStudioClient(s) as client:
                    results[key] = import_labels(client, s, names["import"], "coco", coco_file)
            return run

        results["upload"] = counted(settings, upload)
        print(f"upload done in {results['upload'][0]:.1f} s", flush=True)
        results["import"] = counted(settings, do_import("import_report"))
        print(f"import done in {results['import'][0]:.1f} s", flush=True)
        results["again"] = counted(settings, do_import("again_report"))

    report, again = results["import_report"], results["again_report"]
    up_s, up_n, up_kinds = results["upload"]
    im_s, im_n, im_kinds = results["import"]
    ag_s, ag_n, ag_kinds = results["again"]
    print(RESULTS)
    print(f"images: {len(images)} ({args.max_side} px at most, JPEG), labeled objects: {report.instances}, "
          f"keypoints: {report.keypoints}; uploaded as new tasks: upload {len(results['upload_report'].uploaded)}, "
          f"import {report.new_tasks}")
    print(f"upload (baseline, no labels): {up_s:7.1f} s, {up_n} requests ({up_n / len(images):.2f} per image)")
    print(f"import (labels as annotations): {im_s:7.1f} s, {im_n} requests ({im_n / len(images):.2f} per image)")
    print(f"import again (adds {again.new_tasks} tasks, {again.annotated} annotations): {ag_s:7.1f} s, {ag_n} requests")
    print(f"ratio import/upload: time {im_s / up_s:.2f}, requests {im_n / up_n:.2f}; "
          f"images imported per second: {report.new_tasks / im_s:.1f}")
    print("requests of the import by kind: " + ", ".join(f"{k} {n}" for k, n in im_kinds.most_common(8)))
    print("requests of the upload by kind: " + ", ".join(f"{k} {n}" for k, n in up_kinds.most_common(8)))
    print("requests of the import again by kind: " + ", ".join(f"{k} {n}" for k, n in ag_kinds.most_common(8)))


if __name__ == "__main__":
    main()
