"""Sidecar latency against offered load: p50/p99 of single-prompt ``/v1/observe`` calls.

A real sidecar (``python -m probewatch.serve`` on 127.0.0.1, an ephemeral port) with the
bundled MiniLM model, ``embed_backend: auto`` (OpenVINO where installed, the fastest CPU
runtime, in bf16 on CPUs that have it) and the default exact-repeat cache is offered
**open-loop** load at a ladder of rates: Poisson arrivals, one prompt per request, each
request sent at its scheduled time whatever the earlier ones are doing, over a few hundred
accounts. Latency is measured from the
*scheduled* send time, so a client or server that falls behind shows up in the latency
instead of silently lowering the offered rate (coordinated omission).

Per rate: offered and achieved (verdicts a second), p50/p90/p99/max latency of every
answered request, requests not observed (failure-policy fallbacks, 429s, 5xx, transport
errors and timeouts); from the sidecar's ``/metrics``, its fallback verdicts (overload 429s
count there too) and rate-limited requests, its mean micro-batch (items and ms) and mean queue
wait; and how late the client sent (its p99 lag; near 0 means the client kept up).

Prompts are the demo's ordinary and extracting prompts, each made distinct by a request
number (the repeat cache misses unless ``--repeat-share`` asks for exact repeats).

    .venv/bin/python -m bench.sidecar_latency [--rates 10,25,50] [--seconds 15] [--json out.json]

``python -m bench.scaling`` runs the same ladder and writes it into docs/benchmark/scaling.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
import urllib.parse
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from bench.sidecar_overload import AUTH, Sidecar, percentile

# up to where batches grow and, when other jobs share this 2-core CPU, the first 429s appear
DEFAULT_RATES = (10.0, 25.0, 50.0, 75.0, 100.0, 150.0, 200.0)
DEFAULT_SECONDS = 15.0
DEFAULT_ACCOUNTS = 300
CLIENT_TIMEOUT_S = 10.0  # well past the sidecar's 2 s request deadline: a timeout here is a real failure
WARMUP_REQUESTS = 40
SETTLE_S = 1.0  # pause between rates so one rate's backlog does not leak into the next


@dataclass
class LatencyPoint:
    """One rate of the ladder."""

    offered_per_s: float
    duration_s: float
    sent: int
    achieved_per_s: float  # requests answered with a verdict (observed), a second
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    not_observed: int  # answered by a fallback, refused (429/5xx), or no answer at all
    outcomes: dict[str, int] = field(default_factory=dict)  # "verdict", "fallback:<cause>", "http_429", "timeout", ...
    sidecar_fallbacks: int = 0  # probewatch_fallback_verdicts_total during this rate (overload 429s count too)
    sidecar_rate_limited: int = 0  # probewatch_rate_limited_requests_total during this rate
    mean_batch_size: float = float("nan")  # items per micro-batch during this rate
    mean_queue_wait_ms: float = float("nan")  # an item's wait for its micro-batch to start (the sidecar's view)
    mean_batch_ms: float = float("nan")  # journal write (fsync) plus embedding and detection, per micro-batch
    client_lag_p99_ms: float = 0.0  # how late requests left the client against their schedule
    client_cpu_ms_per_request: float = 0.0  # the load generator's own CPU (it shares the machine)


def demo_prompts() -> list[str]:
    """The demo's ordinary and extracting prompts (a realistic mix of lengths), deduplicated."""
    from probewatch.cli.demo import NORMAL_ACCOUNTS, extracting_accounts

    texts = [p for ps in NORMAL_ACCOUNTS.values() for p in ps]
    texts += [p for ps in extracting_accounts().values() for p in ps]
    return list(dict.fromkeys(texts))


class RequestStream:
    """Bodies for successive requests: a random account, a distinct prompt, or with
    probability ``repeat_share`` an exact repeat of a prompt sent before (a repeat-cache hit)."""

    def __init__(self, n_accounts: int, repeat_share: float, seed: int):
        self.rng = random.Random(seed)
        self.n_accounts = n_accounts
        self.repeat_share = repeat_share
        self.bases = demo_prompts()
        self.sent: list[str] = []
        self.count = 0

    def next_body(self) -> dict[str, str]:
        if self.sent and self.rng.random() < self.repeat_share:
            prompt = self.rng.choice(self.sent)
        else:
            prompt = f"{self.rng.choice(self.bases)} (request {self.count})"
            self.sent.append(prompt)
        self.count += 1
        return {"account": f"user-{self.rng.randrange(self.n_accounts)}", "prompt": prompt}


