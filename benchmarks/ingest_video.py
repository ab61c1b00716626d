"""Video ingestion: video frames ingested per second against decoding the same video alone, in one run.

    python -m benchmarks.ingest_video [--video V] [--frames 20] [--label-studio-url URL --token TOKEN]

1. decoding alone: OpenCV reads every frame of the video (decoded and converted to a picture),
   nothing else: the least any ingestion does;
2. choosing frames (`poseops.frames.choose_frames`): decode at the automatic stride, embed,
   k-means, decode again up to the last chosen frame, PNG-encode the chosen ones;
3. the whole ingestion (the `add-video` flow into a fresh dataset of a Label Studio started for
   the run, or the one given): step 2, the upload of the chosen frames as tasks with the template
   pre-label, and the flow's bookkeeping.
Each is timed once, interleaved in that order. Frames per second count the video's frames (what the
user feeds in); the ratios are against decoding alone. Label Studio's start is not counted.
"""

from __future__ import annotations

import argparse
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.common import PERSON_SPEC, RESULTS, SHARED, add_label_studio_arguments, label_studio, prepare


def decode_alone(video: Path) -> tuple[int, float]:
    import cv2

    t0 = time.perf_counter()
    capture = cv2.VideoCapture(str(video))
    count = 0
    while True:
        ok, _ = capture.read()
        if not ok:
            break
        count += 1
    capture.release()
    return count, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--video", type=Path, default=SHARED / "videos" / "openfield-m3v1.mp4")
    parser.add_argument("--frames", type=int, default=20, help="frames to choose")
    parser.add_argument("--no-label-studio", action="store_true", help="leave out step 3 (no server)")
    add_label_studio_arguments(parser)
    args = parser.parse_args()
    prepare()

    import sklearn.cluster  # noqa: F401 - imported before the clock starts, as in a flow that already ran

    from poseops.frames import FrameOptions, choose_frames

    frames, decode_s = decode_alone(args.video)
    t0 = time.perf_counter()
    selection = choose_frames(args.video, FrameOptions(frames=args.frames))
    choose_s = time.perf_counter() - t0
    ingest_s = summary = None
    if not args.no_label_studio:
        work = Path(tempfile.mkdtemp(prefix="poseops-bench-video-"))
        with label_studio(args, work) as settings:
            from prefect.testing.utilities import prefect_test_harness

            from poseops.datasets import create_dataset
            from poseops.labelstudio import LabelStudioClient

            name = f"bench-video-{uuid.uuid4().hex[:6]}"
            with LabelStudioClient(settings) as client:
                create_dataset(client, settings, name, PERSON_SPEC)
            with prefect_test_harness(server_startup_timeout=180):
                from poseops.flows.add_video import add_video

                t0 = time.perf_counter()
                summary = add_video(dataset=name, videos=[str(args.video)], frames=args.frames, use_model=False)
                ingest_s = time.perf_counter() - t0

    print(RESULTS)
    print(f"video: {args.video.name}, {frames} frames {selection.video.width}x{selection.video.height}; "
          f"{selection.candidates} candidates, {len(selection.frames)} frames chosen")
    print(f"decoding alone:           {decode_s:7.2f} s  {frames / decode_s:7.1f} video frames/s")
    print(f"choosing frames:          {choose_s:7.2f} s  {frames / choose_s:7.1f} video frames/s  "
          f"ratio to decoding alone {decode_s / choose_s:.2f}")
    if ingest_s is not None:
        print(f"whole ingestion (flow):   {ingest_s:7.2f} s  {frames / ingest_s:7.1f} video frames/s  "
              f"ratio to decoding alone {decode_s / ingest_s:.2f}; {summary['added']} tasks added "
              f"({summary['added'] / ingest_s:.2f} tasks/s)")


if __name__ == "__main__":
    main()
