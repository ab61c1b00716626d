"""The ML backend's /predict latency vs the raw model on the same images (target: ratio ≤ 1.2).

    python -m benchmarks.ml_backend [--repeat 5]

Label Studio started for the run holds the images as tasks; a registry (SQLite, in the run's
folder) holds yolo11n-pose as the champion; the backend runs as `poseops ml-backend up` runs it.
Each image is asked of the backend the way Label Studio asks it when a task opens (one task per
`POST /predict`: the backend fetches the image from Label Studio, detects, writes regions), and
given to the raw model in this process (decoded from disk, detected), in turn, image by image
(a b, b a, ...), so a busy machine's load falls on both alike; the ratio is the median of the
pairs' ratios. Both sides run the same exported model on the same runtime. The backend's
`Server-Timing` header says how much of each call was the image's fetch from Label Studio, so
the ratio is given with and without it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import (
    DEFAULT_IMAGES,
    PERSON_SPEC,
    RESULTS,
    SHARED,
    add_label_studio_arguments,
    interleaved,
    label_studio,
    prepare,
)


def register_champion(work: Path) -> Path:
    """yolo11n-pose as version 1, the champion, of a registry in `work`; returns the version's files."""
    import mlflow

    from poseops import tracking
    from poseops.inference import export_onnx

    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{work / 'mlflow.db'}"
    files = work / "artifacts"
    files.mkdir()
    shutil.copyfile(export_onnx(SHARED / "weights" / "yolo11n-pose.pt"), files / "model.onnx")
    shutil.copyfile(PERSON_SPEC, files / "skeleton.yaml")
    mlc = tracking.client()
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(files), artifact_path="model")
    ref = tracking.register_version(mlc, "poseops-pose", run.info.run_id, "model", {})
    mlc.set_registered_model_alias("poseops-pose", "champion", ref.version)
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="rounds over all the images, each side in turn")
    add_label_studio_arguments(parser)
    args = parser.parse_args()
    prepare()
    work = Path(tempfile.mkdtemp(prefix="poseops-bench-"))
    images = sorted(DEFAULT_IMAGES.rglob("*.jpg"))
    files = register_champion(work)
    os.chdir(work)

    with label_studio(args, work) as settings:
        import cv2
        import httpx

        from poseops import stack
        from poseops.datasets import create_dataset
        from poseops.detector import ServiceConfig
        from poseops.devservers import free_port
        from poseops.inference import PoseModel
        from poseops.labelstudio import LabelStudioClient
        from poseops.settings import load_settings
        from poseops.skeleton import load_skeleton

        with LabelStudioClient(settings) as client:
            project = create_dataset(client, settings, "bench-backend", PERSON_SPEC)[0]
            tasks = []
            for image in images:
                url = client.upload_file(project.id, image.name, image.read_bytes(), "image/jpeg")
                tasks.append(client.get_task(client.import_tasks(project.id, [{"image": url}])[0]))
        os.environ["POSEOPS_ML_BACKEND_URL"] = f"http://127.0.0.1:{free_port()}"
        server = stack.ml_backend(load_settings())
        server.up(timeout=120)
        try:
            config = ServiceConfig().with_model_files(files)
            model = PoseModel(config.weights, load_skeleton(config.skeleton), runtime=config.runtime)
            with httpx.Client(base_url=server.url, timeout=120) as http:
                answer = http.post("/predict", json={"tasks": [tasks[0]]}).json()  # loads the champion
                version = answer["results"][0]["model_version"]

                parts: list[dict[str, float]] = []  # per call: the backend's Server-Timing (seconds by step)
                turn = {"raw": 0, "backend": 0}  # each side's next image

                def backend() -> float:
                    task = tasks[turn["backend"] % len(tasks)]
                    turn["backend"] += 1
                    started = time.perf_counter()
                    r = http.post("/predict", json={"tasks": [task]})
                    r.raise_for_status()
                    took = time.perf_counter() - started
                    parts.append(server_timing(r.headers.get("Server-Timing", "")))
                    return took

                def raw() -> float:
                    image = images[turn["raw"] % len(images)]
                    turn["raw"] += 1
                    started = time.perf_counter()
                    model.detect(cv2.imread(str(image)), 0.25, 0.45)
                    return time.perf_counter() - started

                for image in images:
                    model.detect(cv2.imread(str(image)), 0.25, 0.45)  # warm, as the backend is
                turn["raw"] = 0
                seconds = interleaved({"raw": raw, "backend": backend}, args.repeat * len(images))
        finally:
            server.down()

    fetches = [p["fetch"] for p in parts]
    pairs = list(zip(seconds["raw"], seconds["backend"], fetches, strict=True))
    raw_ms = statistics.median(seconds["raw"]) * 1000
    backend_ms = statistics.median(seconds["backend"]) * 1000
    fetch_ms = statistics.median(fetches) * 1000
    ratio = statistics.median(b / r for r, b, _ in pairs)
    ratio_without_fetch = statistics.median((b - f) / r for r, b, f in pairs)
    print(RESULTS)
    print(f"yolo11n-pose as registered version {version}, runtime {config.runtime}, {os.cpu_count()} CPUs; "
          f"{len(images)} images, one task per /predict, {args.repeat} rounds; sides in turn image by image, medians")
    print("| side | ms per image |")
    print("|---|---|")
    print(f"| raw model (decode + detect, in process) | {raw_ms:.1f} |")
    print(f"| ML backend /predict (fetch from Label Studio + detect + regions, over HTTP) | {backend_ms:.1f} |")
    print(f"| of which the image's fetch from Label Studio (the backend's Server-Timing) | {fetch_ms:.1f} |")
    for step in ("decode", "detect", "regions"):
        if any(step in p for p in parts):
            print(f"| of which {step} (Server-Timing) | {statistics.median(p.get(step, 0.0) for p in parts) * 1000:.1f} |")
    print(f"| ratio backend / raw (target ≤ 1.2; median of the pairs) | {ratio:.2f} |")
    print(f"| ratio backend without the fetch / raw | {ratio_without_fetch:.2f} |")


def server_timing(header: str) -> dict[str, float]:
    """`fetch;dur=12.5, detect;dur=40.1` as seconds by name (0 for a name not there)."""
    out: dict[str, float] = {"fetch": 0.0}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, duration = part.partition(";dur=")
        out[name] = float(duration or 0) / 1000
    return out


if __name__ == "__main__":
    main()
