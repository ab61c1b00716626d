"""A Python client of the detection service (`POST /detect`).

    with DetectClient("http://127.0.0.1:3000", fallback_url="http://replica:3000") as client:
        detections = client.detect("photo.jpg", conf_thres=0.3)

Connection errors, timeouts and 5xx answers are retried with exponential backoff;
when the main URL keeps failing, the fallback URL gets the same treatment. A 4xx
answer is the caller's to fix: it is raised at once as `DetectError`, carrying the
server's `error` code and `message`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import httpx

from poseops.errors import PoseopsError
from poseops.settings import redact, remember_secret

RETRYABLE_STATUS = frozenset({500, 502, 503, 504})


class DetectError(PoseopsError):
    """The service refused or failed a request (`status` None when it could not be reached)."""

    def __init__(self, status: int | None, error: str, message: str, url: str) -> None:
        message = redact(message)  # a server (or a proxy) may echo the request's key back
        super().__init__(f"{url}: {status or 'no answer'} {error}: {message}")
        self.status = status
        self.error = error
        self.message = message
        self.url = url


class DetectClient:
    def __init__(
        self,
        url: str,
        fallback_url: str | None = None,
        api_key: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.urls = [u.rstrip("/") for u in (url, fallback_url) if u]
        self.retries = retries
        self.backoff_s = backoff_s
        remember_secret(api_key)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = httpx.Client(timeout=timeout, headers=headers)

    def __enter__(self) -> DetectClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def detect(
        self,
        image: str | os.PathLike | bytes,
        conf_thres: float = 0.25,
        iou_thres: float = 0.45,
        ocr_model: str | None = None,
        ocr_classes: list[str] | str | None = None,
        ocr_language: str | None = None,
    ) -> list[dict[str, Any]]:
        """Detections in one image (a path or the file's bytes), as the service answers them."""
        if isinstance(image, bytes):
            data, name = image, "image"
        else:
            path = Path(image)
            data, name = path.read_bytes(), path.name
        fields: dict[str, str] = {"conf_thres": str(conf_thres), "iou_thres": str(iou_thres)}
        if ocr_model:
            fields["ocr_model"] = ocr_model
        if ocr_classes:
            fields["ocr_classes"] = ocr_classes if isinstance(ocr_classes, str) else ",".join(ocr_classes)
        if ocr_language:
            fields["ocr_language"] = ocr_language
        return self._request("POST", "/detect", data=fields, files={"image": (name, data, "application/octet-stream")})

    def metadata(self) -> dict[str, Any]:
        return self._request("GET", "/metadata")

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        failure: DetectError | None = None
        for base in self.urls:
            for attempt in range(self.retries + 1):
                if attempt:
                    time.sleep(self.backoff_s * 2 ** (attempt - 1))
                url = base + path
                try:
                    response = self._http.request(method, url, **kwargs)
                except httpx.TransportError as e:
                    failure = DetectError(None, "connection_failed", f"{type(e).__name__}: {e}", url)
                    continue
                if response.status_code < 400:
                    return response.json()
                failure = _error_from(response, url)
                if response.status_code not in RETRYABLE_STATUS:
                    raise failure
        assert failure is not None
        raise failure


def _error_from(response: httpx.Response, url: str) -> DetectError:
    try:
        body = response.json()
        return DetectError(response.status_code, str(body["error"]), str(body["message"]), url)
    except (ValueError, KeyError, TypeError):
        return DetectError(response.status_code, f"http_{response.status_code}", response.text[:300], url)
