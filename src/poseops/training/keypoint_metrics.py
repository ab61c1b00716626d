"""Per-keypoint evaluation: OKS AP, PCK, RMSE and visibility accuracy for each keypoint, OKS for each image.

Everything is measured in pixels of the original images, from one validation pass's labels and
predictions (`ImagePoses`, filled by `poseops.training.val_capture`):

- **OKS** between a label and a prediction: `Σ_k v_k · exp(-d_k² / (2 · s · (2σ_k)²)) / Σ_k v_k` over the
  label's labeled keypoints (v > 0), `d_k` the distance, `s` the label's box area × 0.53 (as Ultralytics and
  xtcocotools), `σ_k` the keypoint's sigma from the skeleton spec. The same with one keypoint is that
  keypoint's similarity `ks_k`.
- **Matching** (PCK, RMSE, visibility, image OKS): in each image, detections at least `match_conf` sure and
  labels of the same class are paired greedily by OKS, highest first, each used once.
- **AP** of keypoint k: COCO's AP (101-point, averaged over thresholds 0.50:0.95) with `ks_k` as the
  similarity: detections of all confidences ranked by confidence, each taking the unmatched label (k labeled)
  with the highest `ks_k` at or above the threshold; a detection that takes none is a false positive unless
  its box overlaps (IoU ≥ 0.5) a label without k, which COCO-style is ignored. `ap50` is the 0.50 threshold alone.
- **PCK@α**: the share of labeled keypoints whose matched prediction lies within α × the longer side of
  the label's box (a missed object counts as wrong); α = 0.05, 0.1, 0.2.
- **RMSE**: the root mean squared distance, in pixels, over labeled keypoints of matched labels.
- **Visibility accuracy**: over matched labels, the share of keypoints where "labeled" (v > 0) agrees with
  "predicted visible" (keypoint confidence ≥ 0.5); None for a model without keypoint confidences.
- **Image OKS**: the mean OKS over an image's labels, a missed label counting 0 and every confident
  detection matched to no label adding one more 0; an image with neither labels nor detections scores 1.
  A label without labeled keypoints (a box only) is not scored; a detection overlapping it (IoU ≥ 0.5)
  is matched to it last and so is no false detection.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from poseops.oks import AREA_FACTOR

OKS_THRESHOLDS = np.linspace(0.5, 0.95, 10)
PCK_ALPHAS = {"pck05": 0.05, "pck10": 0.1, "pck20": 0.2}
VISIBLE_CONF = 0.5  # a predicted keypoint at least this sure is "visible" (as drawings and Ultralytics' plots)
IGNORE_IOU = 0.5  # an unmatched detection on a label lacking the keypoint is ignored for that keypoint's AP
GUARD_METRIC = "pck10"  # what promotion's keypoint guard compares
METRIC_NAMES = ("ap", "ap50", "pck05", "pck10", "pck20", "rmse_px", "visibility_acc")


@dataclass(frozen=True)
class ImagePoses:
    """One validation image's labels and predictions, in its own pixels.

    label_kpts / pred_kpts: (n, K, 3) x, y and visibility (labels: 0 unlabeled, > 0 labeled) or
    confidence (predictions: NaN when the model predicts none).
    """

    image: str
    width: int
    height: int
    label_cls: np.ndarray  # (n,)
    label_boxes: np.ndarray  # (n, 4) x1 y1 x2 y2
    label_kpts: np.ndarray  # (n, K, 3)
    pred_cls: np.ndarray  # (m,)
    pred_boxes: np.ndarray  # (m, 4)
    pred_conf: np.ndarray  # (m,)
    pred_kpts: np.ndarray  # (m, K, 3)


@dataclass(frozen=True)
class KeypointScore:
    """One keypoint's metrics (None where nothing was there to measure)."""

    name: str
    labeled: int  # labeled instances of this keypoint on the split
    ap: float | None
    ap50: float | None
    pck05: float | None
    pck10: float | None
    pck20: float | None
    rmse_px: float | None
    visibility_acc: float | None


