"""Video prediction with tracks versus the raw model, on the same frames in one run.

    .venv/bin/python -m benchmarks.predict_video [--video FILE.mp4] [--frames 96] [--rounds 3] [--imgsz 320] [--runtime onnx]

The frames (default: a clip made of the coco8-pose photos, each panned 3 px a frame for 12 frames,
so that ByteTrack has several people to follow and to start anew at each cut; `--video` for a real
video and a model that finds something in it) are run through, in interleaved rounds:
- raw: the model alone on the frames already decoded, through the same predictor the tracker uses
  (same model file, runtime and input size), nothing else;
- tracked: `poseops.video_predict.predict_video` as `poseops predict` runs it on a video: decoding,
  the model, ByteTrack, and each frame's JSON line written (to memory);
- tracked + smoothed: the same with the One-Euro keypoint filter;
- PoseModel.detect: the model as the service and `predict` on images run it (for reference).
Prints frames per second of each (median of the rounds) and tracked / raw (target >= 0.9). The model
runs at 320 px by default: the faster the model, the more decoding, tracking and writing show.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import tempfile
import time
from pathlib import Path

from benchmarks.common import RESULTS, add_model_arguments, interleaved, model_images, prepare

PAN_FRAMES, PAN_PX, FPS = 12, 3, 30.0


def people_clip(images: list[Path], folder: Path) -> Path:
    """The photos, each 640x480 and panned PAN_PX a frame for PAN_FRAMES frames, as one MP4."""
    import cv2
    import numpy as np

    path = folder / "people.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), FPS, (640, 480))
    for image_path in images:
        image = cv2.resize(cv2.imread(str(image_path)), (640, 480))
        for i in range(PAN_FRAMES):
            shift = np.float32([[1, 0, PAN_PX * i], [0, 1, 0]])
            writer.write(cv2.warpAffine(image, shift, (640, 480), borderMode=cv2.BORDER_REPLICATE))
    writer.release()
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--video", type=Path, help="a video to run on (default: a clip of the --images photos)")
    parser.add_argument("--frames", type=int, default=96, help="at most this many frames")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--imgsz", type=int, default=320, help="model input size")
    args = parser.parse_args()
    prepare()
    from poseops.inference import PoseModel
    from poseops.skeleton import load_skeleton
    from poseops.video_predict import VideoOptions, VideoTracker, predict_video, read_frames

    model = PoseModel(args.weights, load_skeleton(args.skeleton), args.runtime, args.imgsz,
                      performance="latency")  # as `poseops predict` loads it: one frame at a time
    with tempfile.TemporaryDirectory() as tmp:
        video = args.video or people_clip(model_images(args), Path(tmp))
        options = VideoOptions(max_frames=args.frames)
        frames = [image for _, _, image in read_frames(video, options)]
        tracker = VideoTracker(model, "bytetrack", options.conf_thres, options.iou_thres)
        detections: list[int] = []

        def raw() -> float:
            return timed(lambda: [tracker.raw(image) for image in frames])

        def tracked(smooth: bool) -> float:
            sink = io.StringIO()

            def write(frame, image) -> None:
                sink.write(json.dumps({"frame": frame.index, "time_ms": frame.time_ms, "detections": frame.detections}) + "\n")

            summary = predict_video(model, video, VideoOptions(max_frames=args.frames, smooth=smooth), write, tracker, raw_sample=0)
            detections.append(summary.detections)
            return summary.seconds

        def pose_model() -> float:
            return timed(lambda: [model.detect(image) for image in frames])

        seconds = interleaved({"raw": raw, "tracked": lambda: tracked(False), "tracked_smoothed": lambda: tracked(True),
                               "posemodel_detect": pose_model}, args.rounds)
    fps = {name: round(len(frames) / statistics.median(s), 2) for name, s in seconds.items()}
    print(RESULTS)
    print(f"video: {video.name if args.video else f'coco8-pose photos panned ({PAN_FRAMES} frames each)'}, "
          f"{len(frames)} frames, {detections[0]} tracked detections; model {Path(args.weights).name}, "
          f"runtime {model.runtime}, imgsz {model.imgsz}; median of {args.rounds} interleaved rounds")
    for name, value in fps.items():
        print(f"{name}: {value} frames/s  (seconds per round: {', '.join(f'{s:.2f}' for s in seconds[name])})")
    print(f"tracked / raw: {fps['tracked'] / fps['raw']:.3f}  (target >= 0.9)")
    print(f"tracked + smoothed / raw: {fps['tracked_smoothed'] / fps['raw']:.3f}")


def timed(work) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


if __name__ == "__main__":
    main()
