"""`poseops dataset import`: labels people already have (COCO, YOLO-pose, DeepLabCut) into a dataset.

Wired into the main CLI with `cli_import.register(app)`, under its `dataset` group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from poseops.cli_common import console, err_console, fail, progress_bar, user_errors

SHOWN_PER_REASON = 10  # skipped images listed one by one per reason; the rest counted


@user_errors
def dataset_import(
    name: Annotated[str, typer.Argument(help="Dataset name (made with `poseops dataset create`)")],
    path: Annotated[Path, typer.Argument(help="COCO: the keypoints JSON; YOLO: the folder (or its data.yaml); "
                                              "DeepLabCut: the project folder (or a CollectedData_*.csv)")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="coco, yolo or dlc")],
    rename: Annotated[list[str] | None, typer.Option("--map", help="OLD=NEW renames a class or keypoint of the labels to "
                                                     "the skeleton's name; OLD= leaves it out (repeatable)")] = None,
    class_name: Annotated[str | None, typer.Option("--class", help="The skeleton class the labels go into (DeepLabCut "
                                                   "has no classes; default: the spec's only class)")] = None,
    images: Annotated[Path | None, typer.Option(help="COCO: the folder of the images (default: images/ beside the "
                                                "annotations/ folder)")] = None,
    workers: Annotated[int, typer.Option(help="Parallel uploads")] = 4,
) -> None:
    """Import labeled images as annotations to review; the same files again add nothing."""
    from poseops.importing.names import parse_renames
    from poseops.importing.upload import import_labels
    from poseops.labelstudio import LabelStudioClient
    from poseops.settings import load_settings

    settings = load_settings()
    renames = parse_renames(rename)
    with LabelStudioClient(settings) as client, progress_bar() as bar:
        client.check()
        job = bar.add_task(f"importing {fmt}", total=None)
        report = import_labels(client, settings, name, fmt.lower(), path, renames=renames, class_name=class_name,
                               images_dir=images, workers=workers, on_progress=lambda n: bar.advance(job, n),
                               on_total=lambda n: bar.update(job, total=n))
    shown: dict[str, int] = {}
    for skip in report.skipped:
        shown[skip.reason] = shown.get(skip.reason, 0) + 1
        if shown[skip.reason] <= SHOWN_PER_REASON:
            err_console.print(f"[yellow]skipped[/] ({skip.reason}) {escape(skip.line())}", highlight=False)
    for reason, count in shown.items():
        if count > SHOWN_PER_REASON:
            err_console.print(f"[yellow]skipped[/] ({reason}) {count - SHOWN_PER_REASON} more", highlight=False)
    counts = ", ".join(f"{n} {reason}" for reason, n in report.skipped_counts().items()) or "none"
    console.print(f"imported {report.new_tasks + report.annotated} image(s) into {name!r} ({report.new_tasks} new tasks, "
                  f"{report.annotated} existing tasks annotated): {report.instances} objects, {report.keypoints} "
                  f"keypoints; already there with labels: {report.unchanged}; skipped: {counts}. "
                  f"Review them at {report.url}, then `poseops pull {name}`", highlight=False)
    if not report.labeled_images and report.skipped:
        raise fail(f"no image of {path} could be imported (see the reasons above)")


def register(app: typer.Typer) -> None:
    """Add `import` to the `poseops dataset` group."""
    (group,) = [g.typer_instance for g in app.registered_groups if g.name == "dataset"]
    group.command("import")(dataset_import)
