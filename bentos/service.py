"""The poseops detection service: `bentoml serve service:PoseDetector --working-dir bentos`.

Thin over the package: configuration comes from environment variables (see
docs/api.md; `poseops serve` sets them), the HTTP endpoints are the FastAPI app of
`poseops.detect_api` mounted on this service, and inference runs through the
service instance's `Detector`. BentoML's own /healthz, /readyz (200 once the model
is loaded), /livez, /metrics and /docs.json stay as they are.
"""

from __future__ import annotations

import json
from pathlib import Path

import bentoml

from poseops.detect_api import REQUEST_TIMEOUT_S, create_app

# In a Bento built by `poseops deploy`, this file names the model store entry it serves
# (packed into the Bento); otherwise the weights come from POSEOPS_WEIGHTS.
DEPLOYED_MODEL = Path(__file__).with_name("deployed_model.json")
MODEL_TAG = json.loads(DEPLOYED_MODEL.read_text())["tag"] if DEPLOYED_MODEL.is_file() else None

http_app = create_app(lambda: bentoml.get_current_service().detector, static_dir=Path(__file__).parent / "static")


@bentoml.service(name="poseops", traffic={"timeout": REQUEST_TIMEOUT_S}, workers=1)
@bentoml.asgi_app(http_app, path="/")
class PoseDetector:
    """YOLO-pose detections with the skeleton spec's keypoint names; see docs/api.md."""

    if MODEL_TAG is not None:
        model = bentoml.models.BentoModel(MODEL_TAG)

    def __init__(self) -> None:
        from poseops.detector import Detector, ServiceConfig

        config = ServiceConfig.from_env()
        if MODEL_TAG is not None:
            config = config.with_model_files(Path(self.model.path))
        self.detector = Detector(config)
        self.detector.load_in_background()

    def __is_ready__(self) -> bool:
        return self.detector.ready
