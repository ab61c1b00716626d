"""The error gallery: the val images the model gets most wrong (lowest OKS), label and prediction side by side.

Each image is drawn twice in the skeleton spec's colours (`poseops.drawing.draw_detections`): the label
on the left, the model's detections (at least `evaluate.match_conf` sure) on the right, and linked to its
Label Studio task (the pulled dataset's manifest maps images to tasks; its pull record names the project).
`gallery.html` embeds the pictures, so it opens as one file in the MLflow UI's artifact view;
`gallery.json` lists the entries, from which the train flow's Prefect artifact is made.
"""

from __future__ import annotations

import base64
import html
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from poseops.skeleton import Skeleton
from poseops.training.dataset import DatasetInfo
from poseops.training.keypoint_metrics import ImagePoses, KeypointReport

GALLERY_HTML = "gallery.html"
GALLERY_JSON = "gallery.json"
MAX_SIDE = 480  # each half of a picture is scaled to at most this many pixels on its longer side


@dataclass(frozen=True)
class TaskLink:
    task_id: int | str
    url: str  # the task in Label Studio's data manager


@dataclass(frozen=True)
class GalleryEntry:
    image: str  # inside the dataset, e.g. images/val/3f2a….jpg
    oks: float
    labels: int
    detections: int
    worst_keypoint: str
    task_id: int | str | None
    task_url: str | None


def task_links(dataset: DatasetInfo) -> dict[str, TaskLink]:
    """image (inside the dataset) → its Label Studio task, from the pull's manifest and record ({} when not pulled)."""
    source = dataset.source
    conversion = (dataset.manifest or {}).get("conversion") or {}
    url, project = source.get("label_studio_url"), source.get("label_studio_project_id")
    if not url or project is None:
        return {}
    return {image: TaskLink(_task_id(task), f"{str(url).rstrip('/')}/projects/{project}/data?task={task}")
            for task, image in (conversion.get("task_images") or {}).items()}


def _task_id(task: str) -> int | str:
    return int(task) if str(task).isdigit() else task


def worst_images(report: KeypointReport, n: int) -> list[str]:
    """The n images with the lowest OKS (ties by name)."""
    return [s.image for s in sorted(report.images, key=lambda s: (s.oks, s.image))[:n]]


def label_detections(img: ImagePoses, skeleton: Skeleton) -> list[dict[str, Any]]:
    """An image's labels in the API's detection shape, to draw with `draw_detections`."""
    return [_detection(skeleton, int(c), box, kpts, 1.0, labeled=True)
            for c, box, kpts in zip(img.label_cls, img.label_boxes, img.label_kpts, strict=True)]


def predicted_detections(img: ImagePoses, skeleton: Skeleton, conf: float) -> list[dict[str, Any]]:
    """The model's detections at least `conf` sure, in the API's detection shape."""
    keep = np.flatnonzero(img.pred_conf >= conf)
    return [_detection(skeleton, int(img.pred_cls[j]), img.pred_boxes[j], img.pred_kpts[j], float(img.pred_conf[j]),
                       labeled=False) for j in keep]


def _detection(skeleton: Skeleton, cls: int, box: np.ndarray, kpts: np.ndarray, conf: float,
               labeled: bool) -> dict[str, Any]:
    c = skeleton.classes[min(cls, len(skeleton.classes) - 1)]
    points = []
    for kp, (x, y, v) in zip(c.keypoints, kpts, strict=True):
        if labeled and v <= 0:
            continue  # not labeled: nothing to draw
        points.append({"name": kp.name, "x": float(x), "y": float(y),
                       "confidence": None if labeled or np.isnan(v) else float(v)})
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"class": c.name, "confidence": conf, "x": x1, "y": y1, "width": x2 - x1, "height": y2 - y1,
            "keypoints": points}


