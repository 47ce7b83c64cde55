"""Overload and fairness of the sidecar, measured (issue 11's overload target).

A real ``probewatch serve`` (loopback, token set, small queue) is started as a subprocess:

1. **Capacity**: 8 closed-loop bulk clients keep it busy for ``--capacity-s`` seconds; the
   items it observed per second is its capacity on this machine.
2. **Overload**, once per failure policy (``closed`` and ``open``), on a fresh sidecar whose
   per-client limit admits 3/4 of that capacity over the 8 clients: 8 open-loop bulk clients offer
   ``--factor`` (4) times the capacity while one guardrail client calls
   ``/beta/litellm_basic_guardrail_api`` for unrelated keys (one new key per call) at
   ``--guardrail-rate`` calls a second. Afterwards each guardrail key's report is read back:
   a call answered as observed whose key the sidecar does not hold was dropped silently.

Reported: bulk throughput (observed items/s) and the 429s by kind, guardrail p50/p99 against
its deadline, guardrail calls blocked (fail-closed) and calls not observed (told or not).
Bounded: every phase stops by itself after its duration and the sidecar is stopped.

The embedder is the sidecar's own model (all-MiniLM-L6-v2; ``--device cpu`` by default):
the sidecar has no faster test embedder, so capacity is what this machine's model gives.

    .venv/bin/python -m bench.sidecar_overload [--device cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from probewatch.cli.args import above, at_least

TOKEN = "bench-overload-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
GUARDRAIL = "/beta/litellm_basic_guardrail_api"
BULK_CLIENTS = 8
ITEMS_PER_REQUEST = 8
IN_FLIGHT_PER_CLIENT = 32  # open-loop clients still stop sending past this many unanswered requests
QUEUE_CAPACITY = 256
GUARDRAIL_RESERVED = 64
DEADLINE_MS = 2000.0  # the sidecar's default request_deadline_ms
MAX_BATCH_SIZE = 16  # a CPU embeds 16 prompts well inside half the deadline; 64 would not
ADMITTED_SHARE = 0.75  # per-client limits admit 3/4 of capacity in all, leaving room for the guardrail


@dataclass
class OverloadResult:
    policy: str
    capacity_items_per_s: float
    offered_items_per_s: float
    duration_s: float
    bulk_observed_items_per_s: float
    bulk_statuses: dict[str, int]
    bulk_429_by_type: dict[str, int]
    bulk_fallback_items: int
    guardrail_calls: int
    guardrail_deadline_ms: float
    guardrail_p50_ms: float
    guardrail_p99_ms: float
    guardrail_max_ms: float
    guardrail_statuses: dict[str, int]
    guardrail_blocked: int
    guardrail_unobserved_told: int
    guardrail_unobserved_silently: int
    unobserved_metric: dict[str, float] = field(default_factory=dict)


class Sidecar:
    """``python -m probewatch.serve`` on a free loopback port, settings as PROBEWATCH_* variables."""

    def __init__(self, data_dir: Path, device: str, **settings: object):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROBEWATCH_")}
        env.update(
            {
                "PROBEWATCH_API_TOKEN": TOKEN,
                "PROBEWATCH_ENGINE_DEVICE": device,
                "PROBEWATCH_LOG_LEVEL": "warning",
                "TOKENIZERS_PARALLELISM": "false",
                "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1",
            }
        )
        env.update({f"PROBEWATCH_{name.upper()}": str(value) for name, value in settings.items()})
        self.log = open(data_dir.with_suffix(".log"), "wb")  # noqa: SIM115 - closed in stop()
        command = [sys.executable, "-m", "probewatch.serve", "--data-dir", str(data_dir), "--port", str(self.port)]
        self.proc = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the sidecar exited with {self.proc.returncode}; see {self.log.name}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"the sidecar was not ready after {timeout:.0f} s; see {self.log.name}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


def _bulk_body(client: int, n: int) -> dict:
    return {
        "items": [
            {"account": f"bulk-{client}-{(n + i) % 50}", "prompt": f"Request {n + i} from tenant {client}: topic {i}?"}
            for i in range(ITEMS_PER_REQUEST)
        ]
    }


async def measure_capacity(url: str, seconds: float) -> float:
    """Observed items a second with 8 closed-loop clients keeping the queue busy."""
    observed = 0
    stop_at = time.monotonic() + seconds

    async def client(c: int, http: httpx.AsyncClient) -> None:
        nonlocal observed
        n = 0
        while time.monotonic() < stop_at:
            r = await http.post("/v1/observe", json=_bulk_body(c, n), headers={"x-probewatch-client": f"c{c}"})
            n += ITEMS_PER_REQUEST
            if r.status_code == 200:
                observed += sum(1 for x in r.json()["results"] if "fallback" not in x and "error" not in x)

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as http:
        await asyncio.gather(*(client(c, http) for c in range(BULK_CLIENTS)))
    return observed / (time.monotonic() - started)


async def overload(url: str, capacity: float, factor: float, seconds: float, guardrail_rate: float) -> dict:
    """Open-loop bulk load at ``factor`` x capacity plus a guardrail client; raw observations."""
    offered = factor * capacity
    interval = BULK_CLIENTS * ITEMS_PER_REQUEST / offered  # seconds between one client's requests
    bulk_statuses: Counter[str] = Counter()
    bulk_429: Counter[str] = Counter()
    bulk_observed = 0
    bulk_fallback = 0
    guardrail: list[dict] = []
    stop_at = time.monotonic() + seconds

    async def bulk_request(c: int, n: int, http: httpx.AsyncClient, gate: asyncio.Semaphore) -> None:
        nonlocal bulk_observed, bulk_fallback
        try:
            r = await http.post("/v1/observe", json=_bulk_body(c, n), headers={"x-probewatch-client": f"bulk-{c}"})
        except httpx.TransportError as exc:
            bulk_statuses[type(exc).__name__] += 1
            return
        finally:
            gate.release()
        bulk_statuses[str(r.status_code)] += 1
        if r.status_code == 429:
            bulk_429[r.json()["error"]["type"]] += 1
        elif r.status_code == 200:
            results = r.json()["results"]
            bulk_observed += sum(1 for x in results if "fallback" not in x and "error" not in x)
            bulk_fallback += sum(1 for x in results if "fallback" in x)

    async def bulk_client(c: int, http: httpx.AsyncClient) -> None:
        gate = asyncio.Semaphore(IN_FLIGHT_PER_CLIENT)
        tasks = []
        n = 0
        next_at = time.monotonic() + c * interval / BULK_CLIENTS  # spread the clients' phases
        while next_at < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await gate.acquire()
            tasks.append(asyncio.create_task(bulk_request(c, n, http, gate)))
            n += ITEMS_PER_REQUEST
            next_at += interval
        await asyncio.gather(*tasks)

    async def guardrail_client(http: httpx.AsyncClient) -> None:
        k = 0
        next_at = time.monotonic()
        while next_at < stop_at:
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            key = f"guard-{k}"
            body = {
                "input_type": "request",
                "texts": [f"What is a good name for a puppy, idea {k}?"],
                "request_data": {"user_api_key_hash": key},
            }
            started = time.perf_counter()
            r = await http.post(GUARDRAIL, json=body, headers={"x-probewatch-client": "litellm"})
            guardrail.append(
                {"key": key, "ms": (time.perf_counter() - started) * 1000, "status": r.status_code, "body": r.json()}
            )
            k += 1
            next_at = max(next_at + 1.0 / guardrail_rate, time.monotonic())  # a late call is not made up in a burst

    limits = httpx.Limits(max_connections=BULK_CLIENTS * IN_FLIGHT_PER_CLIENT + 8)
    started = time.monotonic()
    async with (
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30, limits=limits) as bulk_http,
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=30) as guard_http,
    ):
        await asyncio.gather(guardrail_client(guard_http), *(bulk_client(c, bulk_http) for c in range(BULK_CLIENTS)))
    return {
        "offered": offered,
        "elapsed": time.monotonic() - started,
        "bulk_statuses": dict(bulk_statuses),
        "bulk_429": dict(bulk_429),
        "bulk_observed": bulk_observed,
        "bulk_fallback": bulk_fallback,
        "guardrail": guardrail,
    }


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def _unobserved_metric(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("probewatch_unobserved_items_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.removeprefix("probewatch_unobserved_items_total")] = float(value)
    return out


def run_policy(root: Path, policy: str, capacity: float, args: argparse.Namespace) -> OverloadResult:
    fair_share = max(1.0, ADMITTED_SHARE * capacity / BULK_CLIENTS)
    sidecar = Sidecar(
        root / f"overload-{policy}",
        args.device,
        failure_policy=policy,
        queue_capacity=QUEUE_CAPACITY,
        guardrail_reserved_capacity=GUARDRAIL_RESERVED,
        max_items_per_request=ITEMS_PER_REQUEST,
        request_deadline_ms=DEADLINE_MS,
        max_batch_size=MAX_BATCH_SIZE,
        rate_limit_items_per_s=f"{fair_share:.2f}",
        rate_limit_burst=4 * ITEMS_PER_REQUEST,
        guardrail_rate_limit_per_s=10 * args.guardrail_rate,  # bounds a runaway caller, not LiteLLM's pace
        guardrail_rate_limit_burst=64,
    )
    try:
        sidecar.wait_ready()
        raw = asyncio.run(overload(sidecar.url, capacity, args.factor, args.overload_s, args.guardrail_rate))
        time.sleep(DEADLINE_MS / 1000 + 0.5)  # items past their deadline but queued are applied by now
        guard = raw["guardrail"]
        held = {
            g["key"]
            for g in guard
            if httpx.get(f"{sidecar.url}/v1/accounts/{g['key']}", headers=AUTH).status_code == 200
        }
        told = [g for g in guard if g["status"] == 200 and g["body"].get("observed") is False]
        answered_as_observed = [g for g in guard if g["status"] == 200 and g["body"].get("observed") is not False]
        latencies = [g["ms"] for g in guard]
        return OverloadResult(
            policy=policy,
            capacity_items_per_s=round(capacity, 1),
            offered_items_per_s=round(raw["offered"], 1),
            duration_s=round(raw["elapsed"], 1),
            bulk_observed_items_per_s=round(raw["bulk_observed"] / raw["elapsed"], 1),
            bulk_statuses=raw["bulk_statuses"],
            bulk_429_by_type=raw["bulk_429"],
            bulk_fallback_items=raw["bulk_fallback"],
            guardrail_calls=len(guard),
            guardrail_deadline_ms=DEADLINE_MS,
            guardrail_p50_ms=round(percentile(latencies, 0.5), 1),
            guardrail_p99_ms=round(percentile(latencies, 0.99), 1),
            guardrail_max_ms=round(max(latencies, default=float("nan")), 1),
            guardrail_statuses=dict(Counter(str(g["status"]) for g in guard)),
            guardrail_blocked=sum(1 for g in guard if g["status"] == 200 and g["body"]["action"] == "BLOCKED"),
            guardrail_unobserved_told=len(told),
            guardrail_unobserved_silently=sum(1 for g in answered_as_observed if g["key"] not in held),
            unobserved_metric=_unobserved_metric(sidecar.url),
        )
    finally:
        sidecar.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sidecar_overload", description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="the sidecar's engine device (default cpu)")
    parser.add_argument("--capacity-s", type=above(0), default=10.0, help="seconds of the capacity phase")
    parser.add_argument("--capacity", type=above(0), help="skip the capacity phase: items/s to assume")
    parser.add_argument("--overload-s", type=above(0), default=20.0, help="seconds of each overload phase")
    parser.add_argument("--factor", type=above(0), default=4.0, help="offered load as a multiple of capacity")
    parser.add_argument("--guardrail-rate", type=at_least(0, float), default=5.0, help="guardrail calls a second")
    parser.add_argument("--policies", default="closed,open", help="failure policies to run, comma-separated")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="pw-overload-") as tmp:
        root = Path(tmp)
        capacity = args.capacity
        if capacity is None:
            sidecar = Sidecar(
                root / "capacity", args.device, max_items_per_request=ITEMS_PER_REQUEST, max_batch_size=MAX_BATCH_SIZE
            )
            try:
                sidecar.wait_ready()
                asyncio.run(measure_capacity(sidecar.url, 2.0))  # warm-up
                capacity = asyncio.run(measure_capacity(sidecar.url, args.capacity_s))
            finally:
                sidecar.stop()
        print(f"capacity: {capacity:.1f} observed items/s ({BULK_CLIENTS} closed-loop clients, device {args.device})")
        results = [run_policy(root, policy.strip(), capacity, args) for policy in args.policies.split(",")]
    for result in results:
        print(
            f"\nfailure_policy={result.policy}: offered {result.offered_items_per_s:.0f} items/s "
            f"({args.factor:g}x) for {result.duration_s:.0f} s\n"
            f"  bulk: {result.bulk_observed_items_per_s:.1f} observed items/s; statuses {result.bulk_statuses}; "
            f"429 by type {result.bulk_429_by_type}; fallback items {result.bulk_fallback_items}\n"
            f"  guardrail: {result.guardrail_calls} calls, p50 {result.guardrail_p50_ms:.0f} ms, "
            f"p99 {result.guardrail_p99_ms:.0f} ms, max {result.guardrail_max_ms:.0f} ms "
            f"(deadline {result.guardrail_deadline_ms:.0f} ms); statuses {result.guardrail_statuses}\n"
            f"  guardrail blocked: {result.guardrail_blocked}; not observed and told: "
            f"{result.guardrail_unobserved_told}; not observed without being told: "
            f"{result.guardrail_unobserved_silently}\n"
            f"  probewatch_unobserved_items_total: {result.unobserved_metric}"
        )
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
