"""The real service under a bounded load, and after its worker is killed.

The short load here (20 s, 4 clients) runs with `make test`; `make load` runs the long
one (60 s) through `benchmarks/load.py` and reports its figures.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import httpx
import psutil
import pytest
from service_server import IMAGES, RunningService

from poseops.loadtest import run_load

pytestmark = pytest.mark.integration


def detections(http: httpx.Client, service: RunningService, image) -> list[tuple]:
    r = http.post(service.url + "/detect", files={"image": image.read_bytes()}, headers=service.headers())
    assert r.status_code == 200, r.text
    return [(d["x"], d["y"], d["width"], d["height"], *(k["x"] for k in d["keypoints"])) for d in r.json()]


def test_bounded_load_fails_nothing_answers_right_and_memory_stays_flat(detect_service: RunningService):
    warm = run_load(detect_service.url, IMAGES, clients=2, seconds=5, max_requests=16, headers=detect_service.headers())
    assert not warm.failures, warm.failures[:3]
    with httpx.Client(timeout=120) as http:
        at_rest = {image: detections(http, detect_service, image) for image in IMAGES}
        loaded: dict = {}
        load = threading.Thread(target=lambda: loaded.setdefault("result", run_load(
            detect_service.url, IMAGES, clients=4, seconds=20, max_requests=2000, headers=detect_service.headers(),
            pid=detect_service.pid)))
        load.start()
        under_load = {image: detections(http, detect_service, image) for image in IMAGES}  # while 4 clients post
        load.join()
    result = loaded["result"]
    summary = result.summary()
    print("load:", summary)
    assert result.failures == []
    assert result.requests >= 20, summary  # it did load the service (about 2-6 requests/s here)
    assert 19 <= result.seconds <= 20 + 60, summary  # bounded: stops at the deadline (plus one request in flight)
    # concurrent requests never mix up or change each other's answers (boxes and keypoints to 1 px)
    assert {i: len(d) for i, d in under_load.items()} == {i: len(d) for i, d in at_rest.items()}
    for image, found in under_load.items():
        assert [pytest.approx(d, abs=1.0) for d in at_rest[image]] == found, image.name
    assert sum(map(len, at_rest.values())) > 0
    growth = result.rss_after_mb - result.rss_before_mb
    assert growth < 150, f"the service grew by {growth:.0f} MiB during the load: {summary}"


def test_request_budget_bounds_the_load(detect_service: RunningService):
    result = run_load(detect_service.url, IMAGES, clients=3, seconds=120, max_requests=5, headers=detect_service.headers())
    assert result.requests == 5 and not result.failures
    assert result.seconds < 120  # the budget stopped it, not its time bound


def workers(pid: int) -> list[psutil.Process]:
    """BentoML's live worker processes under the service's process (a killed one lingers as a zombie a moment)."""
    found = []
    for process in psutil.Process(pid).children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "_bentoml_impl.worker" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:
            continue
    return found


def test_a_killed_worker_is_restarted_and_serves_again(detect_service: RunningService):
    before = workers(detect_service.pid)
    assert len(before) == 1, [p.cmdline() for p in before]
    os.kill(before[0].pid, signal.SIGKILL)
    deadline = time.monotonic() + 180
    answered = None
    with httpx.Client(timeout=30) as http:
        while time.monotonic() < deadline:
            time.sleep(1)
            now = workers(detect_service.pid)
            if not now or now[0].pid == before[0].pid:
                continue
            try:
                if http.get(detect_service.url + "/readyz").status_code != 200:
                    continue
            except httpx.TransportError:
                continue
            answered = http.post(detect_service.url + "/detect", files={"image": IMAGES[0].read_bytes()},
                                 headers=detect_service.headers())
            break
    assert answered is not None, "the service did not come back within 180 s after its worker was killed"
    assert answered.status_code == 200 and len(answered.json()) >= 1
    assert psutil.Process(detect_service.pid).is_running()
