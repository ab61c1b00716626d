"""Package a registered model version as a Bento: the BentoML model store, then `bentoml build`.

Runs in a process of its own, with BENTOML_HOME set (the deploy step does that: the
stores live under `<POSEOPS_HOME>/bentoml`), so that no other BentoML state of the
calling process is touched:

    BENTOML_HOME=.poseops/bentoml python -m poseops.bento_build FILES_DIR [--runtime onnx]

FILES_DIR holds what `poseops.deploy.fetch_version` downloaded from the MLflow registry
(best_openvino_model/, model.onnx, best.pt, skeleton.yaml, lineage.json; best_int8_openvino_model/ when one
was registered). The model goes into the model store
as `<registered name>:v<version>` with the lineage as its metadata; the Bento
`poseops:<name>-v<version>-<id>` packs the service, the playground, that model and the
project's wheel and pins, so `bentoml serve TAG` runs it here and `bentoml containerize
TAG` gives an image. Prints the Bento's tag on the last line.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from poseops.paths import checkout_path
from poseops.runtimes import RUNTIMES

BENTO_NAME = "poseops"
MODEL_FILES = ("best_openvino_model", "best_int8_openvino_model", "model.onnx", "best.pt", "skeleton.yaml", "lineage.json")
DEPLOYED_MODEL_FILE = "deployed_model.json"  # read by bentos/service.py: the model store tag it serves
KEEP_BENTOS = 3


def store_name(registered_name: str) -> str:
    """A BentoML-valid name (lowercase letters, digits, '-', '_', '.') for a registered model name."""
    name = re.sub(r"[^a-z0-9._-]+", "-", registered_name.lower()).strip("-._")
    return name or "model"


def save_model(files: Path) -> str:
    """The model store tag for the version in `files`, saving it there first if it is not yet."""
    import bentoml
    from bentoml.exceptions import NotFound

    lineage = json.loads((files / "lineage.json").read_text())
    # the run in the version: another registry's (or a recreated one's) version N is another model
    run = re.sub(r"[^a-z0-9]", "", str(lineage.get("mlflow_run_id") or "").lower())[:12]
    tag = f"{store_name(lineage['model_name'])}:v{lineage['model_version']}" + (f"-{run}" if run else "")
    try:
        return str(bentoml.models.get(tag).tag)
    except NotFound:
        pass
    labels = {"registered_model": lineage["model_name"], "registered_version": str(lineage["model_version"])}
    metadata = {k: v for k, v in lineage.items() if isinstance(v, str | int | float) or v is None}
    with bentoml.models.create(tag, module="poseops", labels=labels, metadata=metadata) as model:
        for name in MODEL_FILES:
            if (files / name).is_dir():
                shutil.copytree(files / name, Path(model.path) / name)
            elif (files / name).is_file():
                shutil.copy2(files / name, Path(model.path) / name)
    return tag


def project_wheel(dest: Path) -> Path:
    """The poseops wheel, built from this checkout, so that the Bento's image can install the package."""
    dest.mkdir(parents=True, exist_ok=True)
    repo = checkout_path("src").parent
    scratch = repo / "build"  # setuptools' build folder in the checkout: removed again unless it was there
    had_scratch = scratch.exists()
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                           "--disable-pip-version-check", "-q", "-w", str(dest), str(repo)],
                          capture_output=True, text=True, check=False)
    if not had_scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    wheels = sorted(dest.glob("poseops-*.whl"))
    if done.returncode != 0 or not wheels:
        raise RuntimeError(f"building the poseops wheel failed: {done.stderr.strip()[-1000:]}")
    return wheels[-1]


def build_bento(model_tag: str, runtime: str) -> str:
    """`bentoml build` of the service serving `model_tag`; returns the Bento's tag."""
    import bentoml

    with tempfile.TemporaryDirectory(prefix="poseops-bento-") as tmp:
        context = Path(tmp)
        service_dir = checkout_path("bentos")
        shutil.copy2(service_dir / "service.py", context / "service.py")
        shutil.copytree(service_dir / "static", context / "static")
        shutil.copy2(checkout_path("constraints.txt"), context / "constraints.txt")
        (context / DEPLOYED_MODEL_FILE).write_text(json.dumps({"tag": model_tag}) + "\n")
        wheel = project_wheel(context / "wheels")
        bentofile = bentofile_for(yaml.safe_load((service_dir / "bentofile.yaml").read_text()), model_tag, runtime,
                                  str(wheel.relative_to(context)))
        (context / "bentofile.yaml").write_text(yaml.safe_dump(bentofile, sort_keys=False))
        here = Path.cwd()
        os.chdir(context)  # BentoML resolves the files a bentofile names inside the working directory
        try:
            bento = bentoml.bentos.build_bentofile("bentofile.yaml", build_ctx=str(context))
        finally:
            os.chdir(here)
    prune_old_bentos(keep=str(bento.tag))
    return str(bento.tag)


def bentofile_for(base: dict, model_tag: str, runtime: str, wheel: str) -> dict:
    """bentos/bentofile.yaml plus what depends on the version packed: model, wheel, runtime, Python."""
    python_version = f"{sys.version_info.major}.{sys.version_info.minor}"
    return {
        **base,
        "labels": {**base.get("labels", {}), "model": model_tag.replace(":", "-")},
        "include": [*base.get("include", []), DEPLOYED_MODEL_FILE],
        "python": {**base.get("python", {}), "wheels": [wheel]},
        "envs": [*base.get("envs", []), {"name": "POSEOPS_RUNTIME", "value": runtime}],
        "docker": {**base.get("docker", {}), "python_version": python_version},
    }


def prune_old_bentos(keep: str) -> None:
    """Delete all but the newest KEEP_BENTOS Bentos of the service (never `keep`)."""
    import bentoml

    bentos = sorted(bentoml.bentos.list(BENTO_NAME), key=lambda b: b.info.creation_time, reverse=True)
    for bento in bentos[KEEP_BENTOS:]:
        if str(bento.tag) != keep:
            bentoml.bentos.delete(bento.tag)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, help="folder with best_openvino_model/, model.onnx, best.pt, skeleton.yaml, lineage.json")
    parser.add_argument("--runtime", default="auto", choices=RUNTIMES)
    args = parser.parse_args(argv)
    model_tag = save_model(args.files)
    print(build_bento(model_tag, args.runtime))


if __name__ == "__main__":
    main()
