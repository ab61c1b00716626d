"""`poseops dataset add-video`: diverse frames of videos become pre-labeled Label Studio tasks.

Wired into the main CLI with `cli_video.register(app)`, on its `dataset` group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from poseops.cli_common import console, err_console, fail, flow, user_errors
from poseops.frames import DEFAULT_FRAMES


@user_errors
def add_video(
    name: Annotated[str, typer.Argument(help="Dataset name")],
    videos: Annotated[list[Path], typer.Argument(help="Video files, or folders searched for videos (mp4, avi, mov, mkv, ...)")],
    frames: Annotated[int, typer.Option("--frames", "-n", min=1, help="Diverse frames to choose per video (k-means)")] = DEFAULT_FRAMES,
    stride: Annotated[int | None, typer.Option(min=1, help="Consider every stride-th frame (default: about 1,000 per video)")] = None,
    url: Annotated[str | None, typer.Option(help="Pre-label with this detection service (default: the deployed one, when it answers)")] = None,
    weights: Annotated[str | None, typer.Option(help="Or pre-label with a weights file, run in-process")] = None,
    model: Annotated[bool, typer.Option("--model/--no-model", help="Pre-label new frames with the model too (the template always)")] = True,
    params: Annotated[Path, typer.Option(help="params.yaml with the `autolabel` thresholds")] = Path("params.yaml"),
) -> None:
    """Add diverse frames of videos as tasks (template pre-label, and the deployed model's); a second run adds nothing."""
    add_video_flow = flow("add_video.add_video")
    from poseops.flows.add_video import VideoIngestError

    try:
        summary = add_video_flow(dataset=name, videos=[str(v) for v in videos], frames=frames, stride=stride,
                                 service_url=url, weights=weights, use_model=model, params_file=str(params),
                                 progress=True)
    except VideoIngestError as e:
        show(e.summary)
        raise fail(str(e)) from None
    show(summary)


def show(summary: dict) -> None:
    for v in summary["videos"]:
        if v["error"]:
            continue
        err_console.print(f"{escape(v['video'])}: {v['chosen']} frame(s) chosen from {v['candidates']} candidates "
                          f"({v['decoded']} decoded, {v['duplicates']} duplicate, {v['near_duplicates']} near-duplicate); "
                          f"{len(v['added'])} added, {v['already']} already in the dataset"
                          + (f", {v['predicted']} pre-labeled by the model" if v["predicted"] else ""), highlight=False)
        for warning in v["warnings"]:
            err_console.print(f"[yellow]warning:[/] {escape(warning)}", highlight=False)
    ok = sum(1 for v in summary["videos"] if not v["error"])
    console.print(f"added {summary['added']} task(s) to {summary['dataset']!r} from {ok} video(s)"
                  + (f"; pre-labels: template and {summary['model']}" if summary["model"] else "; pre-labels: template"))


def register(app: typer.Typer) -> None:
    """`add-video` on the app's `dataset` group."""
    group = next(g.typer_instance for g in app.registered_groups if g.name == "dataset")
    group.command("add-video")(add_video)