def poisson_schedule(rate: float, seconds: float, rng: random.Random) -> list[float]:
    """Send offsets (s from the start) of a Poisson process at ``rate`` a second."""
    offsets: list[float] = []
    t = rng.expovariate(rate)
    while t < seconds:
        offsets.append(t)
        t += rng.expovariate(rate)
    return offsets


class LoopbackHttp:
    """A minimal HTTP/1.1 keep-alive client for JSON POSTs to one host.

    With httpx's AsyncClient the load generator fell ~3 s behind its schedule at 100 req/s on a
    2-core machine (its pool is slow with hundreds of connections, and its CPU is taken from the
    sidecar being measured); with this one its p99 lag stays near 10 ms there. Each request takes
    an idle connection or opens one, so concurrency is never capped by the client.
    """

    def __init__(self, url: str, headers: dict[str, str]):
        parts = urllib.parse.urlsplit(url)
        self.host, self.port = parts.hostname, parts.port
        self.fixed_headers = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []

    async def post_json(self, path: str, body: object) -> tuple[int, bytes]:
        payload = json.dumps(body).encode()
        request = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{self.fixed_headers}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode() + payload
        if self.idle:
            reader, writer = self.idle.pop()  # the most recently used: least likely closed by the server
            try:
                return await self._exchange(reader, writer, request)
            except (_ClosedWhileIdle, ConnectionResetError):
                pass  # the server closed it while idle, before answering this request: send on a new one
        reader, writer = await asyncio.open_connection(self.host, self.port)
        return await self._exchange(reader, writer, request)

    async def _exchange(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes
    ) -> tuple[int, bytes]:
        keep = False  # reused only once a whole answer was read: a timeout mid-answer closes it
        try:
            writer.write(request)
            status_line = await reader.readline()
            if not status_line:
                raise _ClosedWhileIdle
            status = int(status_line.split()[1])
            length, server_closes = 0, False
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and value.strip().lower() == b"close":
                    server_closes = True
            body = await reader.readexactly(length)
            keep = not server_closes
            return status, body
        finally:
            if keep:
                self.idle.append((reader, writer))
            else:
                writer.close()

    def close(self) -> None:
        for _, writer in self.idle:
            writer.close()
        self.idle.clear()


class _ClosedWhileIdle(ConnectionError):
    pass


def classify(status: int, body: bytes) -> str:
    """The outcome of one answered request: 'verdict', 'fallback:<cause>', 'item_error' or 'http_<status>'."""
    if status != 200:
        return f"http_{status}"
    result = json.loads(body)["results"][0]
    if "error" in result:
        return "item_error"
    if "fallback" in result:
        return f"fallback:{result['fallback']}"
    return "verdict"


async def offer_load(
    url: str, stream: RequestStream, rate: float, seconds: float, rng: random.Random
) -> tuple[list[float], list[float], Counter[str], float]:
    """Send one request per scheduled offset, each in its own task (open loop).

    Returns latencies (s, scheduled send to answer, answered requests only), client lags (s,
    scheduled to actual send), outcome counts and the elapsed time to the last answer."""
    loop = asyncio.get_running_loop()
    http = LoopbackHttp(url, AUTH)
    latencies: list[float] = []
    lags: list[float] = []
    outcomes: Counter[str] = Counter()

    async def one_request(scheduled: float, body: dict[str, str]) -> None:
        lags.append(loop.time() - scheduled)
        try:
            status, answer = await asyncio.wait_for(http.post_json("/v1/observe", body), CLIENT_TIMEOUT_S)
        except asyncio.TimeoutError:
            outcomes["timeout"] += 1
            return
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            outcomes[type(exc).__name__] += 1
            return
        latencies.append(loop.time() - scheduled)
        outcomes[classify(status, answer)] += 1

    start = loop.time() + 0.05  # a moment to build the first body before its time
    tasks = []
    try:
        for offset in poisson_schedule(rate, seconds, rng):
            scheduled = start + offset
            body = stream.next_body()
            await asyncio.sleep(max(0.0, scheduled - loop.time()))
            tasks.append(asyncio.create_task(one_request(scheduled, body)))
        await asyncio.gather(*tasks)
    finally:
        http.close()
    return latencies, lags, outcomes, loop.time() - start


def scrape_counters(url: str) -> dict[str, float]:
    """The sidecar's Prometheus samples, as ``name{labels}`` -> value."""
    samples = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def counter_growth(before: dict[str, float], after: dict[str, float], prefix: str) -> float:
    """How much every sample whose name starts with ``prefix`` grew between two scrapes."""
    return sum(value - before.get(name, 0.0) for name, value in after.items() if name.startswith(prefix))


