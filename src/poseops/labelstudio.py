"""A small client for the Label Studio API: projects, image upload, tasks, predictions.

Built on label-studio-sdk where it covers the call, and on plain HTTP for file
uploads. Every failure becomes a `LabelStudioError` whose message says what
happened and what to do; the API token never appears in one.
"""

from __future__ import annotations

import functools
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from poseops.errors import PoseopsError
from poseops.settings import Settings, remember_secret

RETRY_DELAYS = (1.0, 3.0, 8.0)


class LabelStudioError(PoseopsError, RuntimeError):
    pass


class LabelStudioRefused(LabelStudioError):
    """Label Studio answered, and said no (4xx: a refused token, a missing project, a bad request): retrying won't help."""


@dataclass(frozen=True)
class Project:
    id: int
    title: str
    label_config: str
    url: str


@functools.cache
def tls_context() -> ssl.SSLContext:
    """httpx's default TLS context (certifi's CAs), made once: making one reads the CA bundle (~35 ms), and
    a client is made per Prefect task (an autolabel batch's fetch and write, each step of a pull)."""
    return httpx.create_ssl_context()


class LabelStudioClient:
    def __init__(self, settings: Settings, timeout: float = 60.0, retries: int = len(RETRY_DELAYS)):
        """`retries`: tries again after a connection error or a 5xx; 0 where a caller retries (a Prefect task)."""
        if not settings.label_studio_token:
            raise LabelStudioError(
                "no Label Studio API token: set LABEL_STUDIO_USER_TOKEN (environment or .env); "
                "`poseops labelstudio up` creates one on first start"
            )
        self.url = settings.label_studio_url
        self._token = settings.label_studio_token
        remember_secret(self._token)  # kept out of every error message, even when a server echoes the header
        self.http = httpx.Client(
            base_url=self.url,
            headers={"Authorization": f"Token {self._token}"},
            verify=tls_context(),
            timeout=timeout,
            limits=httpx.Limits(max_connections=16, max_keepalive_connections=8),
        )
        self._sdk = None
        self.retries = retries

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> LabelStudioClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def sdk(self):
        """The label-studio-sdk client (imported on first use: it is slow to import)."""
        if self._sdk is None:
            from label_studio_sdk import LabelStudio

            self._sdk = LabelStudio(base_url=self.url, api_key=self._token)
        return self._sdk

    # --- plumbing ---------------------------------------------------------------

    def request(self, method: str, path: str, retries: int | None = None, **kwargs: Any) -> httpx.Response:
        """One API call; connection errors and 5xx are retried, then reported with what to do."""
        retries = self.retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                r = self.http.request(method, path, **kwargs)
            except httpx.TransportError as e:
                if attempt < retries:
                    time.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                    continue
                raise LabelStudioError(
                    f"Label Studio does not answer at {self.url} ({type(e).__name__}). "
                    "Start it with `poseops labelstudio up`, or set LABEL_STUDIO_URL to where it runs."
                ) from None
            if r.status_code >= 500 and attempt < retries:
                time.sleep(RETRY_DELAYS[min(attempt, len(RETRY_DELAYS) - 1)])
                continue
            return self._check(r, method, path)
        raise AssertionError("unreachable")

    def _check(self, r: httpx.Response, method: str, path: str) -> httpx.Response:
        if r.status_code == 403 and "token" not in r.text.lower() and "credentials" not in r.text.lower():
            raise LabelStudioRefused(f"Label Studio refused {method} {path} (403): {r.text[:500]}")
        if r.status_code in (401, 403):
            raise LabelStudioRefused(
                f"Label Studio at {self.url} refused the API token ({r.status_code}). Check LABEL_STUDIO_USER_TOKEN, "
                "and that the server runs with LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true."
            )
        if 400 <= r.status_code < 500:
            raise LabelStudioRefused(f"Label Studio answered {r.status_code} to {method} {path}: {r.text[:500]}")
        if r.status_code >= 500:
            raise LabelStudioError(f"Label Studio answered {r.status_code} to {method} {path}: {r.text[:500]}")
        return r

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        r = self.request(method, path, **kwargs)
        return r.json() if r.content else None

    def check(self) -> None:
        """Fail clearly unless the server answers and accepts the token."""
        self.json("GET", "/api/current-user/whoami")

    # --- projects ---------------------------------------------------------------

    def _project(self, d: dict) -> Project:
        return Project(d["id"], d["title"], d.get("label_config", ""), f"{self.url}/projects/{d['id']}")

    def find_project(self, title: str) -> Project | None:
        """The project with this title (one request: the list's items are whole projects), or None."""
        page = 1
        while True:
            data = self.json("GET", "/api/projects", params={"title": title, "page": page, "page_size": 100})
            items = data["results"] if isinstance(data, dict) else data
            for d in items:
                if d["title"] == title:
                    return self._project(d)
            if not isinstance(data, dict) or not data.get("next"):
                return None
            page += 1

    def get_project(self, project_id: int) -> Project:
        return self._project(self.json("GET", f"/api/projects/{project_id}"))

    def validate_config(self, label_config: str) -> None:
        r = self.http.post("/api/projects/validate", json={"label_config": label_config})
        if r.status_code >= 400:
            raise LabelStudioError(f"Label Studio refused the labeling config: {r.text[:1000]}")

    def create_project(self, title: str, label_config: str, description: str = "") -> Project:
        d = self.json("POST", "/api/projects", json={"title": title, "label_config": label_config, "description": description})
        return self._project(d)

    def update_project(self, project_id: int, **fields: Any) -> Project:
        return self._project(self.json("PATCH", f"/api/projects/{project_id}", json=fields))

    # --- tasks --------------------------------------------------------------------

    def iter_tasks(self, project_id: int, page_size: int = 500, fields: str = "all",
                   include: str | None = None) -> Iterator[dict]:
        """Every task of a project, with its annotations and predictions when `fields="all"`; `include`: only
        these fields of each (`id,data,total_annotations`)."""
        page = 1
        extra = {"include": include} if include else {}
        while True:
            r = self.http.get("/api/tasks", params={"project": project_id, "page": page, "page_size": page_size,
                                                    "fields": fields, **extra})
            if r.status_code == 404:  # past the last page
                return
            data = self._check(r, "GET", "/api/tasks").json()
            tasks = data.get("tasks", []) if isinstance(data, dict) else data
            yield from tasks
            if len(tasks) < page_size:
                return
            page += 1

    def get_task(self, task_id: int) -> dict:
        return self.json("GET", f"/api/tasks/{task_id}")

    def upload_file(self, project_id: int, name: str, content: bytes, content_type: str) -> str:
        """Store one file in the project without making a task; return its URL path (`/data/upload/...`)."""
        r = self.request(
            "POST", f"/api/projects/{project_id}/import",
            params={"commit_to_project": "false"},
            files=[("file", (name, content, content_type))],
        )
        upload_ids = r.json().get("file_upload_ids") or []
        if len(upload_ids) != 1:
            raise LabelStudioError(f"Label Studio did not store {name!r}: {r.text[:300]}")
        uploads = self.json("GET", f"/api/projects/{project_id}/file-uploads", params={"ids": f"[{upload_ids[0]}]"})
        return "/data/" + uploads[0]["file"]

    def import_tasks(self, project_id: int, tasks: list[dict]) -> list[int]:
        """Create tasks (with their predictions/annotations inline); return the new task ids in order."""
        data = self.json("POST", f"/api/projects/{project_id}/import", params={"return_task_ids": "true"}, json=tasks)
        ids = data.get("task_ids")
        if ids is None or len(ids) != len(tasks):
            raise LabelStudioError(f"Label Studio created {data.get('task_count')} of {len(tasks)} tasks: {data}")
        for kind in ("annotations", "predictions"):
            sent = sum(len(t.get(kind) or []) for t in tasks)
            kept = data.get(f"{kind[:-1]}_count") or 0
            if kept != sent:
                raise LabelStudioError(
                    f"Label Studio created the tasks {ids[0]}..{ids[-1]} but kept {kept} of {sent} {kind}; "
                    "see its log. Delete those tasks and upload again."
                )
        return list(ids)

    def create_prediction(self, task_id: int, result: list[dict], model_version: str, score: float | None = None) -> int:
        body: dict[str, Any] = {"task": task_id, "result": result, "model_version": model_version}
        if score is not None:
            body["score"] = score
        return self.json("POST", "/api/predictions", json=body)["id"]

    def import_predictions(self, project_id: int, predictions: list[dict]) -> int:
        """Create many predictions in one request (each {task, result, score, model_version}); how many were made."""
        if not predictions:
            return 0
        created = self.json("POST", f"/api/projects/{project_id}/import/predictions", json=predictions).get("created")
        if created != len(predictions):
            raise LabelStudioError(f"Label Studio created {created} of {len(predictions)} predictions in project "
                                   f"{project_id}; see its log")
        return created

    def create_annotation(self, task_id: int, result: list[dict]) -> int:
        return self.json("POST", f"/api/tasks/{task_id}/annotations", json={"result": result})["id"]

    def download(self, url_path: str) -> bytes:
        """A file Label Studio serves (an upload, local-files storage, or an absolute URL)."""
        if url_path.startswith(("http://", "https://")) and not url_path.startswith(self.url):
            r = httpx.get(url_path, timeout=60, follow_redirects=True)
            r.raise_for_status()
            return r.content
        return self.request("GET", url_path.removeprefix(self.url)).content

