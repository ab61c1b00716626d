"""Least privilege: Label Studio refuses self sign-up and serves no local folder; the poseops home
and its databases are its owner's only; secrets reach only the processes that need them and
never appear in an error message, even when a server echoes them back.
"""

from __future__ import annotations

import json
import re
import secrets
import stat
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from conftest import free_port

from poseops import labelstudio_server
from poseops.client import DetectClient, DetectError
from poseops.errors import PoseopsError
from poseops.labelstudio import LabelStudioClient, LabelStudioError
from poseops.processes import ManagedServer, ServerError
from poseops.settings import Settings, child_env, redact, remember_secret, secure_home


class _Echo(BaseHTTPRequestHandler):
    """Answers every request with its own headers: a server that echoes secrets back."""

    status = 400

    def _echo(self) -> None:
        body = json.dumps({"error": "echo", "message": str(dict(self.headers))}).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _echo  # noqa: N815

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), _Echo)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


# --- secrets in error messages ---------------------------------------------------------------


def test_a_label_studio_that_echoes_the_token_does_not_put_it_in_the_error(echo_server):
    token = secrets.token_hex(20)
    with LabelStudioClient(Settings(label_studio_url=echo_server, label_studio_token=token), retries=0) as client:
        with pytest.raises(LabelStudioError) as caught:
            client.json("GET", "/api/projects")
    text = f"{caught.value} {caught.value!r} {caught.value.args}"
    assert "Authorization" in text and token not in text and "***" in text


def test_a_service_that_echoes_the_api_key_does_not_put_it_in_the_error(echo_server):
    key = "po_" + secrets.token_urlsafe(24)
    with DetectClient(echo_server, api_key=key, retries=0) as client, pytest.raises(DetectError) as caught:
        client.detect(b"not an image")
    assert key not in str(caught.value) and key not in caught.value.message


def test_every_user_error_is_redacted_and_environment_secrets_too(monkeypatch):
    remembered = secrets.token_hex(12)
    remember_secret(remembered)
    from_env = secrets.token_urlsafe(16)
    monkeypatch.setenv("LABEL_STUDIO_PASSWORD", from_env)
    error = PoseopsError(f"the server said: token {remembered}, password {from_env}")
    assert remembered not in str(error) and from_env not in str(error)
    assert redact("short abc") == "short abc"  # short values are never taken for secrets


# --- secrets only where needed, files only for their owner ------------------------------------


def test_child_processes_get_no_secrets_unless_given_and_write_private_files(tmp_path, monkeypatch):
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", "t" * 40)
    monkeypatch.setenv("LABEL_STUDIO_PASSWORD", "p" * 20)
    assert "LABEL_STUDIO_USER_TOKEN" not in child_env()
    assert child_env({"LABEL_STUDIO_USER_TOKEN": "x"})["LABEL_STUDIO_USER_TOKEN"] == "x"
    dump = tmp_path / "env.json"
    script = f"import json, os, time; open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ))); time.sleep(60)"
    port = free_port()
    server = ManagedServer("env dump", tmp_path / "state", f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/",
                           [sys.executable, "-c", script], env={"ONLY_THIS": "1"})
    try:
        with pytest.raises(ServerError, match="did not answer"):
            server.up(timeout=3)
    finally:
        server.down()
    env = json.loads(dump.read_text())
    assert env["ONLY_THIS"] == "1"
    assert not {"LABEL_STUDIO_USER_TOKEN", "LABEL_STUDIO_PASSWORD"} & set(env)
    assert stat.S_IMODE(dump.stat().st_mode) == 0o600  # what a managed server writes is its owner's only
    assert stat.S_IMODE(server.log_file.stat().st_mode) == 0o600


