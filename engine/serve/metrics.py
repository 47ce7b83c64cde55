"""Prometheus text exposition (format 0.0.4), written by hand to keep the sidecar's
dependencies small. Labels are closed sets (route templates, status codes, levels):
an account id is never a label, so cardinality stays bounded whatever the traffic.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(str(v))}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    x = float(x)
    if x == float("inf"):
        return "+Inf"
    return str(int(x)) if x.is_integer() and abs(x) < 1e15 else repr(x)


class Counter:
    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, *label_values: str, amount: float = 1.0) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0.0) + amount

    def value(self, *label_values: str) -> float:
        return self._values.get(label_values, 0.0)

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} counter"
        with self._lock:
            items = sorted(self._values.items())
        for labels, value in items:
            yield f"{self.name}{_labels(self.label_names, labels)} {_num(value)}"


class Gauge:
    """A gauge whose value is read at scrape time from ``read``."""

    def __init__(self, name: str, help_text: str, read: Callable[[], float]):
        self.name, self.help, self._read = name, help_text, read

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} gauge"
        yield f"{self.name} {_num(self._read())}"


class Histogram:
    def __init__(self, name: str, help_text: str, buckets: Sequence[float], label_names: Sequence[str] = ()):
        self.name, self.help, self.label_names = name, help_text, tuple(label_names)
        self.buckets = tuple(sorted(buckets))
        self._series: dict[tuple[str, ...], list] = {}  # labels -> [bucket counts..., sum, count]
        self._lock = threading.Lock()

    def observe(self, value: float, *label_values: str) -> None:
        slot = bisect.bisect_left(self.buckets, value)
        with self._lock:
            series = self._series.setdefault(label_values, [0] * len(self.buckets) + [0.0, 0])
            if slot < len(self.buckets):
                series[slot] += 1
            series[-2] += value
            series[-1] += 1

    def render(self) -> Iterable[str]:
        yield f"# HELP {self.name} {self.help}"
        yield f"# TYPE {self.name} histogram"
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        for labels, series in items:
            cumulative = 0
            for bound, n in zip(self.buckets, series):
                cumulative += n
                le = 'le="' + _num(bound) + '"'
                yield f"{self.name}_bucket{_labels(self.label_names, labels, le)} {cumulative}"
            le_inf = 'le="+Inf"'
            yield f"{self.name}_bucket{_labels(self.label_names, labels, le_inf)} {series[-1]}"
            yield f"{self.name}_sum{_labels(self.label_names, labels)} {_num(series[-2])}"
            yield f"{self.name}_count{_labels(self.label_names, labels)} {series[-1]}"


class ServerMetrics:
    """Every metric the sidecar exports."""

    def __init__(self, read_stats: Callable[[], dict], read_queue_depth: Callable[[], int]):
        self._stats_cache: dict = {}
        self._read_stats = read_stats
        self.requests = Counter("probewatch_http_requests_total", "HTTP requests by route template and status code.",
                                ("endpoint", "method", "status"))
        self.request_latency = Histogram("probewatch_http_request_duration_seconds",
                                         "HTTP request latency by route template.", LATENCY_BUCKETS, ("endpoint",))
        self.verdicts = Counter("probewatch_verdicts_total",
                                "Verdicts returned, by level (unknown = fail-open/closed fallback).", ("level",))
        self.item_errors = Counter("probewatch_rejected_items_total", "Observation items rejected as invalid.")
        self.truncated = Counter("probewatch_truncated_prompts_total", "Prompts truncated to max_prompt_chars.")
        self.fallbacks = Counter("probewatch_fallback_verdicts_total",
                                 "Items answered by the failure policy, by cause.", ("cause",))
        self.batch_size = Histogram("probewatch_batch_size", "Items per micro-batch sent to the engine.",
                                    BATCH_SIZE_BUCKETS)
        self.batch_latency = Histogram("probewatch_batch_duration_seconds",
                                       "Journal write plus engine time per micro-batch.", LATENCY_BUCKETS)
        self.queue_wait = Histogram("probewatch_queue_wait_seconds",
                                    "Time an item waited before its micro-batch started.", LATENCY_BUCKETS)
        self.snapshots = Counter("probewatch_snapshots_total", "Snapshots written, by outcome.", ("outcome",))
        self.snapshot_latency = Histogram("probewatch_snapshot_duration_seconds", "Time to write one snapshot.",
                                          LATENCY_BUCKETS)
        self.gauges = [
            Gauge("probewatch_accounts", "Accounts held by the engine.", lambda: self._stat("accounts")),
            Gauge("probewatch_bytes_held", "Bytes of vectors and statistics held by the engine.",
                  lambda: self._stat("bytes_held")),
            Gauge("probewatch_stored_queries", "Query vectors held by the engine.", lambda: self._stat("stored_queries")),
            Gauge("probewatch_accounts_flagged", "Accounts currently at level flag.",
                  lambda: self._stats_cache.get("levels", {}).get("flag", 0)),
            Gauge("probewatch_accounts_watch", "Accounts currently at level watch.",
                  lambda: self._stats_cache.get("levels", {}).get("watch", 0)),
            Gauge("probewatch_queue_depth", "Observation items waiting for a micro-batch.",
                  lambda: float(read_queue_depth())),
        ]

    def _stat(self, key: str) -> float:
        return float(self._stats_cache.get(key, 0))

    def render(self) -> str:
        try:
            self._stats_cache = self._read_stats() or {}
        except Exception:  # noqa: BLE001 - a scrape must not fail because the engine is still loading
            self._stats_cache = {}
        lines: list[str] = []
        for metric in (self.requests, self.request_latency, self.verdicts, self.item_errors, self.truncated,
                       self.fallbacks, self.batch_size, self.batch_latency, self.queue_wait, self.snapshots,
                       self.snapshot_latency, *self.gauges):
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"