def measure_rate(url: str, stream: RequestStream, rate: float, seconds: float, seed: int) -> LatencyPoint:
    before = scrape_counters(url)
    cpu_before = time.process_time()
    latencies, lags, outcomes, elapsed = asyncio.run(offer_load(url, stream, rate, seconds, random.Random(seed)))
    client_cpu = time.process_time() - cpu_before
    after = scrape_counters(url)
    batches = counter_growth(before, after, "probewatch_batch_size_count")
    items = counter_growth(before, after, "probewatch_queue_wait_seconds_count")
    sent = sum(outcomes.values())
    ms = [1e3 * x for x in latencies]
    return LatencyPoint(
        offered_per_s=rate,
        duration_s=round(elapsed, 2),
        sent=sent,
        achieved_per_s=round(outcomes["verdict"] / elapsed, 1),
        p50_ms=round(percentile(ms, 0.50), 1),
        p90_ms=round(percentile(ms, 0.90), 1),
        p99_ms=round(percentile(ms, 0.99), 1),
        max_ms=round(max(ms, default=float("nan")), 1),
        not_observed=sent - outcomes["verdict"],
        outcomes=dict(sorted(outcomes.items())),
        sidecar_fallbacks=int(counter_growth(before, after, "probewatch_fallback_verdicts_total")),
        sidecar_rate_limited=int(counter_growth(before, after, "probewatch_rate_limited_requests_total")),
        mean_batch_size=_mean(counter_growth(before, after, "probewatch_batch_size_sum"), batches),
        mean_queue_wait_ms=_mean(1e3 * counter_growth(before, after, "probewatch_queue_wait_seconds_sum"), items),
        mean_batch_ms=_mean(1e3 * counter_growth(before, after, "probewatch_batch_duration_seconds_sum"), batches),
        client_lag_p99_ms=round(1e3 * percentile(lags, 0.99), 1),
        client_cpu_ms_per_request=round(1e3 * client_cpu / max(sent, 1), 3),
    )


def _mean(total: float, count: float) -> float:
    return round(total / count, 2) if count else float("nan")


async def _warm_up(url: str, stream: RequestStream, n: int) -> None:
    """A few requests, 4 at a time, before anything is measured (first batch shapes, connections)."""
    http = LoopbackHttp(url, AUTH)
    try:
        for start in range(0, n, 4):
            await asyncio.gather(*(http.post_json("/v1/observe", stream.next_body()) for _ in range(min(4, n - start))))
    finally:
        http.close()


def run_ladder(
    rates: tuple[float, ...] = DEFAULT_RATES,
    seconds: float = DEFAULT_SECONDS,
    n_accounts: int = DEFAULT_ACCOUNTS,
    repeat_share: float = 0.0,
    seed: int = 0,
    settings: dict[str, object] | None = None,
    log=print,
) -> list[LatencyPoint]:
    """Start a sidecar, warm it up, offer each rate for ``seconds`` in turn, stop it.

    ``settings``: extra sidecar settings (``max_wait_ms=0``, ``engine_embed_backend="torch"``)."""
    stream = RequestStream(n_accounts, repeat_share, seed)
    points = []
    with tempfile.TemporaryDirectory(prefix="pw-latency-") as tmp:
        sidecar = Sidecar(Path(tmp) / "data", "cpu", **{"engine_embed_backend": "auto", **(settings or {})})
        try:
            sidecar.wait_ready()
            asyncio.run(_warm_up(sidecar.url, stream, WARMUP_REQUESTS))
            for i, rate in enumerate(rates):
                time.sleep(SETTLE_S)
                point = measure_rate(sidecar.url, stream, rate, seconds, seed + i + 1)
                points.append(point)
                log(
                    f"offered {point.offered_per_s:6.1f}/s -> achieved {point.achieved_per_s:6.1f}/s, "
                    f"p50 {point.p50_ms:7.1f} ms, p90 {point.p90_ms:7.1f} ms, p99 {point.p99_ms:7.1f} ms, "
                    f"max {point.max_ms:7.1f} ms, not observed {point.not_observed}, "
                    f"batch {point.mean_batch_size:.1f} items / {point.mean_batch_ms:.1f} ms, "
                    f"queue wait {point.mean_queue_wait_ms:.1f} ms, client lag p99 {point.client_lag_p99_ms:.1f} ms, "
                    f"client CPU {point.client_cpu_ms_per_request:.2f} ms/request"
                )
        finally:
            sidecar.stop()
    return points


