"""Pose mAP of the pretrained yolo11n-pose before and after fine-tuning on coco-mini-train, on coco8-pose val.

    python -m benchmarks.finetune_coco_mini [--epochs 3] [--imgsz 640]

The training set is coco-mini-train's 80 images with their COCO labels, converted by
poseops (COCO → Label Studio results → YOLO-pose, the same path as a pull); the val set is
coco8-pose's 4 val images. Both figures are measured in this run with the same settings.

What this measures, plainly: the 4 val photos are not in the fine-tuning set, but they are COCO
train2017 photos, which yolo11n-pose was pretrained on (as are coco-mini-train's). So neither figure
is accuracy on unseen images: the comparison shows whether a short fine-tune keeps (or loses) what
the pretrained model knew about COCO photos, i.e. how much a fine-tune with these settings forgets.
No COCO photo outside train2017 (and no other person keypoint set) ships with the checkout to
measure generalisation on.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from benchmarks.common import PERSON_SPEC, RESULTS, SHARED, prepare


def build_dataset(out: Path) -> Path:
    from poseops.coco import read_coco_keypoints, to_label_studio_tasks
    from poseops.convert import convert_export
    from poseops.skeleton import load_skeleton

    skeleton = load_skeleton(PERSON_SPEC)
    (json_path,) = (SHARED / "datasets" / "coco-mini-train" / "annotations").glob("*.json")
    images = read_coco_keypoints(json_path, skeleton=skeleton)
    tasks = to_label_studio_tasks(skeleton, images)
    convert_export(tasks, skeleton, {t["id"]: im.path for t, im in zip(tasks, images, strict=True)}, out,
                   split={t["id"]: "train" for t in tasks})
    coco8 = SHARED / "datasets" / "coco8-pose"
    for kind in ("images", "labels"):
        shutil.rmtree(out / kind / "val", ignore_errors=True)
        shutil.copytree(coco8 / kind / "val", out / kind / "val")
    data = yaml.safe_load((out / "data.yaml").read_text())
    data["path"] = str(out)
    (out / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    return out / "data.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=640)
    parser.add_argument("--warmup-epochs", type=float, default=3.0, help="Ultralytics' warmup_epochs (its default: 3)")
    parser.add_argument("--optimizer", default="auto", help="Ultralytics' optimizer (its default: auto)")
    parser.add_argument("--lr0", type=float, default=0.01, help="initial learning rate (ignored by optimizer=auto)")
    args = parser.parse_args()
    prepare()
    work = Path(tempfile.mkdtemp(prefix="poseops-finetune-"))
    os.environ["YOLO_CONFIG_DIR"] = str(work / "ultralytics")
    from poseops.training import configure_ultralytics
    from poseops.weights import resolve_weights

    configure_ultralytics()  # offline-ready, Ultralytics' own MLflow/DVC callbacks off: this run logs nowhere
    from ultralytics import YOLO

    data = build_dataset(work / "dataset")
    weights = resolve_weights("yolo11n-pose.pt")
    common = {"data": str(data), "imgsz": args.imgsz, "batch": 16, "device": "cpu", "plots": False, "verbose": False}
    before = YOLO(weights).val(project=str(work), name="before", **common)
    t0 = time.perf_counter()
    model = YOLO(weights)
    model.train(epochs=args.epochs, workers=0, project=str(work), name="train", val=False, seed=0,
                warmup_epochs=args.warmup_epochs, optimizer=args.optimizer, lr0=args.lr0, **common)
    seconds = time.perf_counter() - t0
    after = YOLO(str(work / "train" / "weights" / "last.pt")).val(project=str(work), name="after", **common)
    print(RESULTS)
    print("measured on coco8-pose's 4 val photos: not fine-tuned on, but COCO train2017 photos the pretrained model was "
          "trained on (not a held-out figure)")
    print(f"imgsz {args.imgsz}; fine-tuned {args.epochs} epochs on coco-mini-train (80 images), "
          f"optimizer {args.optimizer} lr0 {args.lr0} warmup_epochs {args.warmup_epochs}, in {seconds:.0f} s on CPU")
    print(f"{'':22}{'pose mAP50':>12}{'pose mAP50-95':>15}{'box mAP50-95':>14}")
    for label, m in (("pretrained", before), ("fine-tuned", after)):
        print(f"{label:22}{m.pose.map50:12.3f}{m.pose.map:15.3f}{m.box.map:14.3f}")
    print(f"ratio fine-tuned/pretrained pose mAP50-95 (on photos from the pretraining set): "
          f"{after.pose.map / before.pose.map:.2f}")


if __name__ == "__main__":
    sys.exit(main())
