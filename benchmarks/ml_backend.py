"""The ML backend's /predict latency vs the raw model on the same images (target: ratio ≤ 1.2).

    python -m benchmarks.ml_backend [--repeat 5]

Label Studio started for the run holds the images as tasks; a registry (SQLite, in the run's
folder) holds yolo11n-pose as the champion; the backend runs as `poseops ml-backend up` runs it.
Each image is asked of the backend the way Label Studio asks it when a task opens (one task per
`POST /predict`: the backend gets the image, detects, writes regions), and given to the raw
model in this process (decoded from disk, detected), in turn, image by image (a b c, c b a, ...),
so a busy machine's load falls on all sides alike; a ratio is the median of the images' ratios.
Both sides run the same exported model on the same runtime. The backend is asked about two
tasks per image: one uploaded as `poseops dataset upload` does (its data names the content
hash, so the backend reads the file from the uploads of the Label Studio poseops runs beside
it), and one imported another way (the backend downloads it from Label Studio). The backend's
`Server-Timing` header says how much of each call was getting the image, so each ratio is
given with and without it. With --label-studio-url (a Label Studio that is not this run's),
both kinds are downloaded.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
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
        from poseops.datasets import create_dataset, upload_images
        from poseops.detector import ServiceConfig
        from poseops.devservers import free_port
        from poseops.inference import PoseModel
        from poseops.labelstudio import LabelStudioClient
        from poseops.settings import load_settings
        from poseops.skeleton import load_skeleton

        with LabelStudioClient(settings) as client:
            project = create_dataset(client, settings, "bench-backend", PERSON_SPEC)[0]
            report = upload_images(client, settings, "bench-backend", images)  # as `poseops dataset upload`
            ids = dict(report.uploaded + report.duplicates)
            uploaded = [client.get_task(ids[image]) for image in images]
            imported = []  # the same images imported another way: tasks that name no content hash
            for image in images:
                url = client.upload_file(project.id, image.name, image.read_bytes(), "image/jpeg")
                imported.append(client.get_task(client.import_tasks(project.id, [{"image": url}])[0]))
        os.environ["POSEOPS_ML_BACKEND_URL"] = f"http://127.0.0.1:{free_port()}"
        server = stack.ml_backend(load_settings())
        server.up(timeout=120)
        try:
            config = ServiceConfig().with_model_files(files)
            model = PoseModel(config.weights, load_skeleton(config.skeleton), runtime=config.runtime)
            with httpx.Client(base_url=server.url, timeout=120) as http:
                answer = http.post("/predict", json={"tasks": [uploaded[0]]}).json()  # loads the champion
                version = answer["results"][0]["model_version"]
                parts: dict[str, list[dict[str, float]]] = {"uploaded": [], "imported": []}  # the Server-Timing
                turn = {"raw": 0, "uploaded": 0, "imported": 0}  # each side's next image

                def backend(side: str, tasks: list[dict]) -> Callable[[], float]:
                    def ask() -> float:
                        task = tasks[turn[side] % len(tasks)]
                        turn[side] += 1
                        started = time.perf_counter()
                        r = http.post("/predict", json={"tasks": [task]})
                        r.raise_for_status()
                        took = time.perf_counter() - started
                        parts[side].append(server_timing(r.headers.get("Server-Timing", "")))
                        return took

                    return ask

                def raw() -> float:
                    image = images[turn["raw"] % len(images)]
                    turn["raw"] += 1
                    started = time.perf_counter()
                    model.detect(cv2.imread(str(image)), 0.25, 0.45)
                    return time.perf_counter() - started

                for image in images:
                    model.detect(cv2.imread(str(image)), 0.25, 0.45)  # warm, as the backend is
                turn["raw"] = 0
                seconds = interleaved({"raw": raw, "uploaded": backend("uploaded", uploaded),
                                       "imported": backend("imported", imported)}, args.repeat * len(images))
        finally:
            server.down()

    print(RESULTS)
    print(f"yolo11n-pose as registered version {version}, runtime {config.runtime}, {os.cpu_count()} CPUs; "
          f"{len(images)} images, one task per /predict, {args.repeat} rounds; sides in turn image by image, medians; "
          "ratios: the median of each image's ratio to the raw model's time in the same turn")
    print("| side | ms per image | of which the image's fetch (Server-Timing) | ratio to raw (target ≤ 1.2) "
          "| ratio without the fetch |")
    print("|---|---|---|---|---|")
    print(f"| raw model (decode + detect, in process) | {statistics.median(seconds['raw']) * 1000:.1f} | | | |")
    names = {"uploaded": "ML backend /predict, task uploaded by poseops (its image read from Label Studio's uploads "
                         "here, checked by its sha256)",
             "imported": "ML backend /predict, task imported another way (its image downloaded from Label Studio)"}
    for side, name in names.items():
        fetches = [p["fetch"] for p in parts[side]]
        pairs = list(zip(seconds["raw"], seconds[side], fetches, strict=True))
        print(f"| {name} | {statistics.median(seconds[side]) * 1000:.1f} | {statistics.median(fetches) * 1000:.1f} "
              f"| {statistics.median(b / r for r, b, _ in pairs):.2f} "
              f"| {statistics.median((b - f) / r for r, b, f in pairs):.2f} |")
    steps = {step: statistics.median(p.get(step, 0.0) for p in parts["uploaded"] + parts["imported"]) * 1000
             for step in ("decode", "detect", "regions")}
    print("in the backend (Server-Timing, median ms): " + ", ".join(f"{k} {v:.1f}" for k, v in steps.items()))


def server_timing(header: str) -> dict[str, float]:
    """`fetch;dur=12.5, detect;dur=40.1` as seconds by name (0 for a name not there)."""
    out: dict[str, float] = {"fetch": 0.0}
    for part in filter(None, (p.strip() for p in header.split(","))):
        name, _, duration = part.partition(";dur=")
        out[name] = float(duration or 0) / 1000
    return out


if __name__ == "__main__":
    main()
