"""The ML backend's /predict latency vs the raw model on the same images (target: ratio ≤ 1.2).

    python -m benchmarks.ml_backend [--repeat 3]

Label Studio started for the run holds the images as tasks; a registry (SQLite, in the run's
folder) holds yolo11n-pose as the champion; the backend runs as `poseops ml-backend up` runs it.
Each image is asked of the backend the way Label Studio asks it when a task opens (one task per
`POST /predict`: the backend fetches the image from Label Studio, detects, writes regions), and
given to the raw model in this process (decoded from disk, detected), in turn. Both sides run
the same exported model on the same runtime.
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
    parser.add_argument("--repeat", type=int, default=3, help="rounds over all the images, each side in turn")
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

                def backend() -> float:
                    started = time.perf_counter()
                    for task in tasks:
                        r = http.post("/predict", json={"tasks": [task]})
                        r.raise_for_status()
                    return (time.perf_counter() - started) / len(tasks)

                def raw() -> float:
                    started = time.perf_counter()
                    for image in images:
                        model.detect(cv2.imread(str(image)), 0.25, 0.45)
                    return (time.perf_counter() - started) / len(images)

                raw()
                seconds = interleaved({"raw": raw, "backend": backend}, args.repeat)
        finally:
            server.down()

    raw_ms = statistics.median(seconds["raw"]) * 1000
    backend_ms = statistics.median(seconds["backend"]) * 1000
    print(RESULTS)
    print(f"yolo11n-pose as registered version {version}, runtime {config.runtime}, {os.cpu_count()} CPUs; "
          f"{len(images)} images, one task per /predict; median of {args.repeat} rounds, sides in turn")
    print("| side | ms per image |")
    print("|---|---|")
    print(f"| raw model (decode + detect, in process) | {raw_ms:.1f} |")
    print(f"| ML backend /predict (fetch from Label Studio + detect + regions, over HTTP) | {backend_ms:.1f} |")
    print(f"| ratio backend / raw (target ≤ 1.2) | {backend_ms / raw_ms:.2f} |")


if __name__ == "__main__":
    main()
