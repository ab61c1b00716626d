"""The champion as a Label Studio ML backend: predictions appear the moment an annotator opens a task.

Label Studio's ML backend protocol is four JSON endpoints (`GET /health`, `POST /setup`,
`POST /predict`, `POST /webhook`), written here directly on FastAPI: the `label-studio-ml`
package on the registry (1.0.9) pins Flask 1.1 and Jinja2 3.0, which the rest of the stack
cannot share. The backend follows the registry's champion alias (`/setup`, which Label Studio
calls before every prediction run, and `/predict` use the last lookup, at most ALIAS_TTL_S old),
and a promotion swaps the model in without touching Label Studio. The result regions come from
the same code as batch autolabel (`autolabel.prediction_of`), so both write the same skeleton in
the spec's order under the same model version name (`<registered model>:<version>`). Each image
is fetched from Label Studio and decoded once; the answer's `Server-Timing` header says where
the time went (fetch, decode, detect, regions).

Before any model is promoted, the backend answers the dataset's template skeleton (model
version `template`, the pre-label `poseops dataset create` places on uploads): an annotator who
opens a task imported some other way gets the same skeleton to drag into place, not an error.

`/webhook` receives Label Studio's annotation events and hands them to
`poseops.retrain_trigger`, which starts the loop deployment when enough labels changed.

    poseops ml-backend up                 # 127.0.0.1:9090 (POSEOPS_ML_BACKEND_URL)
    poseops dataset connect-backend NAME  # registers it (and the webhook) on the project
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.requests import Request  # FastAPI resolves the handlers' annotations in this module

from poseops.constants import ML_BACKEND_TITLE
from poseops.errors import PoseopsError
from poseops.labelstudio import LabelStudioError
from poseops.params import Params, load_params
from poseops.retrain_trigger import ANNOTATION_ACTIONS as ACTIONS
from poseops.settings import Settings, load_settings

log = logging.getLogger(__name__)

SECRET_HEADER = "X-Poseops-Webhook-Secret"  # noqa: S105 - a header name, not a secret
ALIAS_TTL_S = 2.0  # how long one alias lookup answers for (a burst of /predict calls asks the registry once)
PROJECT_TTL_S = 30.0  # how long a project's dataset record (for the template) is kept


class BackendError(PoseopsError, RuntimeError):
    """The backend cannot predict (no champion, a model that does not load); the message says what to do."""


@dataclass(frozen=True)
class LoadedModel:
    version: str  # "<registered model>:<version>", the predictions' model_version
    skeleton: Any
    model: Any  # inference.PoseModel: detects in decoded images


class Champion:
    """The model the registry's champion alias names, loaded once per version.

    The alias is looked up at most every ALIAS_TTL_S, and off the request path: a request that finds
    the last lookup older than half of it starts the next one in the background and goes on with the
    version it has; only one older than ALIAS_TTL_S (an idle backend) waits for a lookup.
    """

    def __init__(self, settings: Settings, params: Params) -> None:
        self.settings, self.params = settings, params
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        self._checked_at = 0.0
        self._version: str | None = None
        self._refreshing = False
        self._registry = None  # one MLflow client, made on first use

    def _lookup(self) -> str:
        from poseops import tracking

        try:
            if self._registry is None:
                self._registry = tracking.client(must_exist=True)
            mv = tracking.resolve_model_uri(self._registry, self.params.champion_uri)
        except PoseopsError as e:
            raise BackendError(f"no champion to predict with: {e}") from None
        return f"{mv.name}:{mv.version}"

    def _refresh(self) -> None:
        try:
            version = self._lookup()
        except Exception as e:  # noqa: BLE001 - the next request looks again, and says why when it must wait
            log.warning("looking up the champion failed: %s", e)
            version = None
        with self._lock:
            if version is not None:
                self._version, self._checked_at = version, time.monotonic()
            self._refreshing = False

    def version(self) -> str:
        """The champion's `<name>:<version>` now (looked up at most every ALIAS_TTL_S)."""
        with self._lock:
            age = time.monotonic() - self._checked_at
            if self._version is not None and age <= ALIAS_TTL_S:
                if age > ALIAS_TTL_S / 2 and not self._refreshing:
                    self._refreshing = True
                    threading.Thread(target=self._refresh, name="champion-alias", daemon=True).start()
                return self._version
            self._version, self._checked_at = self._lookup(), time.monotonic()
            return self._version

    def model(self) -> LoadedModel:
        version = self.version()
        with self._lock:
            if self._model is None or self._model.version != version:
                self._model = self._load(version)
                log.info("ML backend now predicts with %s", version)
            return self._model

    def _load(self, version: str) -> LoadedModel:
        from poseops.autolabel import local_model
        from poseops.deploy import fetch_version
        from poseops.detector import ServiceConfig
        from poseops.skeleton import load_skeleton

        name, number = version.rsplit(":", 1)
        _, files = fetch_version(f"models:/{name}/{number}", self.settings)
        config = ServiceConfig().with_model_files(files)
        return LoadedModel(version, load_skeleton(config.skeleton), local_model(str(config.weights), str(config.skeleton)))


