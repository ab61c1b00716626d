"""`poseops predict`: the model in this process over images, folders and videos, videos with track ids.

`register(app)` adds it to the `poseops` Typer app; `python -m poseops.cli_predict predict ...`
runs it on its own. Video frames go through `poseops.video_predict` (tracking, smoothing, the
speed against the raw model); images through `PoseModel.detect`, as the service answers them.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from poseops.cli_common import progress_bar, user_errors
from poseops.cli_serve import ConfOpt, IouOpt, collect_sources
from poseops.constants import DEFAULT_CONF_THRES, DEFAULT_IOU_THRES, IMAGE_SUFFIXES
from poseops.detector import DEFAULT_SKELETON
from poseops.errors import PoseopsError
from poseops.imageio import check_within_budget
from poseops.video_predict import TRACKERS, VideoError, VideoFrame, VideoOptions

if TYPE_CHECKING:
    import numpy as np

    from poseops.skeleton import Skeleton

FRAME_COLUMNS = ("source", "frame", "time_ms")
CSV_COLUMNS = (*FRAME_COLUMNS, "track_id", "class", "confidence", "x", "y", "width", "height")


def model_files(weights: str | None, skeleton: Path | None, runtime: str | None, params: Path) -> tuple[str, Path, str | None]:
    """The weights, skeleton spec and runtime to run: as given, or a registered version's (`models:/...`; default
    the champion), its runtime chosen among its files as the service chooses (`ServiceConfig.with_model_files`)."""
    if weights is None or weights.startswith("models:/"):
        from poseops.deploy import fetch_version
        from poseops.detector import ServiceConfig
        from poseops.params import load_params
        from poseops.runtimes import requested_runtime
        from poseops.settings import load_settings

        uri = weights or load_params(params, missing_ok=True).champion_uri
        try:
            _, files = fetch_version(uri, load_settings())
        except PoseopsError as e:
            raise PoseopsError(f"{e}" + ("" if weights else "; or name a model file with --weights")) from None
        config = ServiceConfig(runtime=requested_runtime(runtime)).with_model_files(files)
        return config.weights, skeleton or config.skeleton, config.runtime
    return weights, skeleton or Path(DEFAULT_SKELETON), runtime


class CsvSink:
    """One CSV row per detection (frames without any have none): frame, track, box, then x, y, confidence per keypoint."""

    def __init__(self, path: Path, skeleton: Skeleton) -> None:
        names = list(dict.fromkeys(kp.name for cls in skeleton.classes for kp in cls.keypoints))
        self.columns = [*CSV_COLUMNS, *(f"{n}_{axis}" for n in names for axis in ("x", "y", "confidence"))]
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", encoding="utf-8", newline="")
        self._writer = csv.DictWriter(self._file, self.columns)
        self._writer.writeheader()

    def write(self, record: dict[str, Any]) -> None:
        for det in record.get("detections", []):
            row = {k: record.get(k) if k in FRAME_COLUMNS else det.get(k) for k in CSV_COLUMNS}
            for point in det["keypoints"]:
                row |= {f"{point['name']}_{axis}": point[axis] for axis in ("x", "y", "confidence")}
            self._writer.writerow(row)

    def close(self) -> None:
        self._file.close()


def draw_track_ids(canvas: np.ndarray, detections: list[dict[str, Any]]) -> np.ndarray:
    """Write each tracked detection's id (`#3`) inside its box, bottom left (the class and confidence are above it)."""
    import cv2

    scale = max(1, round(max(canvas.shape[:2]) / 640))
    for det in detections:
        if det.get("track_id") is not None:
            x, y = int(det["x"]) + 3 * scale, int(det["y"] + det["height"]) - 5 * scale
            cv2.putText(canvas, f"#{det['track_id']}", (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, (255, 255, 255), 2 * scale)
    return canvas


class VideoWriterSink:
    """An annotated copy of a video (`<stem>.annotated.mp4`), at the source's frame rate divided by the stride."""

    def __init__(self, path: Path, source: Path, stride: int) -> None:
        self.path, self.source, self.stride = path, source, stride
        self._writer: Any = None

    def write(self, image: np.ndarray) -> None:
        import cv2

        if self._writer is None:
            capture = cv2.VideoCapture(str(self.source))
            fps = (capture.get(cv2.CAP_PROP_FPS) or 25.0) / self.stride
            capture.release()
            fourcc = cv2.VideoWriter_fourcc(*"mp4v")
            self._writer = cv2.VideoWriter(str(self.path), fourcc, fps, (image.shape[1], image.shape[0]))
        self._writer.write(image)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()


def read_image(source: Path) -> np.ndarray | None:
    """An image decoded by OpenCV (EXIF orientation applied) after its header passed the pixel budget; None if unreadable."""
    import cv2

    check_within_budget(source)  # the pixel budget, from the header, before OpenCV decodes it
    return cv2.imread(str(source))


def predict(
    paths: Annotated[list[Path], typer.Argument(exists=True, help="images, videos or folders of them")],
    out: Annotated[Path, typer.Option(help="JSON lines: one line per image or video frame")],
    csv_out: Annotated[Path | None, typer.Option("--csv", help="also a CSV: one row per detection, keypoints as columns")] = None,
    weights: Annotated[str | None, typer.Option(help="a .pt or .onnx file (bare names are looked up in POSEOPS_WEIGHTS_DIR) "
                                                     "or models:/NAME@ALIAS; default: the champion of params.yaml's registered model")] = None,
    skeleton: Annotated[Path | None, typer.Option(help="the skeleton spec the model was trained with "
                                                       "(default: the registered version's; with --weights a file, the person spec)")] = None,
    runtime: Annotated[str | None, typer.Option(help="auto (the best for the CPU: openvino), openvino, onnx or torch; "
                                                     "default: POSEOPS_RUNTIME, else auto")] = None,
    imgsz: Annotated[int | None, typer.Option(help="model input size (default: the size the model was trained or exported at)")] = None,
    conf_thres: ConfOpt = DEFAULT_CONF_THRES,
    iou_thres: IouOpt = DEFAULT_IOU_THRES,
    save_dir: Annotated[Path | None, typer.Option(help="write annotated images (and <video>.annotated.mp4 with track ids) here")] = None,
    tracker: Annotated[str, typer.Option(help=f"videos: {', '.join(TRACKERS)} (Ultralytics' trackers), or none (no track ids)")] = "bytetrack",
    smooth: Annotated[bool, typer.Option("--smooth/--no-smooth", help="videos: One-Euro smoothing of each track's keypoints")] = False,
    start_frame: Annotated[int, typer.Option(min=0, help="videos: the first frame to predict on")] = 0,
    stride: Annotated[int, typer.Option(min=1, help="videos: every N-th frame from the first")] = 1,
    max_frames: Annotated[int | None, typer.Option(min=1, help="videos: at most this many frames each")] = None,
    params: Annotated[Path, typer.Option(help="params.yaml naming the registered model (for the default champion)")] = Path("params.yaml"),
) -> None:
    """Run the model in this process over images, folders and videos; write JSON lines (and a CSV).

    Video frames carry each object's track id across frames; the summary gives frames per second
    against the raw model on the same frames.
    """
    from poseops.inference import load_model
    from poseops.skeleton import load_skeleton

    sources = collect_sources(paths)
    if not sources:
        raise PoseopsError(f"no image or video files in {', '.join(map(str, paths))}")
    options = VideoOptions(None if tracker == "none" else tracker, smooth, conf_thres, iou_thres, start_frame, stride, max_frames)
    weights_file, skeleton_file, runtime = model_files(weights, skeleton, runtime, params)
    spec = load_skeleton(skeleton_file)
    model = load_model(weights_file, spec, runtime, imgsz, performance="latency")  # one image (frame) at a time
    run = _Run(model, spec, options, out, csv_out, save_dir)
    try:
        run.all(sources)
    finally:
        run.close()
    for line in run.summaries:
        typer.echo(line, err=True)
    typer.echo(f"{run.lines} lines, {run.detections} detections -> {out}" + (f" and {csv_out}" if csv_out else ""))


class _Run:
    """One `predict` call: the sinks, the progress bar, the counts."""

    def __init__(self, model, spec: Skeleton, options: VideoOptions, out: Path, csv_out: Path | None, save_dir: Path | None) -> None:
        self.model, self.spec, self.options, self.save_dir = model, spec, options, save_dir
        out.parent.mkdir(parents=True, exist_ok=True)
        if save_dir is not None:
            save_dir.mkdir(parents=True, exist_ok=True)
        self._jsonl = out.open("w", encoding="utf-8")
        self._csv = CsvSink(csv_out, spec) if csv_out else None
        self.lines = self.detections = 0
        self.summaries: list[str] = []
        self._tracker = None

    def write(self, record: dict[str, Any]) -> None:
        self._jsonl.write(json.dumps(record) + "\n")
        if self._csv is not None:
            self._csv.write(record)
        self.lines += 1
        self.detections += len(record.get("detections", []))

    def all(self, sources: list[Path]) -> None:
        from poseops.video_predict import planned_frames

        videos = [s for s in sources if s.suffix.lower() not in IMAGE_SUFFIXES]
        total = len(sources) - len(videos) + sum(planned_frames(v, self.options) for v in videos)
        with progress_bar() as progress:
            task = progress.add_task("predict", total=total)
            for source in sources:
                if source in videos:
                    self.video(source, lambda: progress.advance(task))
                else:
                    self.image(source)
                    progress.advance(task)

    def image(self, source: Path) -> None:
        from poseops.drawing import draw_detections

        record: dict[str, Any] = {"source": str(source)}
        image = read_image(source)
        if image is None:
            record["error"] = "cannot be read as an image"
        else:
            detections = self.model.detect(image, self.options.conf_thres, self.options.iou_thres)
            record |= {"width": image.shape[1], "height": image.shape[0], "detections": detections}
            if self.save_dir is not None:
                import cv2

                cv2.imwrite(str(self.save_dir / source.name), draw_detections(image, detections, self.spec))
        self.write(record)

    def video(self, source: Path, advance) -> None:
        from poseops.drawing import draw_detections
        from poseops.video_predict import VideoTracker, predict_video

        if self.options.tracker is not None and self._tracker is None:
            self._tracker = VideoTracker(self.model, self.options.tracker, self.options.conf_thres, self.options.iou_thres)
        writer = VideoWriterSink(self.save_dir / f"{source.stem}.annotated.mp4", source, self.options.stride) if self.save_dir else None

        def on_frame(frame: VideoFrame, image: np.ndarray) -> None:
            self.write({"source": str(source), "frame": frame.index, "time_ms": frame.time_ms,
                        "width": frame.width, "height": frame.height, "detections": frame.detections})
            if writer is not None:
                writer.write(draw_track_ids(draw_detections(image, frame.detections, self.spec), frame.detections))
            advance()

        try:
            summary = predict_video(self.model, source, self.options, on_frame, self._tracker)
        except VideoError as e:
            self.write({"source": str(source), "error": str(e)})
            return
        finally:
            if writer is not None:
                writer.close()
        self.summaries.append(summary.describe())

    def close(self) -> None:
        self._jsonl.close()
        if self._csv is not None:
            self._csv.close()


def register(app: typer.Typer) -> None:
    """Add `predict` to the `poseops` CLI."""
    app.command("predict")(user_errors(predict))


if __name__ == "__main__":
    standalone = typer.Typer(help="poseops predict", no_args_is_help=True)
    standalone.callback()(lambda: None)  # a group, so the command is named: python -m poseops.cli_predict predict ...
    register(standalone)
    standalone()
