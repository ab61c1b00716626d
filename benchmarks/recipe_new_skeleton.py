"""Pose mAP of yolo11n-pose trained on a skeleton its pretrained head does not fit, with each recipe.

    python -m benchmarks.recipe_new_skeleton [--epochs 15] [--imgsz 320]

DeepLabCut's "Reaching" frames (55 frames of a mouse, 5 body parts, points only: boxes derived
from the points with the spec's padding) are split by content hash (poseops' split, 20 % val).
The same pretrained weights are trained with the fine-tune recipe (SGD, lr0 0.001, no warm-up:
what a fine-tune of a fitting head uses) and with the new-head recipe poseops picks when the
head does not fit (`train.new_head`: AdamW, lr0 0.002, 3 warm-up epochs), each for the same
epochs, and validated on the val frames. Both runs are in this process, with the same settings.
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import RESULTS, ROOT, SHARED, prepare

DLC = SHARED / "datasets" / "dlc-reaching" / "labeled-data" / "reachingvideo1"
SPEC = ROOT / "label_config" / "skeletons" / "reaching.yaml"


def build_dataset(out: Path) -> Path:
    """The DeepLabCut CSV as a YOLO-pose dataset (derived boxes: min/max of the points plus 10 % a side)."""
    from PIL import Image

    from poseops.conversion.dataset import data_yaml, file_sha256, split_for
    from poseops.skeleton import load_skeleton

    skeleton = load_skeleton(SPEC)
    names = skeleton.classes[0].keypoint_names
    with open(DLC / "CollectedData_Mackenzie.csv", newline="") as f:
        rows = list(csv.reader(f))
    parts = rows[1][1:]
    for row in rows[3:]:
        image = DLC / Path(row[0]).name
        with Image.open(image) as im:
            width, height = im.size
        points = {parts[i]: (float(row[1 + i]), float(row[2 + i])) for i in range(0, len(parts), 2) if row[1 + i]}
        if len(points) < 2:
            continue
        xs, ys = [p[0] for p in points.values()], [p[1] for p in points.values()]
        pad_x, pad_y = 0.1 * (max(xs) - min(xs)), 0.1 * (max(ys) - min(ys))
        x0, x1 = max(0.0, min(xs) - pad_x), min(width, max(xs) + pad_x)
        y0, y1 = max(0.0, min(ys) - pad_y), min(height, max(ys) + pad_y)
        line = [0, (x0 + x1) / 2 / width, (y0 + y1) / 2 / height, (x1 - x0) / width, (y1 - y0) / height]
        for name in names:
            x, y = points.get(name, (0.0, 0.0))
            line += [x / width, y / height, 2 if name in points else 0]
        part = split_for(file_sha256(image), 0.2)
        for kind in ("images", "labels"):
            (out / kind / part).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(image, out / "images" / part / image.name)
        (out / "labels" / part / f"{image.stem}.txt").write_text(" ".join(f"{v:.6f}" if isinstance(v, float) else str(v)
                                                                          for v in line) + "\n")
    (out / "data.yaml").write_text(yaml.safe_dump(data_yaml(skeleton, out), sort_keys=False))
    return out / "data.yaml"


RECIPES = {
    "fine-tune (SGD, lr0 0.001, warmup 0)": {"optimizer": "SGD", "lr0": 0.001, "warmup_epochs": 0.0},
    "new head (AdamW, lr0 0.002, warmup 3)": {"optimizer": "AdamW", "lr0": 0.002, "warmup_epochs": 3.0},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--imgsz", type=int, default=320)
    parser.add_argument("--only", choices=["fine-tune", "new-head"], help="run one recipe only")
    args = parser.parse_args()
    prepare()
    work = Path(tempfile.mkdtemp(prefix="poseops-recipe-"))
    import os

    os.environ["YOLO_CONFIG_DIR"] = str(work / "ultralytics")
    from poseops.training import configure_ultralytics
    from poseops.weights import resolve_weights

    configure_ultralytics()
    from ultralytics import YOLO

    data = build_dataset(work / "dataset")
    weights = resolve_weights("yolo11n-pose.pt")
    common = {"data": str(data), "imgsz": args.imgsz, "batch": 8, "device": "cpu", "plots": False, "verbose": False}
    results = []
    for label, recipe in RECIPES.items():
        if args.only and not label.startswith({"fine-tune": "fine-tune", "new-head": "new head"}[args.only]):
            continue
        t0 = time.perf_counter()
        name = f"r{len(results)}"
        print(f"training {label}: per-epoch metrics in {work / name / 'results.csv'}", flush=True)
        YOLO(weights).train(epochs=args.epochs, workers=0, project=str(work), name=name, seed=0, **recipe, **common)
        seconds = time.perf_counter() - t0
        m = YOLO(str(work / name / "weights" / "last.pt")).val(project=str(work), name=f"{name}-val", **common)
        results.append((label, m.pose.map50, m.pose.map, m.box.map, seconds))
        print(f"measured: {label}: pose mAP50 {m.pose.map50:.3f}, mAP50-95 {m.pose.map:.3f}", flush=True)
    print(RESULTS)
    n_val = len(list((work / "dataset" / "images" / "val").iterdir()))
    n_train = len(list((work / "dataset" / "images" / "train").iterdir()))
    print(f"dlc-reaching (5 keypoints; {n_train} train / {n_val} val frames), yolo11n-pose.pt (17-keypoint head: "
          f"re-initialised), {args.epochs} epochs, imgsz {args.imgsz}, batch 8, CPU")
    print(f"{'recipe':40}{'pose mAP50':>12}{'pose mAP50-95':>15}{'box mAP50-95':>14}{'train s':>9}")
    for label, p50, p, b, s in results:
        print(f"{label:40}{p50:12.3f}{p:15.3f}{b:14.3f}{s:9.0f}")


if __name__ == "__main__":
    sys.exit(main())