@dataclass
class Timings:
    """Where a /predict call's time went, in seconds (the `Server-Timing` header of its answer)."""

    fetch: float = 0.0  # the images from Label Studio
    decode: float = 0.0
    detect: float = 0.0  # the model on the image
    regions: float = 0.0  # Label Studio result regions and their score (with the inferences a score needs)

    def header(self) -> str:
        return ", ".join(f"{name};dur={seconds * 1000:.1f}" for name, seconds in vars(self).items())


class Backend:
    """What the endpoints do, apart from HTTP."""

    def __init__(self, settings: Settings, params: Params) -> None:
        from poseops.autolabel import AutolabelOptions
        from poseops.labelstudio import LabelStudioClient

        self.settings, self.params = settings, params
        self.options = AutolabelOptions.of(params.autolabel)
        self.champion = Champion(settings, params)
        self.client = LabelStudioClient(settings, retries=1)
        self.uploads = label_studio_uploads(settings)
        self._records: dict[int, tuple[float, Any]] = {}  # project id → (when read, its dataset record)

    def model_version(self) -> str:
        """The champion's version, or `template` while there is none (the template skeleton is the prediction)."""
        from poseops.datasets import TEMPLATE_VERSION

        try:
            return self.champion.version()
        except BackendError:
            return TEMPLATE_VERSION

    def predict(self, tasks: list[dict], timings: Timings | None = None) -> list[dict]:
        """One prediction per task, in order: `{"result", "score", "model_version"}` (an empty result on a bad image).

        Without a champion, each task gets its dataset's template skeleton (as `poseops dataset create` places it);
        BackendError when a task's project is no poseops dataset."""
        timings = timings or Timings()
        try:
            model = self.champion.model()
        except BackendError as no_champion:
            return [self.template(task, no_champion, timings) for task in tasks]
        out = []
        for task in tasks:
            try:
                result, score = self._predict_one(model, task, timings)
            except Exception as e:  # noqa: BLE001 - one bad task must not fail the others; it gets an empty result
                log.warning("task %s: no prediction (%s: %s)", task.get("id"), type(e).__name__, e)
                result, score = [], 0.0
            out.append({"result": result, "score": score, "model_version": model.version})
        return out

    def _fetch(self, task: dict, timings: Timings) -> bytes:
        """The task's image: read from the uploads of the Label Studio poseops runs here when the file there has
        the task's `sha256`, else downloaded from Label Studio."""
        started = time.perf_counter()
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        url = str(data.get("image", ""))
        content = local_upload(self.uploads, url.removeprefix(self.client.url), data.get("sha256"))
        if content is None:
            content = self.client.download(url)
        timings.fetch += time.perf_counter() - started
        return content

    def _predict_one(self, model: LoadedModel, task: dict, timings: Timings) -> tuple[list[dict], float]:
        from poseops.autolabel import prediction_of
        from poseops.imageio import check_within_budget
        from poseops.neighbour_frames import neighbours_of
        from poseops.scores import decode

        content = self._fetch(task, timings)
        started = time.perf_counter()
        check_within_budget(content)  # from its header, before OpenCV decodes anything
        image = decode(content)  # once: its size as shown (EXIF applied), the model's input, the scores'
        height, width = image.shape[:2]
        decoded = time.perf_counter()
        timings.decode += decoded - started
        options = self.options

        def detect(picture) -> list[dict]:
            return model.model.detect(picture, options.conf_thres, options.iou_thres)

        def mirror() -> list[dict]:
            import cv2

            return detect(cv2.flip(image, 1))

        detections = detect(image)
        detected = time.perf_counter()
        timings.detect += detected - decoded
        result, score = prediction_of(model.skeleton, detections, width, height, options, mirror,
                                      neighbours_of(task.get("data"), lambda: image, options.video_dirs, detect))
        timings.regions += time.perf_counter() - detected
        return result, score

    def template(self, task: dict, no_champion: BackendError, timings: Timings) -> dict:
        """The template pre-label of the task's dataset, the one `poseops dataset create` and uploads place."""
        from poseops.datasets import image_size, template_prediction

        record = self._record_of(task, no_champion)
        content = self._fetch(task, timings)
        started = time.perf_counter()
        prediction = template_prediction(record.skeleton_spec(), record, *image_size(content))
        timings.regions += time.perf_counter() - started
        return prediction

    def _record_of(self, task: dict, no_champion: BackendError):
        from poseops.datasets import DatasetError, load_record

        project_id = task.get("project")
        if not isinstance(project_id, int):
            raise no_champion
        when, record = self._records.get(project_id, (0.0, None))
        if record is None or time.monotonic() - when > PROJECT_TTL_S:
            title = self.client.get_project(project_id).title
            try:
                record = load_record(self.settings, title)
            except DatasetError:
                raise BackendError(f"{no_champion}; and project {project_id} ({title!r}) is no poseops dataset here, "
                                   "so there is no template skeleton to show either") from None
            self._records[project_id] = (time.monotonic(), record)
        return record


