"""Per-keypoint OKS sigmas estimated from images labeled twice, and written back into the skeleton spec.

COCO's method (cocodataset.org, keypoint evaluation): a keypoint's sigma is the standard deviation
of its annotations relative to the object's scale, `σᵢ² = E[dᵢ² / s²]`, with `dᵢ` the distance of
an annotation from the true point and `s²` the object's area. With several annotations of one
object the true point is unknown; their mean stands in for it and the pooled estimate
`σᵢ² = Σ_objects Σ_k |x_k − x̄|² / s² ÷ Σ_objects (n − 1)` is unbiased (for two annotations,
the mean of `d² / (2 s²)` with `d` the distance between them). The area is the mean box area
of the object's annotations times 0.53, the share of its box a COCO person's outline covers:
what Ultralytics' validator uses for OKS (`PoseValidator`), so the estimates are on the scale of
COCO's sigmas and of the pose mAP that uses them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from poseops.conversion.poses import Pose
from poseops.errors import PoseopsError
from poseops.oks import AREA_FACTOR
from poseops.skeleton import Skeleton

MIN_OBJECTS = 10  # objects labeled at least twice needed for any estimate
MIN_SAMPLES = 5  # a keypoint labeled twice on fewer objects keeps its sigma
MATCH_IOU = 0.5  # two annotations' boxes of one object overlap at least this much
DECIMALS = 3


class SigmaError(PoseopsError, ValueError):
    """Sigmas that cannot be estimated or written; the message says why and what to do."""


@dataclass(frozen=True)
class KeypointSigma:
    keypoint: str
    current: float  # what the spec gives now (its own value or the default)
    estimate: float | None  # None: fewer than MIN_SAMPLES objects with the keypoint labeled twice
    samples: int  # objects whose keypoint was labeled at least twice


@dataclass(frozen=True)
class SigmaEstimates:
    tasks: int  # tasks with two or more submitted annotations
    objects: int  # objects found in at least two of them
    keypoints: tuple[KeypointSigma, ...]

    @property
    def sigmas(self) -> list[float]:
        """The sigmas to use, in model order: the estimate where there is one, else the current value."""
        return [k.estimate if k.estimate is not None else k.current for k in self.keypoints]


def _iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    w = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    union = a[2] * a[3] + b[2] * b[3] - w * h
    return w * h / union if union > 0 else 0.0


def group_objects(annotations: list[list[Pose]]) -> list[list[Pose]]:
    """The objects of one image labeled in several annotations: each a list of one pose per annotation that has it.

    Every later annotation's poses are matched to the first's, per class, by the best box overlap.
    """
    groups = [[p] for p in annotations[0]]
    for poses in annotations[1:]:
        free = list(poses)
        for group in groups:
            ref = group[0]
            scored = [(_iou(ref.box, p.box), n) for n, p in enumerate(free) if p.class_name == ref.class_name]
            best = max(scored, default=(0.0, -1))
            if best[0] >= MATCH_IOU:
                group.append(free.pop(best[1]))
    return [g for g in groups if len(g) >= 2]


def estimate(skeleton: Skeleton, images: Iterable[tuple[list[list[Pose]], float, float]]) -> SigmaEstimates:
    """Sigmas from images labeled more than once: each item is (one pose list per annotation, width, height)."""
    names = skeleton.classes[0].keypoint_names
    spread = [0.0] * len(names)  # Σ |x_k − x̄|² / s²
    dof = [0] * len(names)  # Σ (n − 1)
    samples = [0] * len(names)
    tasks = objects = 0
    for labels, width, height in images:
        tasks += 1
        for group in group_objects(labels):
            objects += 1
            area = AREA_FACTOR * sum(p.box[2] * width * p.box[3] * height for p in group) / len(group)
            if area <= 0:
                continue
            for i in range(len(names)):
                points = [(p.keypoints[i][0] * width, p.keypoints[i][1] * height) for p in group if p.keypoints[i][2]]
                if len(points) < 2:
                    continue
                mx, my = sum(x for x, _ in points) / len(points), sum(y for _, y in points) / len(points)
                spread[i] += sum((x - mx) ** 2 + (y - my) ** 2 for x, y in points) / area
                dof[i] += len(points) - 1
                samples[i] += 1
    current = skeleton.oks_sigmas
    keypoints = tuple(
        KeypointSigma(name, current[i], round(math.sqrt(spread[i] / dof[i]), DECIMALS) or 10 ** -DECIMALS
                      if samples[i] >= MIN_SAMPLES else None, samples[i])
        for i, name in enumerate(names))
    return SigmaEstimates(tasks, objects, keypoints)


def twice_labeled(skeleton: Skeleton, tasks: Iterable[dict]) -> list[tuple[list[list[Pose]], float, float]]:
    """The tasks with two or more submitted annotations: their poses per annotation and the image's size."""
    from poseops.conversion.results import results_to_poses

    out = []
    for task in tasks:
        annotations = [a for a in task.get("annotations") or []
                       if isinstance(a, dict) and not a.get("was_cancelled") and a.get("result")]
        size = next(((r.get("original_width"), r.get("original_height")) for a in annotations for r in a["result"]
                     if isinstance(r, dict) and r.get("original_width")), None)
        if len(annotations) < 2 or size is None:
            continue
        out.append(([results_to_poses(skeleton, a["result"], task.get("id"))[0] for a in annotations],
                    float(size[0]), float(size[1])))
    return out


