"""Deploy a registered model version as the detection service.

The version's files (ONNX export, best.pt, the skeleton spec it was trained with) come
from the MLflow registry into `<home>/deployments/<name>-v<version>-<run>/`, with a lineage
file (model version, MLflow run, dataset DVC hash, Label Studio snapshot) that the
service reports at `/metadata`. The model is loaded and checked here first: a bad
version fails before the running service is touched. Then the version goes into the
BentoML model store and a Bento is built around it (`poseops.bento_build`, stores under
`<home>/bentoml`), and the service (`bentoml serve BENTO`, managed like the other
servers) is restarted on that Bento; we wait until `/readyz` answers and `/metadata`
names the version just deployed. Deploys run one at a time (`deploy_lock`: `<home>/service/deploy.lock`, or
the Prefect server on the server profile), and a port that something poseops did not start answers on is refused.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import httpx

from poseops import tracking
from poseops.errors import PoseopsError
from poseops.imageio import DECODE_MEMORY_ENV
from poseops.paths import checkout_path
from poseops.processes import ManagedServer, port_of
from poseops.settings import Settings, child_env, secure_home


class DeployError(PoseopsError, RuntimeError):
    pass


@dataclass(frozen=True)
class Deployment:
    url: str
    model_name: str
    model_version: str
    run_id: str
    files: Path
    bento: str

    @property
    def model_ref(self) -> str:
        return f"{self.model_name}:{self.model_version}"


NEEDED_FILES = ("model.onnx", "skeleton.yaml")
COMPLETE = ".complete"  # written last into a cached download: a folder without it is fetched again


def fetch_version(model_uri: str, settings: Settings, fresh: bool = False) -> tuple[object, Path]:
    """The registered version `model_uri` names, and a local folder with its files and lineage.

    The files are cached under `<home>/deployments/`; a cache that is incomplete (or `fresh`) is
    downloaded again into a new folder and swapped in whole, so a half-written one heals.
    """
    mlc = tracking.client(must_exist=True)
    version = tracking.resolve_model_uri(mlc, model_uri)
    # the run in the name: another registry's (or a recreated one's) version N is another model
    dest = (settings.home / "deployments" / f"{version.name}-v{version.version}-{version.run_id[:12]}").resolve()
    files = dest / "model"
    if fresh or not all((files / name).is_file() for name in (*NEEDED_FILES, COMPLETE)):
        download_whole(f"models:/{version.name}/{version.version}", files, f"{model_uri} (version {version.version})")
    tags = version.tags or {}
    lineage = {
        "model_name": version.name,
        "model_version": str(version.version),
        "mlflow_run_id": version.run_id,
        "dataset_dvc_hash": tags.get("dataset_dvc_hash"),
        "label_studio_snapshot_id": tags.get("label_studio_snapshot"),
        "label_studio_project": tags.get("label_studio_project"),
        "metrics": {k.removeprefix("metrics."): v for k, v in tags.items() if k.startswith("metrics.")},
    }
    (files / "lineage.json").write_text(json.dumps(lineage, indent=2) + "\n")
    return version, files


def download_whole(uri: str, files: Path, what: str) -> None:
    """Download the version's files into a fresh folder beside `files`, check them, then swap them in."""
    files.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=files.parent, prefix=".download-"))
    try:
        tracking.download(uri, work / "model")
        for needed in NEEDED_FILES:
            if not (work / "model" / needed).is_file():
                raise DeployError(f"{what} has no {needed} among its files: it was not registered by `poseops train`; "
                                  "register a version with the full pipeline")
        (work / "model" / COMPLETE).write_text("")
        if files.exists():
            files.rename(work / "replaced")
        (work / "model").rename(files)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def check_model(config) -> None:
    """Load the model with its skeleton as the service will: fails on a broken or mismatched version."""
    from poseops.inference import ModelError, PoseModel
    from poseops.skeleton import SkeletonError, load_skeleton

    try:
        PoseModel(config.weights, load_skeleton(config.skeleton), runtime=config.runtime, imgsz=config.imgsz)
    except (ModelError, SkeletonError) as e:
        raise DeployError(f"the model does not load ({e}); the running service was left as it was") from None
    except Exception as e:  # noqa: BLE001 - ONNX Runtime and torch raise their own types on a damaged file
        raise DeployError(f"the model in {Path(config.weights).parent} does not load ({type(e).__name__}: "
                          f"{str(e)[:300]}); the running service was left as it was") from None


