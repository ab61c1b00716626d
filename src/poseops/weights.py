"""Finding model weights, and preparing Ultralytics to run without the internet.

Pretrained weights such as `yolo11n-pose.pt` are looked up in the directory named
by `POSEOPS_WEIGHTS_DIR` (or Ultralytics' own `weights_dir` setting); where they
are not found, the bare name is handed to Ultralytics, which downloads it the
ordinary way on a machine with internet.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
)


def weights_dir() -> Path | None:
    value = os.environ.get("POSEOPS_WEIGHTS_DIR")
    return Path(value) if value else None


def resolve_weights(name_or_path: str | os.PathLike) -> str:
    """A local path for `name_or_path` when one exists, else the name for Ultralytics to download.

    `.yaml` model definitions (training from scratch) are returned unchanged.
    """
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        return text
    directory = weights_dir()
    if directory is not None and (directory / Path(text).name).is_file():
        return str(directory / Path(text).name)
    return text


def prepare_ultralytics(config_dir: Path | None = None) -> None:
    """Set the environment Ultralytics reads at import: its config dir and offline mode when asked.

    Call before importing `ultralytics`. Plots need `Arial.ttf` in the config dir; offline,
    Ultralytics cannot download it, so a system font is copied to that name when one exists.
    """
    if config_dir is None:
        config_dir = Path(os.environ.get("YOLO_CONFIG_DIR") or Path(os.environ.get("POSEOPS_HOME", ".poseops")) / "ultralytics")
    config_dir = config_dir.resolve()
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    font = config_dir / "Arial.ttf"
    if not font.exists():
        for candidate in FONT_CANDIDATES:
            if Path(candidate).is_file():
                shutil.copyfile(candidate, font)
                break
