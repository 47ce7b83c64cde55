"""Bounded load test over loopback: fixed request count, concurrent clients, time-limited.

Run: pytest tests/serve/test_server_load.py -m slow -s   (prints throughput and latency)
"""

from __future__ import annotations

import asyncio
import time

import psutil
import pytest

from tests.support import AUTH, SidecarProcess, httpx

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

CLIENTS = 8
WARMUP_REQUESTS = 64
MEASURED_REQUESTS = 320
TIME_LIMIT_S = 60.0


async def _drive(url: str, n_requests: int, offset: int) -> tuple[list[float], int]:
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n_requests))

    async def one_client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        for i in counter:
            k = offset + i
            body = {"account": f"user-{k % 200}", "prompt": f"Question {k}: explain topic {k % 37} to client {c}."}
            started = time.perf_counter()
            r = await http.post("/v1/observe", json=body)
            latencies.append(time.perf_counter() - started)
            result = r.json()["results"][0] if r.status_code == 200 else {}
            if r.status_code != 200 or "error" in result or "fallback" in result:
                errors += 1

    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as http:
        await asyncio.wait_for(asyncio.gather(*(one_client(c, http) for c in range(CLIENTS))), TIME_LIMIT_S)
    return latencies, errors


def test_sustained_concurrent_load(tmp_path):
    server = SidecarProcess(
        tmp_path / "data", tmp_path / "server.log", max_batch_size=32, max_wait_ms=5, request_deadline_ms=20000
    )
    try:
        server.wait_ready()
        process = psutil.Process(server.proc.pid)
        _, warm_errors = asyncio.run(_drive(server.url, WARMUP_REQUESTS, 0))
        rss_after_warmup = process.memory_info().rss
        started = time.perf_counter()
        latencies, errors = asyncio.run(_drive(server.url, MEASURED_REQUESTS, WARMUP_REQUESTS))
        elapsed = time.perf_counter() - started
        rss_end = process.memory_info().rss
        latencies.sort()
        p50 = latencies[len(latencies) // 2]
        p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
        print(
            f"\nload: {MEASURED_REQUESTS} requests, {CLIENTS} clients, {elapsed:.1f}s, "
            f"{MEASURED_REQUESTS / elapsed:.1f} req/s, p50 {p50 * 1000:.0f} ms, p99 {p99 * 1000:.0f} ms, "
            f"RSS {rss_after_warmup / 2**20:.0f} -> {rss_end / 2**20:.0f} MiB"
        )
        assert warm_errors == 0 and errors == 0
        assert len(latencies) == MEASURED_REQUESTS
        # Flat memory: growth after warm-up stays within a generous 150 MiB (account state is a few MiB).
        assert rss_end - rss_after_warmup < 150 * 2**20
        metrics = httpx.get(server.url + "/metrics").text
        assert "probewatch_batch_size_count" in metrics
    finally:
        server.terminate()
