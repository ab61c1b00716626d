"""Constants that several parts of poseops share: one home each."""

from __future__ import annotations

# Image files poseops reads anywhere (upload, predict, prepare, conversion).
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
# Video files: not images; they enter as frames (the messages point there).
VIDEO_SUFFIXES = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv"})

# Keys whose values are secrets wherever they appear (params logged to MLflow, records, reports).
SECRET_HINTS = ("password", "token", "secret", "api_key", "apikey", "credential")

# Detection thresholds when none is given: the service, the CLI, the client, the playground, autolabel.
DEFAULT_CONF_THRES = 0.25
DEFAULT_IOU_THRES = 0.45

# The ML backend's title in Label Studio; a project whose model_version is this asks the backend as tasks open.
ML_BACKEND_TITLE = "poseops champion"

# What an autolabel prediction's `score` measures (poseops.scores): Label Studio serves the lowest first.
SCORES = ("confidence", "min_keypoint", "flip", "temporal")
