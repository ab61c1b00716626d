"""Benchmark: poseops' converter against label-studio-sdk's `Converter.convert_to_yolo`.

Builds a synthetic Label Studio JSON export in memory (persons with boxes, keypoints,
some occluded, some keypoints without parentID), writes it to a temporary folder with
one small distinct file per task as its image, and converts it with both, each starting
from the export file on disk. Prints regions per second, their ratio, and how many
objects and keypoints each kept (the SDK drops keypoints without parentID and writes
visibility 2 for all).

    .venv/bin/python -m benchmarks.convert [--tasks 600] [--persons 2] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import tempfile
import time
from pathlib import Path

from benchmarks.common import PERSON_SPEC, RESULTS
from poseops.convert import convert_export, load_export, results_to_poses
from poseops.label_config import BOXES, IMAGE, KEYPOINTS, OCCLUDED, VISIBILITY, label_config_xml
from poseops.skeleton import Skeleton, load_skeleton

WIDTH, HEIGHT = 640, 480


def synthetic_task(skeleton: Skeleton, task_id: int, persons: int, rng: random.Random) -> dict:
    """One task with `persons` side-by-side boxes; 80% of keypoints labeled, 10% occluded, 15% without parentID."""
    cls = skeleton.classes[0]
    common = {"to_name": IMAGE, "original_width": WIDTH, "original_height": HEIGHT, "image_rotation": 0}
    result: list[dict] = []
    slot = 100 / persons
    for p in range(persons):
        bid = f"t{task_id}b{p}"
        x, y = p * slot + rng.uniform(0, slot * 0.1), rng.uniform(0, 10)
        w, h = slot * 0.8, rng.uniform(60, 85)
        result.append({"id": bid, "from_name": BOXES, "type": "rectanglelabels", **common,
                       "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0,
                                 "rectanglelabels": [cls.name]}})
        for i, kp in enumerate(cls.keypoints):
            if rng.random() < 0.2:
                continue
            kid = f"{bid}k{i}"
            geometry = {"x": x + rng.uniform(0.05, 0.95) * w, "y": y + rng.uniform(0.05, 0.95) * h, "width": 0.6}
            region = {"id": kid, "from_name": KEYPOINTS, "type": "keypointlabels", **common,
                      "value": {**geometry, "keypointlabels": [skeleton.keypoint_label(cls.name, kp.name)]}}
            if rng.random() >= 0.15:
                region["parentID"] = bid
            result.append(region)
            if rng.random() < 0.1:
                result.append({"id": kid, "from_name": VISIBILITY, "type": "choices", **common,
                               "value": {**geometry, "choices": [OCCLUDED]}})
    return {
        "id": task_id,
        "data": {"image": ""},  # filled in with the image file's path
        "annotations": [{"id": task_id, "result": result, "was_cancelled": False, "ground_truth": False,
                         "created_at": "2024-05-01T10:00:00.000000Z", "updated_at": "2024-05-01T10:00:00.000000Z",
                         "completed_by": 1}],
        "predictions": [],
    }


def count_yolo(label_dir: Path) -> tuple[int, int]:
    """(objects, labeled keypoints) in all label files under `label_dir`."""
    objects = keypoints = 0
    for path in label_dir.rglob("*.txt"):
        for line in path.read_text().splitlines():
            fields = line.split()
            if fields:
                objects += 1
                keypoints += sum(1 for v in fields[7::3] if float(v) > 0)
    return objects, keypoints


def run_poseops(export: Path, skeleton: Skeleton, images: dict[int, Path], out: Path) -> tuple[float, int, int]:
    start = time.perf_counter()
    tasks = load_export(export)
    report = convert_export(tasks, skeleton, images, out)
    seconds = time.perf_counter() - start
    return seconds, sum(report.objects.values()), sum(report.keypoints.values())


def run_in_memory(tasks: list[dict], skeleton: Skeleton) -> tuple[float, int, int]:
    """Only the region logic: results → poses for every task, no JSON parsing, no files."""
    start = time.perf_counter()
    poses = [p for t in tasks for p in results_to_poses(skeleton, t["annotations"][0]["result"], t["id"])[0]]
    seconds = time.perf_counter() - start
    return seconds, len(poses), sum(1 for p in poses for k in p.keypoints if k[2])


def run_sdk(export: Path, skeleton: Skeleton, work: Path, out: Path) -> tuple[float, int, int]:
    from label_studio_sdk.converter import Converter

    start = time.perf_counter()
    converter = Converter(config=label_config_xml(skeleton), project_dir=str(work), download_resources=False)
    converter.convert_to_yolo(input_data=str(export), output_dir=str(out), is_dir=False)
    seconds = time.perf_counter() - start
    objects, keypoints = count_yolo(out / "labels")
    return seconds, objects, keypoints


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=5000, help="tasks (x --persons = pose annotations)")
    parser.add_argument("--persons", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each; the fastest counts")
    parser.add_argument("--spec", type=Path, default=PERSON_SPEC)
    args = parser.parse_args()
    logging.disable(logging.WARNING)  # the SDK logs per task; keep the timing about converting

    skeleton = load_skeleton(args.spec)
    rng = random.Random(0)
    tasks = [synthetic_task(skeleton, n + 1, args.persons, rng) for n in range(args.tasks)]
    regions = sum(len(t["annotations"][0]["result"]) for t in tasks)
    labeled = sum(1 for t in tasks for r in t["annotations"][0]["result"] if r["type"] == "keypointlabels")
    orphans = sum(1 for t in tasks for r in t["annotations"][0]["result"]
                  if r["type"] == "keypointlabels" and "parentID" not in r)

    with tempfile.TemporaryDirectory(prefix="poseops-bench-") as tmp:
        work = Path(tmp)
        images: dict[int, Path] = {}
        (work / "media").mkdir()
        for t in tasks:
            path = work / "media" / f"task{t['id']}.jpg"
            path.write_bytes(f"not decoded: image of task {t['id']}".encode())
            t["data"]["image"] = str(path)
            images[t["id"]] = path
        export = work / "export.json"
        export.write_text(json.dumps(tasks), encoding="utf-8")

        ours_runs, sdk_runs = [], []
        for n in range(args.repeat):  # interleaved, each into a fresh folder, so both see the same machine load
            ours_runs.append(run_poseops(export, skeleton, images, work / f"poseops{n}"))
            sdk_runs.append(run_sdk(export, skeleton, work, work / f"sdk{n}"))
        ours = min(ours_runs, key=lambda r: r[0])
        memory = min((run_in_memory(tasks, skeleton) for _ in range(args.repeat)), key=lambda r: r[0])
        sdk = min(sdk_runs, key=lambda r: r[0])

    print(RESULTS)
    print(f"export: {args.tasks} tasks, {regions} regions, {labeled} keypoints ({orphans} without parentID), "
          f"{args.tasks * args.persons} boxes; best of {args.repeat}")
    print(f"{'converter':<34}{'seconds':>9}{'regions/s':>12}{'objects':>9}{'keypoints':>11}")
    for name, (seconds, objects, keypoints) in (("poseops convert_export", ours),
                                                 ("label-studio-sdk convert_to_yolo", sdk),
                                                 ("poseops results_to_poses, no I/O", memory)):
        print(f"{name:<34}{seconds:>9.3f}{regions / seconds:>12,.0f}{objects:>9}{keypoints:>11}")
    print(f"speed ratio poseops/sdk (file to dataset, both): {sdk[0] / ours[0]:.2f}x")
    print(f"keypoints kept: poseops {ours[2]} of {labeled}, sdk {sdk[2]} of {labeled} "
          f"(the sdk drops the {orphans} without parentID)")


if __name__ == "__main__":
    main()
