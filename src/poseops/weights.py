"""Finding model weights, and preparing Ultralytics to run without the internet.

Pretrained weights such as `yolo11n-pose.pt` are looked up in the directory named
by `POSEOPS_WEIGHTS_DIR` (or Ultralytics' own `weights_dir` setting); where they
are not found, the bare name is handed to Ultralytics, which downloads it the
ordinary way on a machine with internet.

Weights are data, not code: a `.pt` checkpoint is a pickle, and unpickling one from
elsewhere can run anything. Every checkpoint poseops loads goes through
`load_checkpoint` (`torch.load(weights_only=True)` with Ultralytics' allow-list of model
classes), and Ultralytics itself is put in the same safe-load mode
(`ULTRALYTICS_SAFE_LOAD`) before it is imported. A checkpoint that needs anything else
is refused with `UnsafeWeightsError`, naming the file.
"""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path
from typing import Any

from poseops.errors import PoseopsError
from poseops.settings import load_settings

SAFE_LOAD_ENV = "ULTRALYTICS_SAFE_LOAD"


class UnsafeWeightsError(PoseopsError, ValueError):
    """A checkpoint refused: it cannot be read as weights alone (it would run code, or, with `damaged`, it is cut short)."""

    def __init__(self, message: str, damaged: bool = False) -> None:
        super().__init__(message)
        self.damaged = damaged


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
    os.environ[SAFE_LOAD_ENV] = "1"  # read by Ultralytics at import: checkpoints load with weights_only=True
    if config_dir is None:
        config_dir = Path(os.environ.get("YOLO_CONFIG_DIR") or load_settings().home / "ultralytics")
    config_dir = config_dir.resolve()
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_CONFIG_DIR"] = str(config_dir)
    font = config_dir / "Arial.ttf"
    if not font.exists():
        for candidate in FONT_CANDIDATES:
            if Path(candidate).is_file():
                shutil.copyfile(candidate, font)
                break


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """A `.pt` checkpoint's contents, unpickled as data only (`weights_only=True`, Ultralytics' model classes allowed).

    Raises `UnsafeWeightsError` naming the file when it needs anything more (a pickle that
    would run code) or cannot be read at all.
    """
    prepare_ultralytics()
    from ultralytics.nn.tasks import torch_safe_load

    path = Path(path)
    if not path.is_file():
        raise UnsafeWeightsError(f"{path}: no such checkpoint file")
    try:
        ckpt, _ = torch_safe_load(str(path), safe_only=True)
    except (TypeError, pickle.UnpicklingError, RuntimeError, OSError, EOFError, ModuleNotFoundError, AttributeError) as e:
        damaged = isinstance(e, OSError | EOFError) or "not a loadable" in str(e)  # OSError: torch's reader, cut short
        why = "it is empty, truncated or not a PyTorch checkpoint" if damaged else (
            "loading it would run code or build objects outside the Ultralytics checkpoint format")
        raise UnsafeWeightsError(
            f"{path}: refused as weights: {why}. Use a checkpoint trained by poseops or an official Ultralytics .pt; "
            "never load weights from an untrusted source", damaged=damaged
        ) from e
    if not isinstance(ckpt, dict):
        raise UnsafeWeightsError(f"{path}: not an Ultralytics checkpoint (it holds {type(ckpt).__name__}, not a dict)")
    return ckpt


def check_checkpoint(path: str | os.PathLike) -> None:
    """Refuse (`UnsafeWeightsError`) a `.pt` file that is not weights alone; other files (.onnx, .yaml) pass."""
    if Path(path).suffix.lower() == ".pt":
        load_checkpoint(path)
