"""A real S3-compatible endpoint for the tests: moto in server mode on 127.0.0.1, with one bucket.

`conftest.py` imports the `s3_endpoint` fixture from here, so every test module can ask for it by name
(a session-scoped fixture: one server for the whole run, always stopped at its end), or `with running_s3_endpoint(log_dir) as s3:`
outside pytest's fixtures. Either gives an `S3Endpoint`:

- `s3.url`: the endpoint (`http://127.0.0.1:PORT`), for POSEOPS_S3_ENDPOINT_URL;
- `s3.bucket`: a bucket that exists (`poseops-tests`); tests keep apart by prefix (`s3.prefix(name)`);
- `s3.env(**settings)`: the environment that points poseops at it: the AWS credentials (moto takes any),
  AWS_DEFAULT_REGION and POSEOPS_S3_ENDPOINT_URL, plus any extra variables passed (e.g.
  `s3.env(POSEOPS_DVC_REMOTE=s3.prefix("dvc"))`); set them with `monkeypatch.setenv` or pass them to a child;
- `s3.client()`: a boto3 client for the endpoint; `s3.keys(prefix)`: the object keys under a prefix;
- `s3.make_bucket(name)`: another bucket (e.g. one per test, for a test that lists a whole bucket).

The server is `python -m moto.server -H 127.0.0.1 -p PORT` in its own process group; its log is in
the session's temporary folder.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from poseops.devservers import free_port
from poseops.processes import stop_group

ACCESS_KEY = "poseops-tests"
SECRET_KEY = "poseops-tests-secret"  # moto accepts any; only its being passed along is tested
REGION = "us-east-1"
BUCKET = "poseops-tests"
START_TIMEOUT_S = 60


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    bucket: str
    log: Path
    pid: int

    def credentials(self) -> dict[str, str]:
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "AWS_DEFAULT_REGION": REGION}

    def env(self, **extra: str) -> dict[str, str]:
        """Environment variables that point poseops (and boto3) at this endpoint, plus `extra`."""
        return {**self.credentials(), "POSEOPS_S3_ENDPOINT_URL": self.url, **extra}

    def prefix(self, name: str, bucket: str | None = None) -> str:
        """`s3://<bucket>/<name>`: a test's own place in the bucket."""
        return f"s3://{bucket or self.bucket}/{name.strip('/')}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.url, aws_access_key_id=ACCESS_KEY,
                            aws_secret_access_key=SECRET_KEY, region_name=REGION)

    def make_bucket(self, name: str) -> str:
        self.client().create_bucket(Bucket=name)
        return name

    def keys(self, prefix: str = "", bucket: str | None = None) -> list[str]:
        """Every object key under `prefix` (all pages)."""
        pages = self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket or self.bucket,
                                                                          Prefix=prefix.strip("/"))
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _wait_ready(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"moto exited with {process.returncode}:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{url}/moto-api/data.json", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"moto did not answer at {url} within {START_TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def _stop(process: subprocess.Popen) -> None:
    stop_group(process, signal.SIGTERM, timeout=20)


@contextmanager
def running_s3_endpoint(log_dir: Path, bucket: str = BUCKET) -> Iterator[S3Endpoint]:
    """moto's S3 server on a free loopback port with `bucket` created; stopped on exit, whatever happened."""
    port = free_port()
    log = log_dir / f"moto-{port}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                               env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_ready(url, process, log)
        endpoint = S3Endpoint(url=url, bucket=bucket, log=log, pid=process.pid)
        endpoint.make_bucket(bucket)
        yield endpoint
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def s3_endpoint(tmp_path_factory) -> Iterator[S3Endpoint]:
    """One moto S3 server for the test session (see the module docstring)."""
    with running_s3_endpoint(tmp_path_factory.mktemp("s3")) as endpoint:
        yield endpoint
