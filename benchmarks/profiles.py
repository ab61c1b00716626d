"""One improvement loop on each profile, same data: the server profile (PostgreSQL, S3, a work pool) vs embedded.

    python -m benchmarks.profiles

Each profile gets a fresh home and workspace, the same dataset (coco8-pose with its labels as annotations,
plus two unlabeled coco-mini-train images for the autolabel step) and the same tiny training (1 epoch at
320 px), and runs the loop once, as a person would start it:

- embedded: Label Studio on SQLite (started for the run), the Prefect server on SQLite (`poseops prefect up`),
  MLflow on SQLite, a local DVC remote; `poseops loop NAME` (the loop in that command's process);
- server: an S3 endpoint (moto in server mode), `poseops stack up --profile server` (a PostgreSQL cluster and
  Label Studio, the MLflow tracking server and the Prefect server on it, artifacts and the DVC remote on S3),
  `poseops deploy-flows --pool`, a `prefect worker start --pool`; `prefect deployment run
  improvement-loop/loop --watch` (the loop in a process the worker starts).

Starting the servers is not counted: each side's time is its one command, until the loop is done.
Prints both times and the ratio server/embedded (one run each: the machine's load moves both).
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from benchmarks.common import PERSON_SPEC, RESULTS, ROOT, SHARED, prepare
from poseops.processes import stop_group

POSEOPS = [sys.executable, "-m", "poseops.cli"]
PREFECT = [sys.executable, "-m", "prefect"]
TINY_TRAINING = {"epochs": 1, "imgsz": 320, "batch": 4, "workers": 0, "plots": False, "patience": 0,
                 "optimizer": "SGD", "lr0": 0.001, "warmup_epochs": 0.0}
POOL = "poseops-bench"
BUCKET = "poseops-bench"


def free_url() -> str:
    from poseops.devservers import free_port

    return f"http://127.0.0.1:{free_port()}"


def workspace(dest: Path) -> Path:
    from poseops.demo import make_workspace

    return make_workspace(dest, {"train": TINY_TRAINING, "mlflow": {"experiment": "profiles"},
                                 "pull": {"min_images": 4, "val_fraction": 0.25, "allow_unlabeled": True}})


def upload(env: dict[str, str], name: str) -> None:
    """coco8-pose with its labels, and two unlabeled images, into a new dataset of the Label Studio `env` names."""
    from poseops.coco import read_yolo_pose
    from poseops.datasets import create_dataset, upload_images
    from poseops.labelstudio import LabelStudioClient
    from poseops.regions import poses_to_results
    from poseops.settings import Settings
    from poseops.skeleton import load_skeleton

    settings = Settings(home=Path(env["POSEOPS_HOME"]), label_studio_url=env["LABEL_STUDIO_URL"],
                        label_studio_token=env["LABEL_STUDIO_USER_TOKEN"])
    skeleton = load_skeleton(PERSON_SPEC)
    coco8 = SHARED / "datasets" / "coco8-pose"
    images = read_yolo_pose(coco8, "train", ["person"]) + read_yolo_pose(coco8, "val", ["person"])
    unlabeled = sorted((SHARED / "datasets" / "coco-mini-train" / "images").glob("*.jpg"))[:2]
    with LabelStudioClient(settings) as client:
        create_dataset(client, settings, name, PERSON_SPEC)
        upload_images(client, settings, name, [im.path for im in images] + unlabeled,
                      labels={im.path: poses_to_results(skeleton, im.poses, im.width, im.height) for im in images})


def run(command: list[str], cwd: Path, env: dict[str, str], timeout: float = 1800) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout


def timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    out = run(command, cwd, env)
    seconds = time.perf_counter() - started
    print(out[-1500:], flush=True)
    return seconds


@contextmanager
def background(command: list[str], cwd: Path, env: dict[str, str], log: Path) -> Iterator[subprocess.Popen]:
    """A process in its own group, its output in `log`; stopped (SIGINT, then SIGKILL) on the way out."""
    with log.open("ab") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    try:
        yield process
    finally:
        stop_group(process, signal.SIGINT, timeout=30)


def base_env(home: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "POSEOPS_", "MLFLOW_", "PREFECT_"))}
    return {**keep, "POSEOPS_HOME": str(home), "LABEL_STUDIO_URL": free_url(), "LABEL_STUDIO_USERNAME": "bench@poseops.local",
            "LABEL_STUDIO_PASSWORD": secrets.token_urlsafe(12), "LABEL_STUDIO_USER_TOKEN": secrets.token_hex(20),
            "POSEOPS_LABEL_STUDIO_BIN": str(ROOT / ".venv-labelstudio" / "bin" / "label-studio"),
            "POSEOPS_PREFECT_URL": free_url(), "POSEOPS_MLFLOW_UI_URL": free_url(), "POSEOPS_SERVICE_URL": free_url(),
            "POSEOPS_WEIGHTS_DIR": os.environ.get("POSEOPS_WEIGHTS_DIR", "")}


def embedded_loop(work: Path) -> float:
    home = work / "embedded" / "home"
    repo = workspace(work / "embedded" / "repo")
    env = base_env(home)
    try:
        run([*POSEOPS, "labelstudio", "up"], repo, env)
        run([*POSEOPS, "prefect", "up"], repo, env)
        name = f"bench-{uuid.uuid4().hex[:6]}"
        upload(env, name)
        return timed([*POSEOPS, "loop", name], repo, env)
    finally:
        for what in ("service", "prefect", "labelstudio"):
            subprocess.run([*POSEOPS, what, "down"], cwd=repo, env=env, capture_output=True)


@contextmanager
def moto_server(log: Path) -> Iterator[str]:
    url = free_url()
    command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", url.rsplit(":", 1)[1]]
    with background(command, log.parent, {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}, log):
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/moto-api/data.json", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        yield url


def server_loop(work: Path) -> float:
    folder = Path(tempfile.mkdtemp(prefix="poseops-bench-server-"))  # PostgreSQL's OS user passes through it
    folder.chmod(0o711)
    home = folder / "home"
    repo = workspace(work / "server" / "repo")
    with moto_server(work / "moto.log") as s3:
        env = {**base_env(home), "POSEOPS_PROFILE": "server", "POSEOPS_S3_ENDPOINT_URL": s3,
               "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1",
               "POSEOPS_DVC_REMOTE": f"s3://{BUCKET}/dvc", "POSEOPS_ARTIFACTS_URL": f"s3://{BUCKET}/mlartifacts",
               "POSEOPS_DATABASE_URL": f"postgresql://poseops:{secrets.token_urlsafe(12)}@{free_url()[7:]}"}
        import boto3

        boto3.client("s3", endpoint_url=s3, aws_access_key_id=env["AWS_ACCESS_KEY_ID"], region_name="us-east-1",
                     aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=BUCKET)
        try:
            run([*POSEOPS, "stack", "up", "--profile", "server"], repo, env)
            name = f"bench-{uuid.uuid4().hex[:6]}"
            upload(env, name)
            run([*POSEOPS, "deploy-flows", "--pool", POOL], repo, env)
            worker_env = {**env, "PREFECT_API_URL": f"{env['POSEOPS_PREFECT_URL']}/api"}
            with background([*PREFECT, "worker", "start", "--pool", POOL], repo, worker_env, work / "worker.log"):
                return timed([*PREFECT, "deployment", "run", "improvement-loop/loop", "--param", f"dataset={name}",
                              "--watch"], repo, worker_env)
        finally:
            subprocess.run([*POSEOPS, "service", "down"], cwd=repo, env=env, capture_output=True)
            subprocess.run([*POSEOPS, "stack", "down", "--profile", "server"], cwd=repo, env=env, capture_output=True)
            shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    prepare()
    work = Path(tempfile.mkdtemp(prefix="poseops-bench-profiles-"))
    print(f"work folder: {work}", flush=True)
    embedded = embedded_loop(work)
    server = server_loop(work)
    print(RESULTS)
    print(f"one loop, embedded profile (poseops loop):                          {embedded:7.1f} s")
    print(f"one loop, server profile (deployment run on a process work pool):   {server:7.1f} s")
    print(f"server / embedded: {server / embedded:.2f}")
    print(f"load average (1, 5, 15 min) at the end: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
