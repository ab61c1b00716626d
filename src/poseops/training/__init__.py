"""Training YOLO-pose: the logic the DVC stages, the Prefect flow and the CLI share.

    layout        where each stage reads and writes; the train folder's state file
    dataset       the prepare stage: check the dataset against the skeleton spec, write the data.yaml to train on
                  and dataset.json (DVC hash, Label Studio manifest, counts)
    init_weights  what a new training starts from (a file, a run, a registered model)
    resume        whether an interrupted training can go on from its last.pt; closing dead runs
    fit           train with Ultralytics, logging params, lineage and per-epoch metrics to an MLflow run
    evaluation    validate best.pt on the val split, write metrics.json, the per-keypoint metrics, the per-image
                  OKS and the error gallery, log them to the run
    keypoint_metrics  per keypoint OKS AP, PCK, RMSE, visibility accuracy; per-image OKS (numpy, no model)
    val_capture   one Ultralytics validation pass that keeps every image's labels and predictions
    gallery       the error gallery: the worst val images, label beside prediction, linked to Label Studio
    keypoint_guard  promotion's per-keypoint comparison with the champion, and the per-image differences
    register      the export (the end of the evaluate stage): the checked exports, the model files logged and
                  registered as a model version
    promotion     move the `champion` alias to a version when it is at least as good (not a DVC stage:
                  it changes the registry, not files)
    pipeline      the four stages through `dvc repro` or in this process, and what they left
    yolo          Ultralytics set-up, train arguments, a stage process's imports (`preload_libraries`)

Each stage reads its inputs from and writes its outputs to the paths of a `Layout`
(the DVC stages pass them from dvc.yaml), and finds the MLflow run through the state
file the train stage leaves in its output folder.

The names below are importable from `poseops.training`; each is loaded with its own module
on first use, so a stage script that imports `poseops.training.fit` runs (and, in dvc.yaml,
depends on) only the modules it needs.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "layout": ("MODEL_ARTIFACTS", "PACKAGE_LINK", "STATE_FILE", "VERSION_FILE", "Layout", "TrainingError",
               "finished_run_id", "link_package", "read_metrics", "read_state", "resolved_data_yaml", "run_stage",
               "write_state"),
    "dataset": ("DatasetInfo", "SplitStats", "flip_warning", "prepare", "read_dataset_info", "redact",
                "skeleton_fingerprint"),
    "init_weights": ("InitWeights", "find_weights", "resolve_init_weights"),
    "resume": ("Resumable", "checkpoint_epochs", "fail_orphaned_runs", "interrupted_training", "settle_dead_run"),
    "fit": ("TrainResult", "train"),
    "evaluation": ("Evaluation", "eval_key", "evaluate", "score_keypoints", "validate", "validate_poses",
                   "zero_pose_warning"),
    "keypoint_metrics": ("ImagePoses", "ImageScore", "KeypointReport", "KeypointScore", "evaluate_keypoints"),
    "gallery": ("GalleryEntry", "gallery_markdown", "read_gallery", "task_links", "write_gallery"),
    "keypoint_guard": ("ImageDiff", "KeypointComparison", "compare_keypoints", "image_differences",
                       "promotion_markdown"),
    "register": ("export", "read_version"),
    "promotion": ("ModelKind", "Promotion", "better_enough", "decide", "kind_mismatch", "model_kind", "promote"),
    "pipeline": ("PipelineOutputs", "dvc_repro", "is_dvc_repo", "pipeline_outputs", "run_stages"),
    "yolo": ("configure_ultralytics", "preload_libraries", "ultralytics_train_args"),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})

