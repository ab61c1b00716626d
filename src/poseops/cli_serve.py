"""CLI commands of the detection service: `serve`, `detect`, `api-key`, `load-test` (`predict` is `poseops.cli_predict`).

`register(app)` adds them to the `poseops` Typer app; `python -m poseops.cli_serve`
runs them on their own.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Annotated

import typer

from poseops.cli_common import user_errors
from poseops.constants import DEFAULT_CONF_THRES, DEFAULT_IOU_THRES, IMAGE_SUFFIXES, VIDEO_SUFFIXES
from poseops.detector import DEFAULT_SKELETON, DEFAULT_WEIGHTS
from poseops.errors import PoseopsError
from poseops.imageio import DECODE_MEMORY_ENV
from poseops.paths import checkout_path
from poseops.settings import child_env

WeightsOpt = Annotated[str, typer.Option(help="a .pt checkpoint or .onnx export (bare names are looked up in POSEOPS_WEIGHTS_DIR)")]
SkeletonOpt = Annotated[Path, typer.Option(help="the skeleton spec the model was trained with")]
RuntimeOpt = Annotated[str, typer.Option(help="auto (the best for the CPU: openvino), openvino, onnx or torch; a .pt is exported once and cached")]
ConfOpt = Annotated[float, typer.Option(min=0.0, max=1.0, help="confidence threshold")]
IouOpt = Annotated[float, typer.Option(min=0.0, max=1.0, help="IoU threshold of non-maximum suppression")]


def default_service_dir() -> Path:
    local = Path.cwd() / "bentos"
    if (local / "service.py").is_file():
        return local
    return checkout_path("bentos")


def serve(
    weights: WeightsOpt = DEFAULT_WEIGHTS,
    skeleton: SkeletonOpt = Path(DEFAULT_SKELETON),
    host: Annotated[str, typer.Option(help="address to bind; 0.0.0.0 exposes it to the network")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port")] = 3000,
    runtime: RuntimeOpt = "auto",
    imgsz: Annotated[int | None, typer.Option(help="model input size (default: the size the model was trained or exported at)")] = None,
    api_keys: Annotated[Path | None, typer.Option(help="keys file (see `poseops api-key`); requests then need a key")] = None,
    lineage: Annotated[Path | None, typer.Option(help="lineage JSON written by the deploy step")] = None,
    service_dir: Annotated[Path | None, typer.Option(help="folder holding service.py (default: ./bentos)")] = None,
) -> None:
    """Serve the model over HTTP with `bentoml serve`: POST /detect, playground at /, docs at /docs."""
    from dataclasses import replace

    from poseops.detector import Detector, ServiceConfig
    from poseops.settings import load_settings
    from poseops.weights import resolve_weights

    resolved = resolve_weights(weights)
    try:
        config = replace(  # the options over the environment's settings (limits such as POSEOPS_MAX_VIDEO_BYTES)
            ServiceConfig.from_env(),
            weights=str(Path(resolved).resolve()) if Path(resolved).is_file() else weights,
            skeleton=skeleton,
            runtime=runtime,
            imgsz=imgsz,
            api_keys=api_keys,
            lineage=lineage,
        )
        Detector(config)  # checks paths, spec, keys and lineage now, before the server starts
    except (ValueError, RuntimeError) as e:
        raise PoseopsError(str(e)) from None
    env = child_env({**config.to_env(), "POSEOPS_HOME": str(load_settings().home.resolve()), **DECODE_MEMORY_ENV})
    command = [
        sys.executable, "-m", "bentoml", "serve", "service:PoseDetector",
        "--working-dir", str((service_dir or default_service_dir()).resolve()),
        "--host", host, "--port", str(port),
    ]  # fmt: skip
    typer.echo(f"poseops: serving {Path(config.weights).name} ({runtime}) on http://{host}:{port}  (playground /, docs /docs)")
    process = subprocess.Popen(command, env=env)
    signal.signal(signal.SIGTERM, lambda *_: process.terminate())  # stopping `poseops serve` stops the server
    try:
        code = process.wait()
    except KeyboardInterrupt:
        process.terminate()
        code = process.wait(timeout=30)
    raise typer.Exit(code)


def detect(
    image: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="image file")],
    url: Annotated[str | None, typer.Option(help="service URL (default: POSEOPS_SERVICE_URL, the deployed service)")] = None,
    fallback_url: Annotated[str | None, typer.Option(envvar="POSEOPS_FALLBACK_URL", help="tried when the main URL keeps failing")] = None,
    api_key: Annotated[str | None, typer.Option(envvar="POSEOPS_API_KEY", help="API key (better given by POSEOPS_API_KEY)")] = None,
    conf_thres: ConfOpt = DEFAULT_CONF_THRES,
    iou_thres: IouOpt = DEFAULT_IOU_THRES,
    ocr_model: Annotated[str | None, typer.Option(help="small | medium | large")] = None,
    ocr_classes: Annotated[str | None, typer.Option(help="comma-separated classes whose crops to read")] = None,
    ocr_language: Annotated[str | None, typer.Option(help="language code (Tesseract-style), e.g. deu; /metadata lists each model's")] = None,
    timeout: Annotated[float, typer.Option(help="seconds per request")] = 60.0,
    retries: Annotated[int, typer.Option(help="retries per URL on connection errors and 5xx")] = 3,
) -> None:
    """Send one image to a running service and print its detections as JSON."""
    from poseops.client import DetectClient
    from poseops.settings import load_settings

    with DetectClient(url or load_settings().service_url, fallback_url, api_key, timeout=timeout,
                      retries=retries) as client:
        detections = client.detect(image, conf_thres, iou_thres, ocr_model, ocr_classes, ocr_language)
    typer.echo(json.dumps(detections, indent=2))


def collect_sources(paths: list[Path]) -> list[Path]:
    """Image and video files: the files given, and those inside the folders given (sorted)."""
    wanted = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    sources: list[Path] = []
    for path in paths:
        if path.is_dir():
            sources += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in wanted)
        elif path.suffix.lower() in wanted:
            sources.append(path)
        else:
            raise ValueError(f"{path}: not an image or video ({', '.join(sorted(wanted))})")
    return sources


def api_key(
    name: Annotated[str, typer.Argument(help="who the key is for")],
    keys_file: Annotated[Path | None, typer.Option(help="keys file (default: $POSEOPS_HOME/api-keys.yaml)")] = None,
    monthly_quota: Annotated[int | None, typer.Option(min=0, help="requests per calendar month; omit for no limit")] = None,
    revoke: Annotated[bool, typer.Option("--revoke", help="remove the key named NAME instead; a running service refuses it at once")] = False,
) -> None:
    """Make an API key: its hash goes into the keys file, the key itself is printed once. --revoke removes one."""
    from poseops.apikeys import add_key, revoke_key
    from poseops.settings import load_settings

    path = keys_file or load_settings().home / "api-keys.yaml"
    try:
        if revoke:
            revoke_key(path, name)
            typer.echo(f"revoked {name!r} in {path}; a service using that file refuses the key from now on", err=True)
            return
        key = add_key(path, name, monthly_quota)
    except ValueError as e:
        raise PoseopsError(str(e)) from None
    typer.echo(f"added {name!r} to {path}; serve with --api-keys {path}. The key (shown only now):", err=True)
    typer.echo(key)


def load_test(
    paths: Annotated[list[Path], typer.Argument(exists=True, help="images or folders of them to send in turn")],
    url: Annotated[str | None, typer.Option(help="service URL (default: the deployed service, POSEOPS_SERVICE_URL)")] = None,
    clients: Annotated[int, typer.Option(min=1, max=64, help="concurrent clients")] = 4,
    seconds: Annotated[float, typer.Option(min=1, max=3600, help="how long to send")] = 60.0,
    max_requests: Annotated[int, typer.Option(min=1, help="stop after this many requests in all")] = 10_000,
    api_key: Annotated[str | None, typer.Option(envvar="POSEOPS_API_KEY", help="API key (better given by POSEOPS_API_KEY)")] = None,
    pid: Annotated[int | None, typer.Option(help="the service's process id, for its memory (default: the deployed service's)")] = None,
) -> None:
    """Load the running service with several clients for a fixed time; print failures, p50/p99 latency, memory."""
    from poseops.deploy import service_server
    from poseops.loadtest import run_load
    from poseops.settings import load_settings

    settings = load_settings()
    deployed = service_server(settings).status()
    if url is None:
        url = settings.service_url
        pid = pid or deployed.pid
    elif pid is None and url.rstrip("/") == settings.service_url.rstrip("/"):
        pid = deployed.pid
    images = [p for p in collect_sources(paths) if p.suffix.lower() in IMAGE_SUFFIXES]
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    try:
        result = run_load(url, images, clients, seconds, max_requests, headers, pid)
    except ValueError as e:
        raise PoseopsError(str(e)) from None
    summary = result.summary()
    typer.echo(json.dumps(summary))
    for failure in result.failures[:5]:
        typer.echo(f"failed: {failure}", err=True)
    if result.failures:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add the service commands to the `poseops` CLI."""
    for name, command in (("serve", serve), ("detect", detect), ("api-key", api_key), ("load-test", load_test)):
        app.command(name)(user_errors(command))


if __name__ == "__main__":
    standalone = typer.Typer(help="poseops detection service commands", no_args_is_help=True)
    register(standalone)
    standalone()