UPLOADS_URL = "/data/upload/"  # where Label Studio serves the files uploaded to it


def label_studio_uploads(settings: Settings) -> Path:
    """The folder of the uploads of the Label Studio poseops starts with these settings (it may not exist)."""
    from poseops import labelstudio_server

    return labelstudio_server.server(settings).state_dir / "media" / "upload"


def local_upload(uploads: Path, url: str, sha256: Any) -> bytes | None:
    """The upload a Label Studio URL (`/data/upload/<project>/<file>`) names, read from `uploads` when it is there
    with the content hash the task records (tasks poseops uploads carry one); None otherwise (download it)."""
    import hashlib
    from urllib.parse import unquote

    if not isinstance(sha256, str) or not url.startswith(UPLOADS_URL):
        return None
    parts = unquote(url.split("?", 1)[0]).removeprefix(UPLOADS_URL).split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    path = uploads.joinpath(*parts)
    try:
        content = path.read_bytes()
    except OSError:
        return None
    return content if hashlib.sha256(content).hexdigest() == sha256 else None


def secret_matches(given: str | None, expected: str) -> bool:
    return bool(expected) and given is not None and hmac.compare_digest(given.encode(), expected.encode())


# --- registering it on a dataset's Label Studio project -----------------------------------------


@dataclass(frozen=True)
class Connection:
    backend_id: int
    webhook_id: int
    model_version: str | None


