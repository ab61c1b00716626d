"""The poseops detection service: `bentoml serve service:PoseDetector --working-dir bentos`.

Thin over the package: configuration comes from environment variables (see
docs/api.md; `poseops serve` sets them), the HTTP endpoints are the FastAPI app of
`poseops.detect_api` mounted on this service, and inference runs through the
service instance's `Detector`. BentoML's own /healthz, /readyz (200 once the model
is loaded), /livez, /metrics and /docs.json stay as they are.
"""

from __future__ import annotations

from pathlib import Path

import bentoml

from poseops.detect_api import create_app

http_app = create_app(lambda: bentoml.get_current_service().detector, static_dir=Path(__file__).parent / "static")


@bentoml.service(name="poseops", traffic={"timeout": 120}, workers=1)
@bentoml.asgi_app(http_app, path="/")
class PoseDetector:
    """YOLO-pose detections with the skeleton spec's keypoint names; see docs/api.md."""

    def __init__(self) -> None:
        from poseops.detector import Detector, ServiceConfig

        self.detector = Detector(ServiceConfig.from_env())
        self.detector.load_in_background()

    def __is_ready__(self) -> bool:
        return self.detector.ready
