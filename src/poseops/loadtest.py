"""A bounded load test of a running detection service: several clients for a fixed time.

    poseops load-test photos/ --url http://127.0.0.1:3000 --clients 4 --seconds 60

Each client posts the images in turn to `POST /detect` until the time is up or the
request budget is spent (both bounds always hold). Reports every failed request
(status and error body), p50/p99 latency and throughput, and, when the service's
process id is known (the service `poseops deploy` manages, or `--pid`), its memory
(RSS of the process and its workers) before and after.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`; 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def service_rss_mb(pid: int) -> float:
    """Resident memory of the process and all its children (BentoML's workers), in MiB."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for process in [root, *root.children(recursive=True)]:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


@dataclass
class LoadResult:
    clients: int
    seconds: float
    latencies_s: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    rss_before_mb: float | None = None
    rss_after_mb: float | None = None

    @property
    def requests(self) -> int:
        return len(self.latencies_s) + len(self.failures)

    def summary(self) -> dict[str, float | int | None]:
        return {
            "clients": self.clients,
            "seconds": round(self.seconds, 1),
            "requests": self.requests,
            "failed": len(self.failures),
            "p50_ms": round(percentile(self.latencies_s, 50) * 1000, 1),
            "p99_ms": round(percentile(self.latencies_s, 99) * 1000, 1),
            "throughput_per_s": round(len(self.latencies_s) / self.seconds, 2) if self.seconds else 0.0,
            "rss_before_mb": None if self.rss_before_mb is None else round(self.rss_before_mb, 1),
            "rss_after_mb": None if self.rss_after_mb is None else round(self.rss_after_mb, 1),
        }


def run_load(
    url: str,
    images: list[Path],
    clients: int = 4,
    seconds: float = 60.0,
    max_requests: int = 100_000,
    headers: dict[str, str] | None = None,
    pid: int | None = None,
    timeout_s: float = 60.0,
) -> LoadResult:
    """`clients` threads posting `images` to `url`/detect for `seconds` (at most `max_requests` in all)."""
    if not images:
        raise ValueError("no images to send: give image files or folders holding them")
    payloads = [(p.name, p.read_bytes()) for p in images]
    result = LoadResult(clients, 0.0)
    lock = threading.Lock()
    budget = iter(range(max_requests))
    deadline = time.monotonic() + seconds

    def client(offset: int) -> None:
        with httpx.Client(timeout=timeout_s, headers=headers or {}) as http:
            for i in range(offset, offset + max_requests):
                with lock:
                    if time.monotonic() >= deadline or next(budget, None) is None:
                        return
                name, data = payloads[i % len(payloads)]
                started = time.perf_counter()
                try:
                    r = http.post(url.rstrip("/") + "/detect", files={"image": (name, data)},
                                  data={"conf_thres": "0.25", "iou_thres": "0.45"})
                    failure = None if r.status_code == 200 else f"{r.status_code} {r.text[:300]}"
                except httpx.HTTPError as e:
                    failure = f"{type(e).__name__}: {e}"
                elapsed = time.perf_counter() - started
                with lock:
                    if failure is None:
                        result.latencies_s.append(elapsed)
                    else:
                        result.failures.append(f"{name}: {failure}")

    if pid is not None:
        result.rss_before_mb = service_rss_mb(pid)
    threads = [threading.Thread(target=client, args=(k * 7,), name=f"load-client-{k}") for k in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    result.seconds = time.perf_counter() - started
    if pid is not None:
        result.rss_after_mb = service_rss_mb(pid)
    return result