def connect(client, project_id: int, backend_url: str, webhook_secret: str) -> Connection:
    """Register the backend and its webhook on the project (again: updated, never doubled).

    Label Studio then asks the backend for a prediction when a task without one is opened
    (`show_collab_predictions`), and sends every annotation change to `/webhook` with the secret.
    """
    backend = {"url": backend_url, "project": project_id, "title": ML_BACKEND_TITLE, "is_interactive": False,
               "auto_update": True}
    mine = [b for b in client.json("GET", "/api/ml", params={"project": project_id}) if b.get("url") == backend_url]
    try:
        if mine:
            made = client.json("PATCH", f"/api/ml/{mine[0]['id']}", json=backend)
        else:
            made = client.json("POST", "/api/ml", json=backend)
    except LabelStudioError as e:
        raise BackendError(
            f"Label Studio did not accept the ML backend at {backend_url}: {e}. Is it running (`poseops ml-backend "
            "up`)? Label Studio refuses local addresses unless poseops started it (restart it: `poseops labelstudio "
            "down && poseops labelstudio up`); for one you run yourself see docs/autolabel.md") from None
    if made.get("state") not in ("CO", None):
        raise BackendError(f"Label Studio could not reach the ML backend at {backend_url} ({made.get('state')}: "
                           f"{made.get('error_message') or 'no answer'}); start it with `poseops ml-backend up`")
    # the editor asks the backend (the project's model version is the backend's title) and shows its answer
    client.update_project(project_id, show_collab_predictions=True, model_version=ML_BACKEND_TITLE)
    hook = {"project": project_id, "url": f"{backend_url}/webhook", "send_payload": True, "send_for_all_actions": False,
            "actions": sorted(ACTIONS), "headers": {SECRET_HEADER: webhook_secret}, "is_active": True}
    hooks = [h for h in client.json("GET", "/api/webhooks", params={"project": project_id}) if h.get("url") == hook["url"]]
    if hooks:
        made_hook = client.json("PATCH", f"/api/webhooks/{hooks[0]['id']}", json=hook)
    else:
        made_hook = client.json("POST", "/api/webhooks", json=hook)
    return Connection(made["id"], made_hook["id"], made.get("model_version"))


def create_app(settings: Settings | None = None, params: Params | None = None):
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    from poseops.retrain_trigger import RetrainTrigger

    settings = settings or load_settings()
    params = params or load_params(Path("params.yaml"), missing_ok=True)
    backend = Backend(settings, params)
    trigger = RetrainTrigger(settings, params.schedules)
    app = FastAPI(title="poseops ML backend", docs_url=None, redoc_url=None)

    def error(status: int, code: str, message: str) -> JSONResponse:
        return JSONResponse({"error": code, "message": message}, status_code=status)

    @app.get("/health")
    def health():
        return {"status": "UP", "model_class": "poseops", "model_version": backend.model_version()}

    @app.post("/setup")
    def setup(body: dict | None = None):
        return {"model_version": backend.model_version()}

    @app.post("/predict")
    def predict(body: dict):
        tasks = body.get("tasks")
        if not isinstance(tasks, list):
            return error(400, "bad_request", "the body needs `tasks`, a list of Label Studio tasks")
        timings = Timings()
        try:
            results = backend.predict(tasks, timings)
        except BackendError as e:
            return error(503, "no_champion", str(e))
        return JSONResponse({"results": results, "model_version": results[0]["model_version"] if results else None},
                            headers={"Server-Timing": timings.header()})

    @app.post("/webhook")
    async def webhook(request: Request):
        if not secret_matches(request.headers.get(SECRET_HEADER), settings.webhook_secret):
            return error(403, "forbidden", f"wrong or missing {SECRET_HEADER}: Label Studio's webhook must send the "
                         "POSEOPS_WEBHOOK_SECRET of this backend (`poseops dataset connect-backend` sets it)")
        try:
            event = await request.json()
        except ValueError:
            return error(400, "bad_request", "the body is not JSON")
        if not isinstance(event, dict):
            return error(400, "bad_request", "the body must be a Label Studio webhook event (a JSON object)")
        return trigger.receive(event)

    return app


def main() -> None:
    """`python -m poseops.ml_backend`: serve on the port of POSEOPS_ML_BACKEND_URL, 127.0.0.1."""
    import uvicorn

    from poseops.processes import port_of
    from poseops.stack import connect_prefect

    settings = load_settings()
    connect_prefect(settings)  # the loop deployment the webhook starts lives on the Prefect server
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run(create_app(settings), host="127.0.0.1", port=port_of(settings.ml_backend_url, 9090), log_level="info")


if __name__ == "__main__":
    main()