def checked_version(settings: Settings, model_uri: str, config) -> tuple[object, Path]:
    """The version's files, loaded and checked as the service will; a damaged cached copy is fetched again once."""
    version, files = fetch_version(model_uri, settings)
    try:
        check_model(config.with_model_files(files))
    except DeployError:
        version, files = fetch_version(model_uri, settings, fresh=True)
        check_model(config.with_model_files(files))
    return version, files


def bentoml_env(settings: Settings) -> dict[str, str]:
    """BentoML's model and Bento stores under the poseops home."""
    return {"BENTOML_HOME": str((settings.home / "bentoml").resolve())}


def build_bento(files: Path, settings: Settings, runtime: str) -> str:
    """The model version in `files` saved to the BentoML model store and packed into a new Bento; its tag."""
    done = subprocess.run([sys.executable, "-m", "poseops.bento_build", str(files), "--runtime", runtime],
                          env=child_env(bentoml_env(settings)), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise DeployError(f"building the Bento failed; the running service was left as it was:\n"
                          f"{done.stderr.strip()[-2000:]}")
    return done.stdout.strip().splitlines()[-1]


def service_server(settings: Settings, config=None, bento: str | None = None) -> ManagedServer:
    """The detection service as a managed `bentoml serve` process on settings.service_url.

    Serves the Bento `bento` when given (what `deploy` does), else the service in
    `bentos/` configured by `config` (a ServiceConfig).
    """
    url = settings.service_url
    secure_home(settings.home)
    env = {**(config.to_env() if config is not None else {}), "POSEOPS_HOME": str(settings.home.resolve()),
           **bentoml_env(settings), **DECODE_MEMORY_ENV}
    target = [bento] if bento else ["service:PoseDetector", "--working-dir", str(checkout_path("bentos"))]
    command = [sys.executable, "-m", "bentoml", "serve", *target, "--host", "127.0.0.1", "--port", str(port_of(url, 3000))]
    return ManagedServer("the detection service", (settings.home / "service").resolve(), url, f"{url}/readyz",
                         command, env, hint="If the port is taken, set POSEOPS_SERVICE_URL to another port.")


def deploy(settings: Settings, model_uri: str, runtime: str = "auto", timeout: float = 300.0) -> Deployment:
    """Serve the registered version `model_uri` (e.g. models:/poseops-pose@champion), replacing the running one."""
    from poseops.detector import ServiceConfig

    with deploy_lock(settings):
        if service_server(settings).status().foreign:  # before any work: the port is not ours to serve on
            raise DeployError(f"something poseops did not start answers at {settings.service_url}; nothing was "
                              "deployed. Stop that server, or set POSEOPS_SERVICE_URL to another port")
        config = ServiceConfig(runtime=runtime)
        version, files = checked_version(settings, model_uri, config)  # before anything running is touched
        bento = build_bento(files, settings, runtime)
        server = service_server(settings, config, bento)
        server.restart(timeout)
        verify_serving(settings.service_url, version.name, str(version.version))
    return Deployment(settings.service_url, version.name, str(version.version), version.run_id, files, bento)


DEPLOY_WAIT_S = 3600.0  # how long a deploy waits for the one before it


def deploy_lock(settings: Settings) -> contextlib.AbstractContextManager[None]:
    """One deploy at a time: the later one waits, then replaces the earlier one's service.

    On this home (`<home>/service/deploy.lock`) on the embedded profile; across machines on the
    server profile (`poseops.locks`, `deploy`).
    """
    from poseops.locks import exclusive

    return exclusive(settings, "deploy", wait_s=DEPLOY_WAIT_S, what="the deploy of the detection service",
                     lock_file=(settings.home / "service" / "deploy.lock").resolve())


def verify_serving(url: str, model_name: str, model_version: str) -> None:
    """Fail unless the service at `url` reports (`/metadata`) the model version just deployed."""
    try:
        lineage = httpx.get(f"{url}/metadata", timeout=30).raise_for_status().json().get("lineage") or {}
    except (httpx.HTTPError, ValueError, AttributeError) as e:
        raise DeployError(f"the service at {url} answers, but its /metadata could not be read ({e}); "
                          "check its log under <home>/service/server.log") from None
    serving = (str(lineage.get("model_name")), str(lineage.get("model_version")))
    if serving != (model_name, model_version):
        raise DeployError(f"the service at {url} serves {serving[0]} version {serving[1]}, not the deployed "
                          f"{model_name} version {model_version}; stop what answers there and deploy again")