@dataclass(frozen=True)
class ImageScore:
    """One image's OKS and what it was made of."""

    image: str
    labels: int
    detections: int  # at least match_conf sure
    matched: int
    oks: float
    worst_keypoint: str  # the labeled keypoint farthest from its prediction (relative to the box), "" if none


@dataclass(frozen=True)
class KeypointReport:
    keypoints: list[KeypointScore]
    images: list[ImageScore]
    match_conf: float

    def by_name(self) -> dict[str, KeypointScore]:
        return {k.name: k for k in self.keypoints}

    def mean(self) -> dict[str, float | None]:
        """Each metric averaged over the keypoints that have it."""
        out: dict[str, float | None] = {}
        for m in METRIC_NAMES:
            values = [getattr(k, m) for k in self.keypoints if getattr(k, m) is not None]
            out[m] = float(np.mean(values)) if values else None
        return out

    def to_metrics(self) -> dict[str, dict[str, float | None]]:
        """keypoints.json's content: {keypoint: {metric: value}}, and `mean`; `dvc metrics diff` compares them."""
        r = {k.name: {m: _round(getattr(k, m)) for m in METRIC_NAMES} for k in self.keypoints}
        return {**r, "mean": {m: _round(v) for m, v in self.mean().items()}}

    def to_dict(self) -> dict:
        return {"match_conf": self.match_conf, "keypoints": [asdict(k) for k in self.keypoints],
                "images": [asdict(i) for i in self.images]}

    @classmethod
    def from_dict(cls, data: dict) -> KeypointReport:
        return cls([KeypointScore(**k) for k in data["keypoints"]], [ImageScore(**i) for i in data["images"]],
                   float(data["match_conf"]))


def _round(v: float | None) -> float | None:
    return None if v is None else round(float(v), 6)


# --- similarity -------------------------------------------------------------------------------------------


def label_area(boxes: np.ndarray) -> np.ndarray:
    """The OKS scale `s` of each label: its box's area × AREA_FACTOR."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]) * AREA_FACTOR


def keypoint_similarity(label_kpts: np.ndarray, areas: np.ndarray, pred_kpts: np.ndarray,
                        sigmas: np.ndarray) -> np.ndarray:
    """(n, m, K): exp(-d² / (2 · s · (2σ)²)) of each label's keypoints against each prediction's."""
    d2 = ((label_kpts[:, None, :, :2] - pred_kpts[None, :, :, :2]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * (areas[:, None, None] + np.finfo(float).eps) * (2 * sigmas[None, None, :]) ** 2))


def oks(label_kpts: np.ndarray, areas: np.ndarray, pred_kpts: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """(n, m): the OKS of each label against each prediction, over the label's labeled keypoints."""
    ks = keypoint_similarity(label_kpts, areas, pred_kpts, sigmas)
    mask = (label_kpts[:, None, :, 2] > 0).astype(float)
    return (ks * mask).sum(-1) / np.maximum(mask.sum(-1), 1e-9)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(len(a), len(b)) IoU of x1 y1 x2 y2 boxes."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


# --- matching -----------------------------------------------------------------------------------------------


def match(img: ImagePoses, sigmas: np.ndarray, match_conf: float) -> list[tuple[int, int, float]]:
    """(label, prediction, OKS) pairs: detections ≥ match_conf and labels of the same class, greedily by OKS."""
    preds = np.flatnonzero(img.pred_conf >= match_conf)
    if not len(preds) or not len(img.label_cls):
        return []
    sim = oks(img.label_kpts, label_area(img.label_boxes), img.pred_kpts[preds], sigmas)
    # a label without labeled keypoints (a box only) takes an overlapping detection last, so it is no false one
    keyless = ~(img.label_kpts[..., 2] > 0).any(1)
    sim[keyless[:, None] & (box_iou(img.label_boxes, img.pred_boxes[preds]) < IGNORE_IOU)] = -1.0
    sim[img.label_cls[:, None] != img.pred_cls[preds][None, :]] = -1.0
    pairs: list[tuple[int, int, float]] = []
    for flat in np.argsort(-sim, axis=None, kind="stable"):
        li, pj = divmod(int(flat), len(preds))
        if sim[li, pj] < 0:
            break
        if any(p[0] == li for p in pairs) or any(p[1] == preds[pj] for p in pairs):
            continue
        pairs.append((li, int(preds[pj]), float(sim[li, pj])))
    return pairs