def side_by_side(image_bgr: np.ndarray, img: ImagePoses, skeleton: Skeleton, conf: float) -> np.ndarray:
    """Label (left) and prediction (right) drawn on the image, each captioned, scaled to MAX_SIDE."""
    import cv2

    from poseops.drawing import draw_detections

    halves = []
    for caption, dets in (("label", label_detections(img, skeleton)),
                          ("prediction", predicted_detections(img, skeleton, conf))):
        drawn = draw_detections(image_bgr, dets, skeleton)
        scale = MAX_SIDE / max(drawn.shape[:2])
        if scale < 1:
            drawn = cv2.resize(drawn, (round(drawn.shape[1] * scale), round(drawn.shape[0] * scale)),
                               interpolation=cv2.INTER_AREA)
        cv2.putText(drawn, caption, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 3, cv2.LINE_AA)
        cv2.putText(drawn, caption, (6, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
        halves.append(drawn)
    gap = np.full((halves[0].shape[0], 8, 3), 255, dtype=np.uint8)
    return np.hstack([halves[0], gap, halves[1]])


def write_gallery(poses: list[ImagePoses], report: KeypointReport, skeleton: Skeleton, dataset_dir: Path,
                  links: dict[str, TaskLink], n: int, out_dir: Path, title: str) -> list[GalleryEntry]:
    """Draw the n worst images into `out_dir/gallery.html` (pictures embedded) and list them in gallery.json."""
    import cv2

    by_image = {p.image: p for p in poses}
    scores = {s.image: s for s in report.images}
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, figures = [], []
    for name in worst_images(report, n):
        s, link = scores[name], links.get(name)
        entry = GalleryEntry(name, s.oks, s.labels, s.detections, s.worst_keypoint,
                             link.task_id if link else None, link.url if link else None)
        picture = cv2.imread(str(dataset_dir / name))
        if picture is None:
            continue  # not readable here (a moved dataset): listed in gallery.json, not drawn
        ok, jpeg = cv2.imencode(".jpg", side_by_side(picture, by_image[name], skeleton, report.match_conf),
                                [cv2.IMWRITE_JPEG_QUALITY, 85])
        entries.append(entry)
        figures.append(_figure(entry, base64.b64encode(jpeg.tobytes()).decode()))
    page = _PAGE.format(title=html.escape(title), count=len(entries), conf=report.match_conf,
                        figures="\n".join(figures) or "<p>No val images.</p>")
    (out_dir / GALLERY_HTML).write_text(page, encoding="utf-8")
    (out_dir / GALLERY_JSON).write_text(json.dumps([asdict(e) for e in entries], indent=2) + "\n", encoding="utf-8")
    return entries


def read_gallery(out_dir: Path) -> list[GalleryEntry]:
    path = out_dir / GALLERY_JSON
    return [GalleryEntry(**e) for e in json.loads(path.read_text(encoding="utf-8"))] if path.is_file() else []


def _figure(e: GalleryEntry, jpeg_b64: str) -> str:
    task = (f'<a class="task" href="{html.escape(e.task_url)}" target="_blank" rel="noopener">Label Studio task '
            f'{html.escape(str(e.task_id))}</a>' if e.task_url else '<span class="task">no Label Studio task</span>')
    worst = f", worst keypoint <b>{html.escape(e.worst_keypoint)}</b>" if e.worst_keypoint else ""
    return (f'<figure data-image="{html.escape(e.image)}" data-oks="{e.oks:.4f}">'
            f'<img alt="{html.escape(e.image)}: label and prediction" src="data:image/jpeg;base64,{jpeg_b64}">'
            f'<figcaption><code>{html.escape(e.image)}</code>: OKS <b>{e.oks:.3f}</b>, {e.labels} label(s), '
            f'{e.detections} detection(s){worst}. {task}</figcaption></figure>')


_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:16px}} figure{{margin:0 0 24px 0}} img{{max-width:100%;border:1px solid #ccc}}
figcaption{{margin-top:4px}}</style></head>
<body><h2>{title}</h2>
<p>The {count} val images with the lowest OKS: the label on the left, the model's detections (confidence &ge; {conf})
on the right, in the skeleton's colours. Each links to its Label Studio task.</p>
{figures}
</body></html>
"""


def gallery_markdown(entries: list[GalleryEntry], html_url: str | None = None) -> str:
    """The gallery as a Markdown table (the Prefect artifact): image, OKS, worst keypoint, Label Studio task."""
    lines = ["### Error gallery: the val images with the lowest OKS", ""]
    if html_url:
        lines += [f"Pictures (label beside prediction): [gallery.html in MLflow]({html_url}).", ""]
    lines += ["| image | OKS | labels | detections | worst keypoint | Label Studio |", "|---|---|---|---|---|---|"]
    for e in entries:
        task = f"[task {e.task_id}]({e.task_url})" if e.task_url else "-"
        lines.append(f"| `{e.image}` | {e.oks:.3f} | {e.labels} | {e.detections} | {e.worst_keypoint or '-'} | {task} |")
    return "\n".join(lines) + "\n"
