"""The detection service's HTTP layer: `POST /detect`, the playground, metadata, docs.

A small FastAPI app that the BentoML service mounts (`bentos/service.py`), so it runs
inside `bentoml serve`; `get_detector` hands it the service's `Detector`. It owns
request validation and every error body: `{"error": "<code>", "message": "..."}`.

The body is streamed with a cap: a request whose Content-Length says it is over the
limit is refused before any of it is read, and a chunked one is cut off as soon as
it passes the limit, so an oversized upload never sits in memory whole.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import struct
import warnings
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from starlette.requests import Request  # FastAPI resolves the handlers' annotations in this module
from starlette.responses import Response

from poseops.api_schemas import DETECT_OPENAPI
from poseops.constants import DEFAULT_CONF_THRES, DEFAULT_IOU_THRES
from poseops.detector import MAX_IMAGE_BYTES, Detector
from poseops.imageio import MAX_SIDE, PixelBudget

if TYPE_CHECKING:
    import numpy as np
    from fastapi import FastAPI
    from starlette.datastructures import UploadFile
    from starlette.types import Receive

log = logging.getLogger(__name__)

FORM_SLACK_BYTES = 64 * 1024  # room for the small form fields and multipart boundaries beside the image
FIELDS = ("image", "conf_thres", "iou_thres", "ocr_model", "ocr_classes", "ocr_language")
DEFAULTS = {"conf_thres": DEFAULT_CONF_THRES, "iou_thres": DEFAULT_IOU_THRES, "ocr_language": "eng"}
INFERENCE_THREADS = 4  # requests decoded/predicted at once; the model itself runs one image at a time
REQUEST_TIMEOUT_S = 120  # the server's limit per request (bentos/service.py gives it to BentoML as traffic.timeout)


class ApiError(Exception):
    """A request refused with an HTTP status, an error code and a message saying what to do."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


_BROKEN = (OSError, SyntaxError, ValueError, EOFError, struct.error)  # what PIL raises on damaged data