# --- AP ------------------------------------------------------------------------------------------------------


def coco_ap(tp: np.ndarray, conf: np.ndarray, n_labels: int) -> float:
    """COCO's 101-point interpolated AP of detections (tp flags, confidences) against n_labels labels."""
    if n_labels == 0:
        return float("nan")
    order = np.argsort(-conf, kind="stable")
    tps = np.cumsum(tp[order])
    fps = np.cumsum(~tp[order])
    recall = tps / n_labels
    precision = tps / np.maximum(tps + fps, 1e-9)
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    points = []
    for r in np.linspace(0, 1, 101):
        i = np.searchsorted(recall, r, side="left")
        points.append(precision[i] if i < len(precision) else 0.0)
    return float(np.mean(points))


def keypoint_ap(images: list[ImagePoses], sigmas: np.ndarray, k: int,
                thresholds: np.ndarray = OKS_THRESHOLDS) -> np.ndarray:
    """Keypoint k's AP at each similarity threshold (see the module's docstring)."""
    T = len(thresholds)
    tps: list[np.ndarray] = []  # per detection: (T,) 1 true positive, 0 false positive, -1 ignored
    confs: list[np.ndarray] = []
    n_labels = 0
    for img in images:
        m = len(img.pred_conf)
        has_k = img.label_kpts[:, k, 2] > 0
        n_labels += int(has_k.sum())
        if not m:
            continue
        outcome = np.zeros((m, T))
        if len(has_k):
            ks = keypoint_similarity(img.label_kpts[:, k:k + 1], label_area(img.label_boxes),
                                     img.pred_kpts[:, k:k + 1], sigmas[k:k + 1])[..., 0]  # (n, m)
            same = img.label_cls[:, None] == img.pred_cls[None, :]
            ks = np.where(same & has_k[:, None], ks, -1.0)
            ignored = ((box_iou(img.pred_boxes, img.label_boxes) >= IGNORE_IOU) & same.T & ~has_k[None, :]).any(1)
            taken = np.zeros((T, len(has_k)), bool)
            for j in np.argsort(-img.pred_conf, kind="stable"):
                if ks[:, j].max() < thresholds[0]:  # matches nothing at any threshold: nothing to take
                    outcome[j] = -1 if ignored[j] else 0
                    continue
                free = np.where(taken, -1.0, ks[None, :, j])  # (T, n)
                best = free.argmax(1)
                hit = free[np.arange(T), best] >= thresholds
                taken[np.flatnonzero(hit), best[hit]] = True
                outcome[j] = np.where(hit, 1, -1 if ignored[j] else 0)
        tps.append(outcome)
        confs.append(img.pred_conf)
    if not tps:
        return np.array([coco_ap(np.zeros(0, bool), np.zeros(0), n_labels)] * T)
    outcome, conf = np.concatenate(tps), np.concatenate(confs)
    return np.array([coco_ap(outcome[outcome[:, t] >= 0, t] == 1, conf[outcome[:, t] >= 0], n_labels)
                     for t in range(T)])


# --- the report ------------------------------------------------------------------------------------------------


