"""The worker's Prometheus metrics (``probewatch_worker_*``) and its small HTTP endpoint.

Labels are partitions, event kinds, alert sinks and reasons, never account ids (unbounded, and personal).
``GET /metrics`` (text format), ``/healthz`` (200 while the poll loop turns), ``/readyz``
(200 while the worker is a group member with its partitions loaded).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from .worker import Worker

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)


class _PartitionGauges(Collector):
    """Per-partition gauges read from the worker at scrape time (revoked partitions disappear)."""

    def __init__(self) -> None:
        self.worker: Worker | None = None

    def describe(self) -> list[Metric]:
        return []  # collected lazily: the worker is attached after the registry is built

    def collect(self) -> Iterator[Metric]:
        worker = self.worker
        partitions = dict(worker.partitions) if worker is not None else {}
        now = time.time()
        lag = GaugeMetricFamily(
            "probewatch_worker_consumer_lag", "Messages in the partition not yet observed", labels=("partition",)
        )
        age = GaugeMetricFamily(
            "probewatch_worker_checkpoint_age_seconds",
            "Seconds since the partition's newest durable checkpoint",
            labels=("partition",),
        )
        size = GaugeMetricFamily(
            "probewatch_worker_checkpoint_bytes", "Size of the partition's newest checkpoint", labels=("partition",)
        )
        accounts = GaugeMetricFamily(
            "probewatch_worker_accounts", "Accounts held by the partition's engine", labels=("partition",)
        )
        uncommitted = GaugeMetricFamily(
            "probewatch_worker_uncheckpointed_messages",
            "Messages observed since the partition's newest checkpoint (replayed after a crash)",
            labels=("partition",),
        )
        for p, state in sorted(partitions.items()):
            label = [str(p)]
            lag.add_metric(label, state.lag)
            age.add_metric(label, max(0.0, now - state.checkpointed_at))
            size.add_metric(label, state.checkpoint_bytes)
            accounts.add_metric(label, len(state.engine.pipeline.states))
            uncommitted.add_metric(label, state.next_offset - state.checkpointed_offset)
        yield from (lag, age, size, accounts, uncommitted)
        yield GaugeMetricFamily(
            "probewatch_worker_partitions", "Partitions assigned to this worker", value=len(partitions)
        )
        ready = worker is not None and worker.ready
        yield GaugeMetricFamily("probewatch_worker_ready", "1 while /readyz answers 200", value=1.0 if ready else 0.0)
        depth = GaugeMetricFamily(
            "probewatch_worker_alert_outbox_depth",
            "Alert events waiting in this worker's outboxes for a sink (all partitions)",
            labels=("sink", "kind"),
        )
        oldest = GaugeMetricFamily(
            "probewatch_worker_alert_oldest_undelivered_age_seconds",
            "Age of the oldest alert event a sink has not accepted yet (0 when none waits)",
            labels=("sink", "kind"),
        )
        for (sink, kind), (count, age) in sorted(worker.alert_backlog().items() if worker is not None else ()):
            depth.add_metric([sink, kind], float(count))
            oldest.add_metric([sink, kind], age)
        yield from (depth, oldest)


class WorkerMetrics:
    """One registry per worker (tests run several in a process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._partitions = _PartitionGauges()
        self.registry.register(self._partitions)
        r = self.registry
        self.messages = Counter(
            "probewatch_worker_messages",
            "Messages consumed, by outcome (observed, dead_letter, duplicate)",
            ["outcome"],
            registry=r,
        )
        self.dead_letters = Counter(
            "probewatch_worker_dead_letters", "Messages sent to the dead-letter topic, by kind", ["kind"], registry=r
        )
        self.rebalances = Counter(
            "probewatch_worker_rebalances", "Rebalance events (assign, revoke, lost)", ["event"], registry=r
        )
        self.checkpoints = Counter(
            "probewatch_worker_checkpoints", "Partition checkpoints written, by trigger", ["trigger"], registry=r
        )
        self.checkpoint_fallbacks = Counter(
            "probewatch_worker_checkpoint_fallbacks",
            "Unreadable checkpoints skipped for an older one on restore",
            registry=r,
        )
        self.commit_failures = Counter(
            "probewatch_worker_commit_failures", "Offset commits that failed after a checkpoint", registry=r
        )
        self.batch_size = Histogram(
            "probewatch_worker_batch_size", "Messages handled per poll", buckets=BATCH_BUCKETS, registry=r
        )
        self.checkpoint_seconds = Histogram(
            "probewatch_worker_checkpoint_seconds", "Time to write one partition checkpoint", registry=r
        )
        # alerts (the names AlertDispatcher and AlertPipeline use)
        self.alerts_created = Counter(
            "probewatch_worker_alerts_created",
            "Alert events created (level transitions), by kind",
            ["kind"],
            registry=r,
        )
        self.alerts_delivered = Counter(
            "probewatch_worker_alerts_delivered",
            "Alert events a sink accepted, by sink and kind",
            ["sink", "kind"],
            registry=r,
        )
        self.alert_failures = Counter(
            "probewatch_worker_alert_delivery_failures",
            "Failed alert delivery attempts (each is retried), by sink and kind",
            ["sink", "kind"],
            registry=r,
        )
        self.alert_damaged_lines = Counter(
            "probewatch_worker_alert_outbox_damaged_lines",
            "Damaged outbox lines found at start (their alerts are not sent; the segment is kept as *.damaged)",
            registry=r,
        )

    def watch(self, worker: Worker) -> None:
        self._partitions.worker = worker

    def render(self) -> bytes:
        return generate_latest(self.registry)


def serve_operations(worker: Worker, host: str, port: int, stale_after_s: float) -> ThreadingHTTPServer:
    """Start ``/metrics``, ``/healthz``, ``/readyz`` on a daemon thread; returns the server (``server_address``
    has the port when 0 was asked)."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, worker.metrics.render(), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                idle = time.monotonic() - worker.loop_at
                ok = idle <= stale_after_s
                self._json(200 if ok else 503, {"status": "ok" if ok else "stalled", "loop_idle_s": round(idle, 3)})
            elif path == "/readyz":
                self._json(
                    200 if worker.ready else 503,
                    {"ready": worker.ready, "partitions": sorted(worker.partitions)},
                )
            else:
                self._json(404, {"error": f"no route {path}; expected /metrics, /healthz or /readyz"})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode("utf-8"), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not worth a log line
            pass

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="probewatch-worker-http", daemon=True).start()
    return server
