"""`poseops estimate-sigmas`: per-keypoint OKS sigmas from the images of a dataset labeled twice.

Wired into the main CLI with `cli_labels.register(app)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from poseops.cli_common import console, user_errors


@user_errors
def estimate_sigmas(
    dataset: Annotated[str, typer.Argument(help="Dataset name (its Label Studio project)")],
    write: Annotated[bool, typer.Option("--write", help="Write the estimates into the skeleton spec's `sigma` keys")] = False,
    spec: Annotated[Path | None, typer.Option(help="The skeleton spec to write (default: the dataset's)")] = None,
    min_objects: Annotated[int, typer.Option(help="Objects labeled twice needed for an estimate")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimates as JSON")] = False,
) -> None:
    """Estimate each keypoint's OKS sigma from tasks with two or more annotations (COCO's method).

    A keypoint's sigma is the spread of its repeated annotations relative to the object's size.

    Let a second annotator label some images again (Label Studio: annotations per task = 2), then run this.

    --write puts the estimates into the spec (comments and layout kept); training then uses them.
    """
    from poseops.datasets import load_record, project_of
    from poseops.labelstudio import LabelStudioClient
    from poseops.settings import load_settings
    from poseops.sigmas import as_dict, check_enough, estimate, estimates_table, twice_labeled, write_sigmas
    from poseops.skeleton import load_skeleton

    settings = load_settings()
    spec_path = spec or Path(load_record(settings, dataset).skeleton)
    skeleton = load_skeleton(spec_path)
    with LabelStudioClient(settings) as client:
        tasks = list(client.iter_tasks(project_of(client, dataset).id))
    estimates = estimate(skeleton, twice_labeled(skeleton, tasks))
    check_enough(estimates, dataset, min_objects)
    if as_json:
        console.print_json(json.dumps(as_dict(estimates)))
    else:
        table = Table(title=f"OKS sigmas of {dataset}: {estimates.objects} object(s) labeled twice in "
                            f"{estimates.tasks} task(s)")
        for column in ("keypoint", "current", "estimate", "objects"):
            table.add_column(column)
        for row in estimates_table(estimates):
            table.add_row(*map(str, row))
        console.print(table)
    if write:
        new = {k.keypoint: k.estimate for k in estimates.keypoints if k.estimate is not None}
        write_sigmas(spec_path, new)
        console.print(f"wrote {len(new)} sigma(s) into {escape(str(spec_path))}")
    else:
        console.print("[dim]--write puts them into the skeleton spec[/]")


def register(app: typer.Typer) -> None:
    """Add `estimate-sigmas` to the `poseops` command line."""
    app.command("estimate-sigmas")(estimate_sigmas)