def test_label_studio_gets_its_secrets_with_sign_up_and_local_files_off(tmp_path, monkeypatch):
    monkeypatch.delenv("POSEOPS_LABEL_STUDIO_LOCAL_FILES", raising=False)
    settings = Settings(home=tmp_path / "home", label_studio_password="p" * 12, label_studio_token="t" * 40)
    env = labelstudio_server.server(settings).env
    assert env["LABEL_STUDIO_USER_TOKEN"] == "t" * 40
    assert env["LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK"] == "true"
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "false"
    assert not any("DOCUMENT_ROOT" in key for key in env)
    monkeypatch.setenv("POSEOPS_LABEL_STUDIO_LOCAL_FILES", str(tmp_path))
    env = labelstudio_server.server(settings).env
    assert env["LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path.resolve())


def test_the_home_and_its_databases_are_the_owners_only(tmp_path):
    fresh = secure_home(tmp_path / "fresh")
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700
    old = tmp_path / "old"
    (old / "labelstudio").mkdir(parents=True)
    old.chmod(0o755)
    for db in (old / "mlflow.db", old / "labelstudio" / "label_studio.sqlite3", old / "apikeys.usage.db"):
        db.write_bytes(b"")
        db.chmod(0o644)
    secure_home(old)
    assert stat.S_IMODE(old.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in old.rglob("*.db")} == {0o600}
    assert stat.S_IMODE((old / "labelstudio" / "label_studio.sqlite3").stat().st_mode) == 0o600


# --- against the real Label Studio --------------------------------------------------------------


@pytest.mark.integration
def test_label_studio_refuses_self_sign_up(label_studio):
    email = f"intruder-{secrets.token_hex(4)}@example.org"
    with httpx.Client(base_url=label_studio.label_studio_url, timeout=30) as browser:
        page = browser.get("/user/signup/")
        match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
        assert match, "the sign-up page has no CSRF token (the check below would prove nothing)"
        answer = browser.post("/user/signup/", data={"csrfmiddlewaretoken": match.group(1), "email": email,
                                                     "password": "intruder-password-1"},
                              headers={"Referer": f"{label_studio.label_studio_url}/user/signup/"})
    assert answer.status_code == 403 and "CSRF" not in answer.text, answer.text[:300]
    with LabelStudioClient(label_studio) as client:
        users = client.json("GET", "/api/users")
    assert email not in {u.get("email") for u in users}


@pytest.mark.integration
def test_label_studio_serves_no_local_files(label_studio):
    with LabelStudioClient(label_studio) as client:
        r = client.http.get("/data/local-files/", params={"d": str(Path(label_studio.home).resolve())})
    assert r.status_code == 403 and "disabled" in r.text


@pytest.mark.integration
def test_label_studios_home_and_database_are_the_owners_only(label_studio):
    home = Path(label_studio.home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    databases = list((home / "labelstudio").glob("*.sqlite3"))
    assert databases and {stat.S_IMODE(p.stat().st_mode) & 0o077 for p in databases} == {0}


@pytest.mark.integration
def test_no_store_keeps_a_secret_after_a_pull_against_an_echoing_label_studio(prefect_api, echo_server, tmp_path,
                                                                              monkeypatch):
    """A Label Studio stand-in that echoes every header back: the failed pull's error, Prefect's database (flow and
    task states, logs) and every file under the project and its home hold neither the token nor the password."""
    from conftest import files_containing
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL

    from poseops.flows.pull_labels import pull_labels

    token, password = secrets.token_hex(20), secrets.token_urlsafe(18)
    project = tmp_path / "project"
    project.mkdir()
    monkeypatch.chdir(project)
    monkeypatch.setenv("POSEOPS_HOME", str(project / ".poseops"))
    monkeypatch.setenv("LABEL_STUDIO_URL", echo_server)
    monkeypatch.setenv("LABEL_STUDIO_USER_TOKEN", token)
    monkeypatch.setenv("LABEL_STUDIO_PASSWORD", password)
    with pytest.raises(LabelStudioError) as failed:
        pull_labels(dataset="echoed")
    assert "Authorization" in str(failed.value) and token not in str(failed.value)
    database = Path(PREFECT_API_DATABASE_CONNECTION_URL.value().split("///", 1)[1])
    assert database.is_file(), database
    assert files_containing(database.parent, [token, password]) == []
    assert files_containing(project, [token, password]) == []
