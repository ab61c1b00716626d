"""What the benchmarks share: where the bundled assets are, their common options, interleaved timing.

The servers a benchmark starts (a Label Studio or the detection service for this run) and the
load client come from the package (`poseops.devservers`, `poseops.loadtest`), as in the tests.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("POSEOPS_SHARED_DIR", ROOT.parent / "shared"))
PERSON_SPEC = ROOT / "label_config" / "skeletons" / "person.yaml"
DEFAULT_IMAGES = Path(os.environ.get("POSEOPS_SAMPLE_IMAGES", SHARED / "datasets" / "coco8-pose" / "images"))


RESULTS = "-- results --"  # a benchmark prints its figures after this line; `make bench` publishes them all


def prepare() -> None:
    """Offline, with the bundled weights where they are, telemetry off."""
    from poseops.devservers import use_bundled_assets
    from poseops.settings import quiet_telemetry

    use_bundled_assets(SHARED)
    quiet_telemetry()


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The images, weights, skeleton and runtime options of the serving benchmarks."""
    parser.add_argument("--images", type=Path, default=DEFAULT_IMAGES, help="folder of .jpg images (searched recursively)")
    parser.add_argument("--weights", default="yolo11n-pose.pt")
    parser.add_argument("--skeleton", type=Path, default=PERSON_SPEC)
    parser.add_argument("--runtime", default="auto", choices=["auto", "openvino", "onnx", "torch"],
                        help="auto: as the service picks (OpenVINO on a CPU)")


def model_images(args: argparse.Namespace) -> list[Path]:
    images = sorted(args.images.rglob("*.jpg"))
    if not images:
        raise SystemExit(f"no .jpg images under {args.images}")
    return images


def load_raw(args: argparse.Namespace, runtime: str | None = None):
    """The model in this process, as the service loads it (on `runtime` instead of --runtime when given)."""
    from poseops.inference import load_model
    from poseops.skeleton import load_skeleton

    return load_model(args.weights, load_skeleton(args.skeleton), runtime or args.runtime)


@contextmanager
def service(args: argparse.Namespace) -> Iterator:
    """The service as `poseops deploy` runs it, with the benchmark's model options, for this run."""
    from poseops.detector import ServiceConfig
    from poseops.devservers import service_for_run
    from poseops.weights import resolve_weights

    config = ServiceConfig(weights=str(Path(resolve_weights(args.weights)).resolve()), skeleton=args.skeleton,
                           runtime=args.runtime)
    with service_for_run(config) as server:
        print(f"service log: {server.log_file}", flush=True)
        yield server


def add_label_studio_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--label-studio-url", help="a running Label Studio to use (default: one started for the run)")
    parser.add_argument("--token", help="its API token")


@contextmanager
def label_studio(args: argparse.Namespace, work: Path) -> Iterator:
    """The Label Studio at --label-studio-url, or one for this run; poseops' flows in this process reach it."""
    from poseops.devservers import label_studio_env, label_studio_for_run

    if not args.label_studio_url:
        print("starting Label Studio for the run ...", flush=True)
    with label_studio_for_run(work / "home", ROOT / ".venv-labelstudio" / "bin" / "label-studio",
                              args.label_studio_url, args.token) as settings:
        os.environ.update(label_studio_env(settings))
        yield settings


def interleaved(sides: dict[str, Callable[[], float]], repeat: int) -> dict[str, list[float]]:
    """Seconds of each side, run `repeat` times in turn, every other round in reverse order (a b, b a, a b, ...),
    so that the machine's other load and any drift spread over all sides alike. A side returns its own
    seconds (it may time only part of what it does)."""
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    order = list(sides)
    for round_ in range(repeat):
        for name in order if round_ % 2 == 0 else reversed(order):
            seconds[name].append(sides[name]())
    return seconds
