"""Flow `add-video`: videos → their diverse frames as Label Studio tasks with pre-labels.

    poseops dataset add-video NAME VIDEO... --frames 20

Per video: decode and choose the frames (`poseops.frames`), upload the new ones as tasks
(`poseops.video_ingest`, retried on Label Studio errors), and pre-label them with the
deployed model when one answers. A video that cannot be read is reported and the others go
on; the run then fails at the end, naming every video that failed.
"""

from __future__ import annotations

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact

from poseops import frames as steps
from poseops import video_ingest
from poseops.errors import PoseopsError
from poseops.flows.retries import NETWORK_RETRIES, label_studio
from poseops.params import load_params
from poseops.reports import artifact_key
from poseops.settings import load_settings


class VideoIngestError(PoseopsError, RuntimeError):
    """Some videos could not be ingested (the others were); `summary` is the run's summary."""

    def __init__(self, message: str, summary: dict):
        super().__init__(message)
        self.summary = summary


@task
def choose_frames(video: str, options: steps.FrameOptions, progress: bool) -> steps.FrameSelection:
    if not progress:
        return steps.choose_frames(video, options)
    from pathlib import Path

    from poseops.cli_common import progress_bar

    with progress_bar() as bar:
        job = bar.add_task(Path(video).name, total=None)
        return steps.choose_frames(video, options, on_progress=lambda n: bar.advance(job, n),
                                   on_total=lambda n: bar.update(job, total=n or None))


@task(**NETWORK_RETRIES)
def upload_frames(dataset: str, selection: steps.FrameSelection,
                  result: video_ingest.VideoResult) -> tuple[video_ingest.VideoResult, dict[int, bytes]]:
    settings = load_settings()
    with label_studio(settings) as client:
        new = video_ingest.upload_frames(client, settings, dataset, selection, result)
    return result, new


@task(**NETWORK_RETRIES)
def prelabel(dataset: str, new: dict[int, bytes], service_url: str | None, weights: str | None,
             params_file: str) -> tuple[int, dict[int, str]]:
    from poseops.autolabel import AutolabelOptions

    settings = load_settings()
    options = AutolabelOptions.of(load_params(params_file, missing_ok=True).autolabel)
    with label_studio(settings) as client:
        return video_ingest.prelabel_with_model(client, settings, dataset, new, service_url, weights, options)


def deployed_model(service_url: str | None, weights: str | None, use_model: bool) -> str | None:
    """The service to pre-label with: the one named, else the deployed one when it answers (None: template only)."""
    if not use_model or weights:
        return None
    if service_url:
        return service_url
    from poseops.deploy import service_server

    settings = load_settings()
    return settings.service_url if service_server(settings).answers() else None


def ingest_one(dataset: str, video: str, options: steps.FrameOptions, model: tuple[str | None, str | None],
               params_file: str, progress: bool) -> video_ingest.VideoResult:
    result = video_ingest.VideoResult(video)
    try:
        selection = choose_frames(video, options, progress)
    except steps.VideoError as e:
        result.error = str(e)
        get_run_logger().error("%s", e)
        return result
    result.sha256, result.decoded, result.candidates = selection.video.sha256, selection.decoded, selection.candidates
    result.duplicates, result.near_duplicates = selection.duplicates, selection.near_duplicates
    result.chosen, result.warnings = len(selection.frames), list(selection.warnings)
    for warning in selection.warnings:
        get_run_logger().warning("%s", warning)
    result, new = upload_frames(dataset, selection, result)
    if new and any(model):
        result.predicted, failed = prelabel(dataset, new, *model, params_file)
        result.warnings += [f"pre-labeling task {task_id} failed: {why}" for task_id, why in failed.items()]
    return result


@flow(name="add-video")
def add_video(dataset: str, videos: list[str], frames: int = steps.DEFAULT_FRAMES, stride: int | None = None,
              service_url: str | None = None, weights: str | None = None, use_model: bool = True,
              params_file: str = "params.yaml", progress: bool = False) -> dict:
    """Choose `frames` diverse frames of each video and add the new ones to the dataset as pre-labeled tasks."""
    options = steps.FrameOptions(frames=frames, stride=stride)
    paths, missing = video_ingest.collect_videos(videos)
    model = (deployed_model(service_url, weights, use_model), weights if use_model else None)
    results = [video_ingest.VideoResult(str(path), error=why) for path, why in missing]
    results += [ingest_one(dataset, str(path), options, model, params_file, progress) for path in paths]
    summary = {"dataset": dataset, "frames_per_video": frames, "model": model[0] or model[1],
               "videos": [r.to_dict() for r in results], "added": sum(len(r.added) for r in results)}
    create_markdown_artifact(key=artifact_key("add-video", dataset), markdown=summary_markdown(summary),
                             description=f"video ingestion into {dataset}")
    failed = [r for r in results if r.error]
    if failed:
        raise VideoIngestError(f"{len(failed)} of {len(results)} video(s) could not be ingested: "
                               + "; ".join(f"{r.video}: {r.error}" for r in failed)
                               + (". The others were ingested." if len(failed) < len(results) else ""), summary)
    return summary


def summary_markdown(summary: dict) -> str:
    lines = [f"# Video ingestion into {summary['dataset']}", "",
             f"{summary['added']} task(s) added; up to {summary['frames_per_video']} frames per video; pre-labels: "
             f"template{' and ' + summary['model'] if summary['model'] else ''}.", "",
             "| video | decoded | candidates | chosen | added | already there | problem |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for v in summary["videos"]:
        lines.append(f"| {v['video']} | {v['decoded']} | {v['candidates']} | {v['chosen']} | {len(v['added'])} | "
                     f"{v['already']} | {v['error'] or '; '.join(v['warnings'])} |")
    return "\n".join(lines) + "\n"