def open_upload(data: bytes, max_pixels: int):
    """The uploaded image, header read and its pixel count checked, nothing decoded yet; or a 400/413 `ApiError`."""
    from PIL import Image, UnidentifiedImageError

    from poseops.imageio import UPLOAD_FORMATS, TooManyPixels, open_image

    if not data:
        raise ApiError(400, "empty_image", "the 'image' field is empty: attach the image file's bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            return open_image(io.BytesIO(data), UPLOAD_FORMATS, max_pixels)
    except UnidentifiedImageError:
        raise ApiError(
            400,
            "not_an_image",
            "the 'image' field is not an image this server can read: send a JPEG, PNG, WebP, BMP, TIFF or GIF file",
        ) from None
    except TooManyPixels as e:
        raise _bomb(e.size, max_pixels) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _bomb(None, max_pixels) from None
    except _BROKEN as e:  # a known format whose header cannot be read
        raise _undecodable(e) from None


def pixels_bgr(image) -> np.ndarray:
    """A BGR array of an opened image as it is shown (`poseops.imageio.displayed_rgb`: EXIF orientation applied,
    first frame of an animation); a 400 `ApiError` when it does not decode."""
    import numpy as np

    from poseops.imageio import displayed_rgb

    try:
        image.load()
        rgb = displayed_rgb(image)
    except _BROKEN as e:
        raise _undecodable(e) from None
    return np.ascontiguousarray(np.asarray(rgb)[:, :, ::-1])


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """A BGR array of the uploaded image as it is shown, or a 400/413 `ApiError`.

    The pixel count is read from the header and checked before anything is decoded.
    """
    with open_upload(data, max_pixels) as image:
        return pixels_bgr(image)


@contextlib.contextmanager
def decoded_within(budget: PixelBudget, data: bytes, max_pixels: int) -> Iterator[np.ndarray]:
    """`decode_image`, holding the image's pixels in `budget` from decoding until the caller is done with them."""
    with open_upload(data, max_pixels) as image:
        width, height = image.size
        with budget.hold(width * height):
            yield pixels_bgr(image)


def _undecodable(e: Exception) -> ApiError:
    if "truncated" in str(e).lower() or isinstance(e, EOFError):
        return ApiError(400, "truncated_image", f"the image data ends early ({e}): upload the complete file")
    return ApiError(400, "not_an_image", f"the image cannot be decoded ({e}): upload an intact image file")


def _bomb(size: tuple[int, int] | None, max_pixels: int) -> ApiError:
    declared = f"{size[0]} x {size[1]} = {size[0] * size[1]:,} pixels" if size else "more pixels than PIL allows"
    return ApiError(
        413,
        "decompression_bomb",
        f"the image declares {declared}, over this server's limit of {max_pixels:,} pixels "
        f"(or {MAX_SIDE:,} pixels a side); scale it down before sending",
    )


def parse_threshold(name: str, raw: str | None) -> float:
    if raw is None or raw.strip() == "":
        return float(DEFAULTS[name])
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"invalid_{name}", f"{name} {raw!r} is not a number: send a value between 0 and 1, e.g. {DEFAULTS[name]}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise ApiError(400, f"invalid_{name}", f"{name} {raw!r} is out of range: send a value between 0 and 1, e.g. {DEFAULTS[name]}")
    return value


def parse_ocr(detector: Detector, model: str | None, classes: str | None, language: str | None) -> tuple[str | None, frozenset[str], str]:
    """OCR settings: no model and no classes means no OCR; classes alone mean 'small'; a model alone reads every class."""
    from poseops.ocr import OcrError, check_request

    model = (model or "").strip() or None
    names = frozenset(c.strip() for c in (classes or "").split(",") if c.strip())
    language = (language or "").strip() or str(DEFAULTS["ocr_language"])
    if model is None and not names:
        return None, names, language
    model = model or "small"
    known = detector.skeleton.class_names
    unknown = sorted(names - set(known))
    if unknown:
        raise ApiError(400, "unknown_ocr_class", f"ocr_classes names {', '.join(map(repr, unknown))}, not a class of this model; classes: {', '.join(known)}")
    try:
        check_request(model, language)
    except OcrError as e:
        raise ApiError(400, e.code, e.message) from None
    return model, names or frozenset(known), language


class _BodyTooLarge(Exception):
    pass


def _capped(receive: Receive, limit: int) -> Receive:
    seen = 0

    async def capped_receive() -> Any:
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _BodyTooLarge
        return message

    return capped_receive


@dataclass(frozen=True)
class UploadForm:
    """What one endpoint's multipart form takes: its fields, the one file among them, and the file's size cap."""

    path: str  # the endpoint, for the messages
    fields: tuple[str, ...]
    file_field: str  # "image": the error codes are missing_image, image_too_large, ...
    max_bytes: int
    example: str  # a curl call that sends the file right
    shrink: str  # what to do about a file over the cap

    def too_large(self) -> ApiError:
        return ApiError(
            413,
            f"{self.file_field}_too_large",
            f"the upload is over {self.max_bytes / (1024 * 1024):,.0f} MB ({self.max_bytes:,} bytes): {self.shrink} before sending",
            headers={"Connection": "close"},
        )


IMAGE_FORM = UploadForm("/detect", FIELDS, "image", MAX_IMAGE_BYTES, "curl -F image=@photo.jpg URL/detect",
                        "scale the image down or re-encode it (JPEG)")


async def _read_bytes(item: UploadFile) -> bytes:
    return await item.read()


def error_response(error: ApiError) -> Response:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": error.code, "message": error.message}, status_code=error.status, headers=error.headers)


async def read_form(
    request: Request, form: UploadForm = IMAGE_FORM, keep: Callable[[UploadFile], Awaitable[Any]] = _read_bytes
) -> dict[str, Any]:
    """The form fields, the file as `keep` keeps it (the image's bytes); 400/413 `ApiError` for anything the API does not take."""
    from starlette.datastructures import UploadFile
    from starlette.exceptions import HTTPException
    from starlette.requests import Request as StarletteRequest

    noun = form.file_field
    content_type = request.headers.get("content-type", "")
    kind = content_type.split(";", 1)[0].strip().lower()  # media types are case-insensitive (RFC 9110)
    if not kind or kind == "application/x-www-form-urlencoded":
        raise ApiError(  # a plain form or no body: certainly no file in it
            400,
            f"missing_{noun}",
            f"no {noun} in the request: send multipart/form-data with the {noun} as a file field named '{noun}', e.g. {form.example}",
        )
    if kind != "multipart/form-data":
        raise ApiError(
            400,
            "not_multipart",
            f"POST {form.path} takes multipart/form-data (got {content_type}): "
            f"send the {noun} as a file field named '{noun}', e.g. {form.example}",
        )
    limit = form.max_bytes + FORM_SLACK_BYTES
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise form.too_large()
    capped = StarletteRequest(request.scope, _capped(request.receive, limit))
    try:
        parsed = await capped.form(max_files=4, max_fields=len(form.fields) + 4)
    except _BodyTooLarge:
        raise form.too_large() from None
    except HTTPException as e:
        raise ApiError(400, "bad_multipart", f"the multipart body cannot be parsed ({e.detail}): let your HTTP client build it") from None
    try:
        unknown = sorted(set(parsed.keys()) - set(form.fields))
        if unknown:
            raise ApiError(400, "unknown_field", f"unknown form field {unknown[0]!r}: the fields are {', '.join(form.fields)}")
        values: dict[str, Any] = {}
        for name in form.fields:
            items = parsed.getlist(name)
            if len(items) > 1:
                raise ApiError(400, "repeated_field", f"the field {name!r} is sent {len(items)} times: send it once (one {noun} per request)")
            item = items[0] if items else None
            if name == noun:
                if item is None:
                    raise ApiError(400, f"missing_{noun}", f"no '{noun}' field: send the {noun} as a multipart file field named '{noun}'")
                if not isinstance(item, UploadFile):
                    raise ApiError(400, f"missing_{noun}", f"the '{noun}' field is text, not a file: send it as a file upload ({form.example})")
                if item.size is not None and item.size > form.max_bytes:
                    raise form.too_large()
                values[name] = await keep(item)
            elif isinstance(item, UploadFile):
                raise ApiError(400, f"invalid_{name}", f"the field {name!r} is a file: send it as a plain form value")
            else:
                values[name] = item
        return values
    finally:
        await parsed.close()


def ready_detector(get_detector: Callable[[], Detector]) -> Detector:
    """The service's detector once its model is loaded; 503 `model_not_ready` (or `model_failed`) before."""
    detector = get_detector()
    if not detector.ready:
        if detector.load_error:
            raise ApiError(503, "model_failed", f"the model could not be loaded: {detector.load_error}")
        raise ApiError(503, "model_not_ready", "the model is still loading: retry in a few seconds (GET /readyz answers 200 once it is ready)", {"Retry-After": "5"})
    return detector


def create_app(get_detector: Callable[[], Detector], static_dir: Path, timeout_s: float = REQUEST_TIMEOUT_S) -> FastAPI:
    """The FastAPI app serving /detect, /detect-video, /metadata, /skeleton, / and /playground, /docs.

    `timeout_s` is the server's time limit per request (BentoML's `traffic.timeout`), which a video's run stays within.
    """
    import anyio
    from fastapi import FastAPI
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.exceptions import HTTPException
    from starlette.responses import FileResponse, JSONResponse

    from poseops.detect_video_api import add_video_route

    app = FastAPI(title="poseops", docs_url=None, redoc_url=None, openapi_url=None)
    limiter = anyio.CapacityLimiter(INFERENCE_THREADS)
    budgets: dict[int, PixelBudget] = {}  # pixels decoded at once, across requests: at most max_pixels

    def budget(max_pixels: int) -> PixelBudget:
        return budgets.setdefault(max_pixels, PixelBudget(max_pixels))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> Response:  # 404/405 of this app's own routes
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, f"http_{exc.status_code}")
        return error_response(ApiError(exc.status_code, code, str(exc.detail)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(ApiError(500, "internal_error", "the server failed unexpectedly; it logged the details"))

    @app.post("/detect", tags=["Service APIs"], summary="Detect objects and their keypoints", openapi_extra=DETECT_OPENAPI)
    async def detect(request: Request) -> Response:
        try:
            detector = ready_detector(get_detector)
            if detector.keys is not None:
                await admit_key(detector, request)
            values = await read_form(request)
            conf = parse_threshold("conf_thres", values.get("conf_thres"))
            iou = parse_threshold("iou_thres", values.get("iou_thres"))
            ocr_model, ocr_classes, ocr_language = parse_ocr(detector, values.get("ocr_model"), values.get("ocr_classes"), values.get("ocr_language"))

            max_pixels = detector.config.max_pixels

            def run() -> list[dict[str, Any]]:
                with decoded_within(budget(max_pixels), values["image"], max_pixels) as image:
                    return detector.detect(image, conf, iou, ocr_model, ocr_classes, ocr_language)

            return JSONResponse(await anyio.to_thread.run_sync(run, limiter=limiter))
        except ApiError as e:
            return error_response(e)
        except Exception:
            log.exception("POST /detect failed")
            return error_response(ApiError(500, "internal_error", "the server failed unexpectedly on this request; it logged the details. Retry, and report it if it persists"))

    add_video_route(app, get_detector, limiter, budget, timeout_s)

    @app.get("/metadata", tags=["Service APIs"], summary="Model, lineage and skeleton of this service")
    async def metadata() -> Response:
        return JSONResponse(await anyio.to_thread.run_sync(get_detector().metadata))

    @app.get("/skeleton", tags=["Service APIs"], summary="The skeleton spec: keypoint names, colours, connections")
    async def skeleton() -> Response:
        return JSONResponse(get_detector().skeleton.to_dict())

    @app.get("/", include_in_schema=False)
    @app.get("/playground", include_in_schema=False)
    async def playground() -> Response:
        return FileResponse(static_dir / "playground.html", media_type="text/html")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:  # BentoML's spec (/docs.json) and its bundled Swagger UI files: no CDN
        return get_swagger_ui_html(
            openapi_url="/docs.json",
            title="poseops API",
            swagger_js_url="/static_content/swagger-ui-bundle.js",
            swagger_css_url="/static_content/swagger-ui.css",
            swagger_favicon_url="/static_content/favicon-light-32x32.png",
        )

    return app


async def admit_key(detector: Detector, request: Request) -> None:
    import anyio

    from poseops.apikeys import KeyRefused

    header = request.headers.get("authorization", "")
    key = header[7:].strip() if header.lower().startswith("bearer ") else request.headers.get("x-api-key", "").strip()
    assert detector.keys is not None
    try:
        await anyio.to_thread.run_sync(detector.keys.admit, key or None)
    except KeyRefused as e:
        raise ApiError(e.status, e.code, e.message) from None
