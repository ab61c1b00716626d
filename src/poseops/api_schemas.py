"""The OpenAPI descriptions of the service's endpoints (`/docs.json`): request forms, answers, error bodies."""

from __future__ import annotations

from typing import Any

from poseops.constants import DEFAULT_CONF_THRES, DEFAULT_IOU_THRES
from poseops.detector import DEFAULT_MAX_VIDEO_BYTES, MAX_IMAGE_BYTES

_ERROR_SCHEMA = {
    "type": "object",
    "required": ["error", "message"],
    "properties": {"error": {"type": "string"}, "message": {"type": "string"}},
}
_POINT = {"type": "object", "properties": {k: {"type": "number"} for k in ("x", "y", "confidence")} | {"name": {"type": "string"}}}
_DETECTION_SCHEMA = {
    "type": "object",
    "properties": {
        "class": {"type": "string"},
        "confidence": {"type": "number"},
        "x": {"type": "number", "description": "left edge of the box"},
        "y": {"type": "number", "description": "top edge of the box"},
        "width": {"type": "number"},
        "height": {"type": "number"},
        "keypoints": {"type": "array", "items": _POINT, "description": "in skeleton order"},
        "text": {"type": "string", "nullable": True,
                 "description": "only with OCR, for the ocr_classes; null past the 16 most confident crops"},
    },
}


_THRESHOLDS = {
    "conf_thres": {"type": "number", "minimum": 0, "maximum": 1, "default": DEFAULT_CONF_THRES},
    "iou_thres": {"type": "number", "minimum": 0, "maximum": 1, "default": DEFAULT_IOU_THRES},
}


def _error_schema(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ERROR_SCHEMA}}}


DETECT_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["image"],
                    "properties": {
                        "image": {"type": "string", "format": "binary", "description": f"the image (JPEG, PNG, WebP, BMP, TIFF, GIF: first frame), at most {MAX_IMAGE_BYTES} bytes; EXIF orientation is applied"},
                        **_THRESHOLDS,
                        "ocr_model": {"type": "string", "enum": ["small", "medium", "large"]},
                        "ocr_classes": {"type": "string", "description": "comma-separated class names whose crops to read"},
                        "ocr_language": {"type": "string", "default": "eng", "description": "language code(s), Tesseract-style, e.g. deu or eng+deu; /metadata lists what each OCR model accepts"},
                    },
                }
            }
        },
    },
    "responses": {
        "200": {
            "description": "one object per detection; x, y is the box's top-left corner, all in pixels of the image as shown (EXIF orientation applied)",
            "content": {"application/json": {"schema": {"type": "array", "items": _DETECTION_SCHEMA}}},
        },
        "400": _error_schema("a bad field or an image that cannot be decoded"),
        "401": _error_schema("missing or unknown API key (only when keys are configured)"),
        "403": _error_schema("the key's monthly request quota is spent"),
        "413": _error_schema("image over 25 MB, or more pixels than the server allows"),
        "500": _error_schema("unexpected failure"),
        "503": _error_schema("the model is still loading"),
    },
}

_VIDEO_FRAME = {
    "type": "object",
    "properties": {
        "frame": {"type": "integer", "description": "the frame's index in the video, from 0"},
        "time_ms": {"type": "number", "description": "the frame's timestamp"},
        "detections": {"type": "array", "items": _DETECTION_SCHEMA | {"properties": _DETECTION_SCHEMA["properties"] | {
            "track_id": {"type": "integer", "nullable": True,
                         "description": "the same object's id across frames; null when the tracker follows nothing on the frame"}}}},
    },
}
_VIDEO_ANSWER = {
    "type": "object",
    "properties": {
        "video": {"type": "object", "description": "width, height, fps and frame_count as the file declares them"},
        "options": {"type": "object", "description": "the options the run used, defaults filled in"},
        "frames": {"type": "array", "items": _VIDEO_FRAME, "description": "one per frame predicted on, in order"},
        "summary": {"type": "object", "description": "frames, detections, track_ids, seconds, frames_per_second, runtime"},
    },
}

DETECT_VIDEO_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["video"],
                    "properties": {
                        "video": {"type": "string", "format": "binary",
                                  "description": f"the video (MP4, MOV, AVI, MKV, WebM, MPEG, WMV), at most {DEFAULT_MAX_VIDEO_BYTES} bytes "
                                                 "by default (/metadata: api.max_video_bytes)"},
                        **_THRESHOLDS,
                        "tracker": {"type": "string", "enum": ["bytetrack", "botsort", "none"], "default": "bytetrack",
                                    "description": "Ultralytics' tracker; none: per-frame detections without track ids"},
                        "smooth": {"type": "boolean", "default": False, "description": "One-Euro smoothing of each track's keypoints"},
                        "start_frame": {"type": "integer", "minimum": 0, "default": 0, "description": "the first frame to predict on"},
                        "stride": {"type": "integer", "minimum": 1, "default": 1, "description": "every N-th frame from start_frame"},
                        "max_frames": {"type": "integer", "minimum": 1,
                                       "description": "at most this many frames (and at most the server's api.max_video_frames)"},
                    },
                }
            }
        },
    },
    "responses": {
        "200": {"description": "each frame's detections with track ids, and the run's frames per second",
                "content": {"application/json": {"schema": _VIDEO_ANSWER}}},
        "400": _error_schema("a bad field, or a file that is not a video or does not decode"),
        "401": _error_schema("missing or unknown API key (only when keys are configured)"),
        "403": _error_schema("the key's monthly request quota is spent"),
        "413": _error_schema("video over the upload cap, more frames than the server takes per request, or frames over the pixel limit"),
        "500": _error_schema("unexpected failure"),
        "503": _error_schema("the model is still loading"),
    },
}
