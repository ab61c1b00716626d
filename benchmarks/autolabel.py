"""Autolabel throughput against the raw model, in one run on the same images.

    python benchmarks/autolabel.py [--images N] [--label-studio-url URL --token TOKEN]

raw: the model's own detect over the images in this process, one after the other.
autolabel: the Prefect flow over the same images as Label Studio tasks (fetch, detect, write
predictions), with the model in-process. Without --label-studio-url a Label Studio is started
for the run (its first start migrates for about 90 s, not counted). Prints images/s and the ratio.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSEOPS_SHARED_DIR", ROOT.parent / "shared"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def label_studio_for_run(args: argparse.Namespace, work: Path):
    """Settings for the Label Studio at --label-studio-url, or for one started for the run and stopped after it."""
    from poseops import labelstudio_server
    from poseops.settings import Settings

    if args.label_studio_url:
        settings = Settings(home=work / "home", label_studio_url=args.label_studio_url, label_studio_token=args.token)
    else:
        settings = Settings(home=work / "home", label_studio_url=f"http://127.0.0.1:{free_port()}",
                            label_studio_password=secrets.token_urlsafe(12), label_studio_token=secrets.token_hex(20),
                            label_studio_bin=ROOT / ".venv-labelstudio" / "bin" / "label-studio")
        print("starting Label Studio for the run ...", flush=True)
        labelstudio_server.up(settings, timeout=900)
    os.environ.update({"POSEOPS_HOME": str(settings.home), "LABEL_STUDIO_URL": settings.label_studio_url,
                       "LABEL_STUDIO_USER_TOKEN": settings.label_studio_token})
    try:
        yield settings
    finally:
        if not args.label_studio_url:
            labelstudio_server.down(settings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--label-studio-url")
    parser.add_argument("--token")
    args = parser.parse_args()
    os.environ.setdefault("YOLO_OFFLINE", "true")
    os.environ.setdefault("POSEOPS_WEIGHTS_DIR", str(SHARED / "weights"))
    sys.path.insert(0, str(ROOT))

    from poseops.datasets import create_dataset, upload_images
    from poseops.demo import mirrored_copies
    from poseops.labelstudio import LabelStudioClient
    from poseops.settings import quiet_telemetry

    quiet_telemetry()
    work = Path(tempfile.mkdtemp(prefix="poseops-bench-"))
    sources = sorted((SHARED / "datasets" / "coco-mini-train" / "images").glob("*.jpg"))[: args.images]
    images = sources if len(sources) >= args.images else sources + mirrored_copies(sources, work / "mirrored")
    images = images[: args.images]

    with label_studio_for_run(args, work) as settings:
        import cv2

        from poseops.inference import PoseModel
        from poseops.skeleton import load_skeleton

        spec = ROOT / "label_config" / "skeletons" / "person.yaml"
        model = PoseModel("yolo11n-pose.pt", load_skeleton(spec))
        model.detect(cv2.imread(str(images[0])))  # warm
        t0 = time.perf_counter()
        for path in images:
            model.detect(cv2.imread(str(path)), 0.25, 0.45)
        raw = len(images) / (time.perf_counter() - t0)

        name = f"bench-{uuid.uuid4().hex[:6]}"
        with LabelStudioClient(settings) as client:
            create_dataset(client, settings, name, spec)
            upload_images(client, settings, name, images)
        from prefect.testing.utilities import prefect_test_harness

        os.chdir(work)
        from flows.autolabel import autolabel

        with prefect_test_harness(server_startup_timeout=180):
            t0 = time.perf_counter()
            summary = autolabel(dataset=name, weights="yolo11n-pose.pt")
            flow = summary["predicted"] / (time.perf_counter() - t0)
        print(f"images: {len(images)}  (yolo11n-pose, ONNX Runtime, CPU threads={os.cpu_count()})")
        print(f"raw model:  {raw:6.2f} images/s")
        print(f"autolabel:  {flow:6.2f} images/s  (Label Studio tasks → predictions, {summary['predicted']} written, "
              f"{len(summary['failed'])} failed)")
        print(f"ratio autolabel/raw: {flow / raw:.2f}")


if __name__ == "__main__":
    main()