def evaluate_keypoints(images: list[ImagePoses], names: list[str], sigmas: list[float],
                       match_conf: float) -> KeypointReport:
    """Every keypoint's metrics and every image's OKS (see the module's docstring)."""
    sig = np.asarray(sigmas, dtype=float)
    K = len(names)
    labeled = np.zeros(K)
    within = {m: np.zeros(K) for m in PCK_ALPHAS}
    sq_err, n_err = np.zeros(K), np.zeros(K)
    vis_right, vis_n = np.zeros(K), np.zeros(K)
    has_conf = any(len(i.pred_conf) and not np.isnan(i.pred_kpts[..., 2]).all() for i in images)
    scores: list[ImageScore] = []
    for img in images:
        pairs = match(img, sig, match_conf)
        lab = img.label_kpts[..., 2] > 0 if len(img.label_cls) else np.zeros((0, K), bool)
        labeled += lab.sum(0)
        worst, worst_err = "", -1.0
        for li, pj, _ in pairs:
            size = max(float(img.label_boxes[li, 2] - img.label_boxes[li, 0]),
                       float(img.label_boxes[li, 3] - img.label_boxes[li, 1]), 1e-9)
            d = np.hypot(*(img.label_kpts[li, :, :2] - img.pred_kpts[pj, :, :2]).T)
            m = lab[li]
            for name, alpha in PCK_ALPHAS.items():
                within[name] += m & (d <= alpha * size)
            sq_err += np.where(m, d ** 2, 0.0)
            n_err += m
            if has_conf:
                vis_right += (img.pred_kpts[pj, :, 2] >= VISIBLE_CONF) == m
                vis_n += 1
            if m.any() and (d[m] / size).max() > worst_err:
                worst_err, worst = float((d[m] / size).max()), names[int(np.flatnonzero(m)[np.argmax(d[m])])]
        detections = int((img.pred_conf >= match_conf).sum())
        keyed = lab.any(1)  # labels without labeled keypoints are not scored (COCO ignores them too)
        n = int(keyed.sum()) + detections - len(pairs)
        image_oks = sum(p[2] for p in pairs if keyed[p[0]]) / n if n else 1.0
        scores.append(ImageScore(img.image, len(img.label_cls), detections, len(pairs), round(image_oks, 6), worst))
    keypoints = []
    for k, name in enumerate(names):
        aps = keypoint_ap(images, sig, k)
        keypoints.append(KeypointScore(
            name=name, labeled=int(labeled[k]),
            ap=_finite(float(np.mean(aps))), ap50=_finite(float(aps[0])),
            **{m: _finite(within[m][k] / labeled[k]) if labeled[k] else None for m in PCK_ALPHAS},
            rmse_px=_finite(math.sqrt(sq_err[k] / n_err[k])) if n_err[k] else None,
            visibility_acc=_finite(vis_right[k] / vis_n[k]) if vis_n[k] else None))
    return KeypointReport(keypoints, scores, match_conf)


def _finite(v: float) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


# --- files ------------------------------------------------------------------------------------------------------

IMAGE_COLUMNS = ("image", "task_id", "labels", "detections", "matched", "oks", "worst_keypoint")


def write_keypoints_json(report: KeypointReport, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report.to_metrics(), indent=2) + "\n", encoding="utf-8")


def write_images_csv(report: KeypointReport, path: Path, task_ids: dict[str, int] | None = None) -> None:
    """The per-image OKS table, lowest OKS first (task_id: the image's Label Studio task, when known)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(IMAGE_COLUMNS)
        for s in sorted(report.images, key=lambda s: (s.oks, s.image)):
            w.writerow([s.image, (task_ids or {}).get(s.image, ""), s.labels, s.detections, s.matched,
                        f"{s.oks:.6f}", s.worst_keypoint])


def read_images_csv(path: Path) -> dict[str, float]:
    """image → OKS from a per-image CSV written by `write_images_csv`."""
    with path.open(newline="", encoding="utf-8") as f:
        return {row["image"]: float(row["oks"]) for row in csv.DictReader(f)}