def markdown_table(points: list[LatencyPoint]) -> list[str]:
    def outcome_text(point: LatencyPoint) -> str:
        misses = {k: v for k, v in point.outcomes.items() if k != "verdict"}
        return ", ".join(f"{k} {v}" for k, v in misses.items()) or "-"

    return [
        "| offered (req/s) | achieved (verdicts/s) | p50 (ms) | p90 (ms) | p99 (ms) | max (ms) | requests | "
        "not observed | sidecar fallbacks / rate-limited | mean batch (items) | mean batch (ms) | "
        "mean queue wait (ms) | client lag p99 (ms) |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
        *[
            f"| {p.offered_per_s:g} | {p.achieved_per_s:.1f} | {p.p50_ms:.1f} | {p.p90_ms:.1f} | {p.p99_ms:.1f} | "
            f"{p.max_ms:.1f} | {p.sent} | {p.not_observed} ({outcome_text(p)}) | "
            f"{p.sidecar_fallbacks} / {p.sidecar_rate_limited} | {p.mean_batch_size:.1f} | {p.mean_batch_ms:.1f} | "
            f"{p.mean_queue_wait_ms:.1f} | {p.client_lag_p99_ms:.1f} |"
            for p in points
        ],
    ]


def plot_latency(ax, points: list[LatencyPoint]) -> None:
    """p50/p90/p99 latency against offered rate on ``ax`` (a matplotlib Axes)."""
    offered = [p.offered_per_s for p in points]
    for key, style in (("p50_ms", "o-"), ("p90_ms", "s-"), ("p99_ms", "^-")):
        ax.plot(offered, [getattr(p, key) for p in points], style, label=key.removesuffix("_ms"))
    ax.set(xlabel="offered load (single-prompt requests/s, Poisson)", ylabel="latency from scheduled send (ms)")
    ax.set_yscale("log")
    ax.set_title("sidecar latency against offered load")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()


def parse_rates(text: str) -> tuple[float, ...]:
    rates = tuple(float(r) for r in text.split(",") if r.strip())
    if not rates or any(not (0 < r <= 2000) for r in rates):
        raise argparse.ArgumentTypeError(f"rates must be numbers in (0, 2000] req/s, comma-separated; got {text!r}")
    return rates


def add_arguments(parser: argparse.ArgumentParser, prefix: str = "") -> None:
    """The ladder's options (``prefix``: ``sidecar-`` when another command hosts them)."""
    parser.add_argument(
        f"--{prefix}rates",
        type=parse_rates,
        default=DEFAULT_RATES,
        help=f"offered rates, req/s, comma-separated (default {','.join(f'{r:g}' for r in DEFAULT_RATES)})",
    )
    parser.add_argument(
        f"--{prefix}seconds", type=float, default=DEFAULT_SECONDS, help="seconds of load per rate (default 15)"
    )
    parser.add_argument(
        f"--{prefix}accounts", type=int, default=DEFAULT_ACCOUNTS, help="accounts the requests come from (default 300)"
    )
    parser.add_argument(
        f"--{prefix}repeat-share",
        type=float,
        default=0.0,
        help="share of requests that exactly repeat an earlier prompt (repeat-cache hits; default 0)",
    )


def check_arguments(parser: argparse.ArgumentParser, seconds: float, accounts: int, repeat_share: float) -> None:
    if not 0 < seconds <= 300:
        parser.error(f"the seconds per rate must be in (0, 300]; got {seconds}")
    if accounts < 1:
        parser.error(f"the accounts must be >= 1; got {accounts}")
    if not 0 <= repeat_share < 1:
        parser.error(f"the repeat share must be in [0, 1); got {repeat_share}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.sidecar_latency", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    parser.add_argument("--max-wait-ms", type=float, help="the sidecar's max_wait_ms (default: its own default)")
    parser.add_argument("--embed-backend", default="auto", help="the sidecar's engine.embed_backend (default auto)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    check_arguments(parser, args.seconds, args.accounts, args.repeat_share)
    settings: dict[str, object] = {"engine_embed_backend": args.embed_backend}
    if args.max_wait_ms is not None:
        settings["max_wait_ms"] = args.max_wait_ms
    points = run_ladder(args.rates, args.seconds, args.accounts, args.repeat_share, settings=settings)
    print("\n".join(markdown_table(points)))
    if args.json:
        args.json.write_text(json.dumps([asdict(p) for p in points], indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
