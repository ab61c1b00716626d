"""Promotion's keypoint guard and the champion-vs-challenger comparison on the same val split.

A challenger better on average can be worse on one keypoint (a paw, an eye) and the headline metric hides
it. `compare_keypoints` sets each keypoint's PCK@0.1 (`GUARD_METRIC`) of the challenger beside the
champion's; a drop of more than `promote.max_keypoint_drop` names the keypoint, and promotion refuses the
challenger, or promotes it flagged (`promote.keypoint_guard`). `image_differences` lists the val images
whose OKS differs most between the two models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from poseops.training.gallery import TaskLink
from poseops.training.keypoint_metrics import GUARD_METRIC, KeypointReport

GUARD_LABEL = "PCK@0.1"


@dataclass(frozen=True)
class KeypointDelta:
    name: str
    champion: float | None
    challenger: float | None
    drop: float | None  # champion - challenger (positive: worse)
    regressed: bool  # dropped by more than the allowed amount


@dataclass(frozen=True)
class KeypointComparison:
    """Each keypoint's guard metric for the champion and the challenger, on the same val split."""

    metric: str
    max_drop: float
    rows: tuple[KeypointDelta, ...]

    @property
    def regressed(self) -> list[str]:
        return [r.name for r in self.rows if r.regressed]

    def reason(self) -> str | None:
        """Why the guard objects, naming each keypoint, or None."""
        bad = [r for r in self.rows if r.regressed]
        if not bad:
            return None
        listed = ", ".join(f"{r.name} {r.champion:.3f} → {r.challenger:.3f} (−{r.drop:.3f})" for r in bad)
        return (f"{GUARD_LABEL} dropped on {len(bad)} keypoint(s) by more than promote.max_keypoint_drop "
                f"{self.max_drop}: {listed}")


@dataclass(frozen=True)
class ImageDiff:
    image: str
    champion_oks: float
    challenger_oks: float
    task_id: int | str | None
    task_url: str | None

    @property
    def change(self) -> float:
        return self.challenger_oks - self.champion_oks


def compare_keypoints(challenger: KeypointReport, champion: KeypointReport, max_drop: float) -> KeypointComparison:
    """The guard's comparison: a keypoint regressed when its PCK@0.1 fell more than `max_drop` below the champion's."""
    champ = champion.by_name()
    rows = []
    for k in challenger.keypoints:
        old = getattr(champ[k.name], GUARD_METRIC) if k.name in champ else None
        new = getattr(k, GUARD_METRIC)
        drop = None if old is None or new is None else old - new
        rows.append(KeypointDelta(k.name, old, new, drop, drop is not None and drop > max_drop + 1e-9))
    return KeypointComparison(GUARD_METRIC, max_drop, tuple(rows))


def image_differences(challenger: KeypointReport, champion: KeypointReport, links: dict[str, TaskLink],
                      n: int) -> list[ImageDiff]:
    """The n val images whose OKS differs most between the champion and the challenger (largest first)."""
    old = {s.image: s.oks for s in champion.images}
    diffs = []
    for s in challenger.images:
        if s.image in old:
            link = links.get(s.image)
            diffs.append(ImageDiff(s.image, old[s.image], s.oks, link.task_id if link else None,
                                   link.url if link else None))
    diffs.sort(key=lambda d: (-abs(d.change), d.image))
    return diffs[:n]


def promotion_markdown(promotion: dict[str, Any]) -> str:
    """The per-keypoint comparison and the images that differ most, as Markdown (a Promotion's asdict())."""
    comparison, images = promotion.get("keypoints"), promotion.get("image_diffs") or []
    if not comparison:
        return ""
    champion, candidate = promotion["champion_version"], promotion["candidate_version"]
    lines = ["", f"### Per keypoint: {GUARD_LABEL}, champion (version {champion}) vs challenger (version {candidate})",
             "", f"Guard: `promote.keypoint_guard: {promotion.get('keypoint_guard')}`, a drop of more than "
             f"{comparison['max_drop']} refuses or flags.", "",
             "| keypoint | champion | challenger | change | |", "|---|---|---|---|---|"]
    for r in comparison["rows"]:
        fmt = (lambda v: "-" if v is None else f"{v:.3f}")  # noqa: E731
        change = "-" if r["drop"] is None else f"{-r['drop']:+.3f}"
        lines.append(f"| {r['name']} | {fmt(r['champion'])} | {fmt(r['challenger'])} | {change} | "
                     f"{'**regressed**' if r['regressed'] else ''} |")
    if images:
        lines += ["", "### Val images where the two differ most (OKS)", "",
                  "| image | champion | challenger | change | Label Studio |", "|---|---|---|---|---|"]
        for d in images:
            task = f"[task {d['task_id']}]({d['task_url']})" if d.get("task_url") else "-"
            lines.append(f"| `{d['image']}` | {d['champion_oks']:.3f} | {d['challenger_oks']:.3f} | "
                         f"{d['challenger_oks'] - d['champion_oks']:+.3f} | {task} |")
    return "\n".join(lines) + "\n"