def check_enough(estimates: SigmaEstimates, dataset: str, min_objects: int = MIN_OBJECTS) -> None:
    if estimates.objects < min_objects:
        raise SigmaError(
            f"{dataset!r} has {estimates.tasks} task(s) with two or more annotations, holding {estimates.objects} "
            f"object(s) labeled twice; estimating sigmas needs at least {min_objects}. Have a second annotator label "
            "some images again in Label Studio (a project with 'Annotations per task' (overlap) of 2, or a second "
            "annotation on existing tasks), then run again.")


# --- the spec, edited in place ---------------------------------------------------------------------------------


def write_sigmas(spec_path: Path, sigmas: dict[str, float]) -> None:
    """Set `sigma` of the named keypoints in the spec, keeping its comments, order and layout.

    Keypoints written `- {name: paw, ...}` on a line of their own are edited in place, to the
    character (in every class: a later class may repeat the first's sigma); otherwise the YAML is
    rewritten (comments kept, alignment not) with the sigmas in the first class and in later classes
    that give one. The spec is checked, and its sigmas compared, before it is replaced.
    """
    from poseops.skeleton import load_skeleton

    text = spec_path.read_text(encoding="utf-8")
    new = _edit_lines(text, sigmas)
    tmp = spec_path.with_name(f".{spec_path.name}.tmp")
    tmp.write_text(new if new is not None else _rewritten(text, sigmas), encoding="utf-8")
    try:
        first = load_skeleton(tmp).classes[0]  # still a valid spec, or nothing is replaced
        wrong = [n for n, v in sigmas.items() if first.oks_sigmas[first.index(n)] != v]
        if wrong:
            raise SigmaError(f"could not write the sigma of {', '.join(wrong)} into {spec_path}; set it by hand: "
                             f"{{name: {wrong[0]}, sigma: {sigmas[wrong[0]]}}}")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    tmp.replace(spec_path)


_FLOW_ENTRY = r"^(?P<head>\s*-\s*\{{\s*name:\s*(?P<q>[\"']?){name}(?P=q)\s*)(?P<rest>(,[^}}]*)?)\}}(?P<tail>\s*(#.*)?)$"


def _edit_lines(text: str, sigmas: dict[str, float]) -> str | None:
    """The spec with each keypoint's one-line flow mapping given its sigma; None when a keypoint is not written so."""
    import re

    lines = text.splitlines(keepends=True)
    for name, value in sigmas.items():
        pattern = re.compile(_FLOW_ENTRY.format(name=re.escape(name)))
        hits = 0
        for n, line in enumerate(lines):
            body, newline = line.rstrip("\r\n"), line[len(line.rstrip("\r\n")):]
            m = pattern.match(body)
            if not m:
                continue
            rest = re.sub(r",\s*sigma:\s*[^,}]*", "", m["rest"])
            lines[n] = f"{m['head']}{rest}, sigma: {value:g}}}{m['tail']}{newline}"
            hits += 1
        if not hits:
            return None
    return "".join(lines)


def _rewritten(text: str, sigmas: dict[str, float]) -> str:
    """The spec rewritten by a round-trip YAML editor (comments kept) with the sigmas set."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.util import load_yaml_guess_indent

    _, indent, block_seq_indent = load_yaml_guess_indent(text)
    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 120
    yaml.indent(mapping=2, sequence=indent or 2, offset=block_seq_indent or 0)
    doc = yaml.load(text)
    classes = doc["classes"] if isinstance(doc, dict) and "classes" in doc else [doc]
    for first, cls in enumerate(classes):
        keypoints = cls["keypoints"]
        for n, kp in enumerate(keypoints):
            name = kp if isinstance(kp, str) else kp.get("name")
            if name not in sigmas or (first and (isinstance(kp, str) or "sigma" not in kp)):
                continue
            if isinstance(kp, str):
                entry = CommentedMap(name=kp, sigma=sigmas[name])
                entry.fa.set_flow_style()
                keypoints[n] = entry
            else:
                kp["sigma"] = sigmas[name]
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def estimates_table(estimates: SigmaEstimates) -> list[tuple[str, str, str, int]]:
    """(keypoint, current, estimate, samples) rows for printing."""
    return [(k.keypoint, f"{k.current:g}", f"{k.estimate:g}" if k.estimate is not None else "(too few)", k.samples)
            for k in estimates.keypoints]


def as_dict(estimates: SigmaEstimates) -> dict[str, Any]:
    return {"tasks": estimates.tasks, "objects": estimates.objects,
            "keypoints": [{"keypoint": k.keypoint, "current": k.current, "estimate": k.estimate, "samples": k.samples}
                          for k in estimates.keypoints]}
