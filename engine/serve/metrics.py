"""The sidecar's Prometheus metrics (prometheus_client), one registry per app.

Labels are closed sets (route templates, methods, status codes, levels, causes, outcomes):
an account id or a campaign id is never a label, so cardinality stays bounded whatever the
traffic. Engine gauges are read at scrape time, from one ``Engine.stats()`` call and one
reading of the campaign layer's table sizes per scrape.

>>> metrics = ServerMetrics(read_stats=lambda: None, read_queue_depth=lambda: 0)
>>> metrics.verdicts.labels(level="ok").inc()
>>> b'probewatch_verdicts_total{level="ok"} 1.0' in metrics.render()
True
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..types import CampaignStats, EngineStats

log = logging.getLogger("probewatch.serve")

CONTENT_TYPE = CONTENT_TYPE_LATEST
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)

# (name, help, reading from the engine's stats); all zero while the engine loads.
ENGINE_GAUGES: tuple[tuple[str, str, Callable[[EngineStats], float]], ...] = (
    ("probewatch_accounts", "Accounts held by the engine.", lambda stats: stats.accounts),
    ("probewatch_bytes_held", "Bytes of vectors and statistics held by the engine.", lambda stats: stats.bytes_held),
    ("probewatch_stored_queries", "Query vectors held by the engine.", lambda stats: stats.stored_queries),
    ("probewatch_accounts_flagged", "Accounts currently at level flag.", lambda stats: stats.levels.get("flag", 0)),
    ("probewatch_accounts_watch", "Accounts currently at level watch.", lambda stats: stats.levels.get("watch", 0)),
    (
        "probewatch_evicted_accounts",
        "Accounts evicted for memory since start (raise engine.memory_budget_bytes when it grows).",
        lambda stats: stats.evicted,
    ),
    (
        "probewatch_repeated_prompts",
        "Observed prompts their account had sent before, character for character: answered with the account's "
        "standing verdict, not judged anew (retries, health checks, re-runs).",
        lambda stats: stats.repeats,
    ),
    (
        "probewatch_evicted_records",
        "Evicted accounts at watch or flag whose level is kept until they return.",
        lambda stats: stats.evicted_records,
    ),
    (
        "probewatch_memory_pressure",
        "1 when the last batch could keep the memory budget only by evicting accounts at watch or flag, or "
        "not at all (what is left is evicted-account records and campaign tables); /readyz says which.",
        lambda stats: stats.memory_pressure is not None,
    ),
    (
        "probewatch_learned_accounts",
        "Live accounts whose rows the calibration tables learned at the last refit (0 while warming up).",
        lambda stats: stats.calibration.get("learned", {}).get("accounts", 0),
    ),
    (
        "probewatch_learned_rows",
        "Live feature rows the calibration tables learned at the last refit.",
        lambda stats: stats.calibration.get("learned", {}).get("rows", 0),
    ),
)
QUEUE_DEPTH = ("probewatch_queue_depth", "Observation items waiting for a micro-batch.")
QUEUE_CAPACITY = ("probewatch_queue_capacity", "Items the observation queue holds for bulk callers (queue_capacity).")
READY = ("probewatch_ready", "1 while the sidecar acknowledges observations (/readyz 200), else 0 (/readyz says why).")

# The levels a campaign can have: only groups at watch or flag form campaigns.
CAMPAIGN_LEVELS = ("watch", "flag")


CAMPAIGNS = ("probewatch_campaigns", "Campaigns (linked groups of accounts) at level watch or flag.")
# (name, help, reading); all zero while the engine loads.
CAMPAIGN_GAUGES: tuple[tuple[str, str, Callable[[CampaignStats], float]], ...] = (
    (
        "probewatch_campaign_groups",
        "Candidate groups: indicator values (template, metadata, payload region) shared by two or more accounts.",
        lambda stats: stats.groups,
    ),
    (
        "probewatch_campaign_pending_values",
        "Indicator values seen from one account so far, waiting for a second.",
        lambda stats: stats.pending,
    ),
    (
        "probewatch_campaign_memberships",
        "Group memberships in use (capped by engine.campaign_max_memberships).",
        lambda stats: stats.memberships,
    ),
)
EVICTED_FLAGGED = (
    "probewatch_campaign_groups_evicted_flagged",
    "Groups at watch or flag evicted because the campaign tables were full (raise campaign_max_groups / "
    "campaign_max_memberships when this grows).",
)


REPEAT_CACHE_HITS = ("probewatch_embed_cache_hits", "Prompts answered by the exact-repeat cache, not the model.")
REPEAT_CACHE_MISSES = (
    "probewatch_embed_cache_misses",
    "Prompts the exact-repeat cache did not hold (embedded by the model).",
)
REPEAT_CACHE_ENTRIES = (
    "probewatch_embed_cache_entries",
    "Distinct prompts the exact-repeat cache holds (engine.embed_cache_size caps it).",
)


class RepeatCacheGauges(Collector):
    """The embedder's exact-repeat cache (engine.embed_cache_size): hit rate = hits / (hits + misses)."""

    def __init__(self, read_cache: Callable[[], object | None]):
        self._read_cache = read_cache

    def describe(self) -> Iterator[Metric]:
        return iter(
            (
                CounterMetricFamily(*REPEAT_CACHE_HITS),
                CounterMetricFamily(*REPEAT_CACHE_MISSES),
                GaugeMetricFamily(*REPEAT_CACHE_ENTRIES),
            )
        )

    def collect(self) -> Iterator[Metric]:
        stats = _read_or_none(self._read_cache, "repeat-cache stats")
        yield CounterMetricFamily(*REPEAT_CACHE_HITS, value=float(stats.hits) if stats is not None else 0.0)
        yield CounterMetricFamily(*REPEAT_CACHE_MISSES, value=float(stats.misses) if stats is not None else 0.0)
        yield GaugeMetricFamily(*REPEAT_CACHE_ENTRIES, value=float(stats.entries) if stats is not None else 0.0)


class EngineGauges(Collector):
    """Metrics read when Prometheus scrapes: the engine's stats, the campaign layer's table
    sizes and the batcher's queue depth."""

    def __init__(
        self,
        read_stats: Callable[[], EngineStats | None],
        read_queue_depth: Callable[[], int],
        read_campaigns: Callable[[], CampaignStats | None] | None = None,
        read_ready: Callable[[], bool] | None = None,
        queue_capacity: int = 0,
    ):
        self._read_stats = read_stats
        self._read_queue_depth = read_queue_depth
        self._read_campaigns = read_campaigns or (lambda: None)
        self._read_ready = read_ready or (lambda: False)
        self._queue_capacity = queue_capacity

    def describe(self) -> list[Metric]:
        return [
            *(GaugeMetricFamily(name, help_text) for name, help_text, _ in ENGINE_GAUGES),
            GaugeMetricFamily(*QUEUE_DEPTH),
            GaugeMetricFamily(*QUEUE_CAPACITY),
            GaugeMetricFamily(*READY),
            GaugeMetricFamily(*CAMPAIGNS, labels=("level",)),
            *(GaugeMetricFamily(name, help_text) for name, help_text, _ in CAMPAIGN_GAUGES),
            CounterMetricFamily(*EVICTED_FLAGGED),
        ]

    def collect(self) -> Iterator[Metric]:
        stats = _read_or_none(self._read_stats, "engine stats")
        for name, help_text, read in ENGINE_GAUGES:
            yield GaugeMetricFamily(name, help_text, value=float(read(stats)) if stats is not None else 0.0)
        yield GaugeMetricFamily(*QUEUE_DEPTH, value=float(self._read_queue_depth()))
        yield GaugeMetricFamily(*QUEUE_CAPACITY, value=float(self._queue_capacity))
        yield GaugeMetricFamily(*READY, value=1.0 if self._read_ready() else 0.0)
        campaigns = _read_or_none(self._read_campaigns, "campaign stats")
        by_level = GaugeMetricFamily(*CAMPAIGNS, labels=("level",))
        for level in CAMPAIGN_LEVELS:
            by_level.add_metric((level,), float(campaigns.campaigns.get(level, 0)) if campaigns is not None else 0.0)
        yield by_level
        for name, help_text, read in CAMPAIGN_GAUGES:
            yield GaugeMetricFamily(name, help_text, value=float(read(campaigns)) if campaigns is not None else 0.0)
        evicted = float(campaigns.evicted_flagged) if campaigns is not None else 0.0
        yield CounterMetricFamily(*EVICTED_FLAGGED, value=evicted)


def _read_or_none(read: Callable[[], object], what: str):
    try:
        return read()
    except Exception:  # a scrape must not fail because the engine is busy or still loading
        log.debug("%s unavailable for this scrape", what, exc_info=True)
        return None


ALERT_BACKLOG = ("probewatch_alert_outbox_depth", "Alert events waiting in the outbox for a sink.")
ALERT_OLDEST = (
    "probewatch_alert_oldest_undelivered_age_seconds",
    "Age of the oldest alert event a sink has not accepted yet (0 when none waits).",
)


class AlertBacklog(Collector):
    """The alert outbox per sink and kind, read at scrape time ((sink, kind, depth, oldest age) rows)."""

    def __init__(self, read_backlog: Callable[[], Iterable[tuple[str, str, int, float]]]):
        self._read_backlog = read_backlog

    def describe(self) -> list[Metric]:
        return [
            GaugeMetricFamily(*ALERT_BACKLOG, labels=("sink", "kind")),
            GaugeMetricFamily(*ALERT_OLDEST, labels=("sink", "kind")),
        ]

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(*ALERT_BACKLOG, labels=("sink", "kind"))
        oldest = GaugeMetricFamily(*ALERT_OLDEST, labels=("sink", "kind"))
        for sink, kind, count, age in _read_or_none(lambda: list(self._read_backlog()), "alert outbox") or ():
            depth.add_metric((sink, kind), float(count))
            oldest.add_metric((sink, kind), float(age))
        yield depth
        yield oldest


class ServerMetrics:
    """Every metric the sidecar exports, in a registry of its own (several apps in one process
    do not collide). Counters are declared without ``_total``: prometheus_client appends it."""

    def __init__(
        self,
        read_stats: Callable[[], EngineStats | None],
        read_queue_depth: Callable[[], int],
        read_campaigns: Callable[[], CampaignStats | None] | None = None,
        read_ready: Callable[[], bool] | None = None,
        queue_capacity: int = 0,
        read_alert_backlog: Callable[[], Iterable[tuple[str, str, int, float]]] = tuple,
        read_repeat_cache: Callable[[], object | None] = lambda: None,
    ):
        self.registry = CollectorRegistry()
        counter = functools.partial(Counter, registry=self.registry)
        histogram = functools.partial(Histogram, registry=self.registry)
        self.requests = counter(
            "probewatch_http_requests",
            "HTTP requests by route template and status code.",
            ("endpoint", "method", "status"),
        )
        self.request_latency = histogram(
            "probewatch_http_request_duration_seconds",
            "HTTP request latency by route template.",
            ("endpoint",),
            buckets=LATENCY_BUCKETS,
        )
        self.verdicts = counter(
            "probewatch_verdicts", "Verdicts returned, by level (unknown = fail-open/closed fallback).", ("level",)
        )
        self.item_errors = counter("probewatch_rejected_items", "Observation items rejected as invalid.")
        self.truncated = counter("probewatch_truncated_prompts", "Prompts truncated to max_prompt_chars.")
        self.fallbacks = counter(
            "probewatch_fallback_verdicts", "Items answered by the failure policy, by cause.", ("cause",)
        )
        self.unobserved = counter(
            "probewatch_unobserved_items",
            "Items answered without being observed or queued to be (the answer says so), by route template and reason.",
            ("endpoint", "reason"),
        )
        self.context_texts = counter(
            "probewatch_guardrail_context_texts",
            "Context texts of guardrail requests (system messages, earlier user turns) the account had not sent "
            "before: observed, or past guardrail_context_texts_per_request (observed when sent again).",
            ("outcome",),
        )
        self.rate_limited = counter(
            "probewatch_rate_limited_requests",
            "Requests answered 429 because their client was over its token-bucket limit, by route template.",
            ("endpoint",),
        )
        self.batch_size = histogram(
            "probewatch_batch_size", "Items per micro-batch sent to the engine.", buckets=BATCH_SIZE_BUCKETS
        )
        self.batch_latency = histogram(
            "probewatch_batch_duration_seconds",
            "Journal write plus engine time per micro-batch.",
            buckets=LATENCY_BUCKETS,
        )
        self.queue_wait = histogram(
            "probewatch_queue_wait_seconds",
            "Time an item waited before its micro-batch started.",
            buckets=LATENCY_BUCKETS,
        )
        self.snapshots = counter("probewatch_snapshots", "Snapshots written, by outcome.", ("outcome",))
        self.snapshot_latency = histogram(
            "probewatch_snapshot_duration_seconds", "Time to write one snapshot.", buckets=LATENCY_BUCKETS
        )
        self.alerts_created = counter(
            "probewatch_alerts_created", "Alert events created (level transitions), by kind.", ("kind",)
        )
        self.alerts_delivered = counter(
            "probewatch_alerts_delivered", "Alert events a sink accepted, by sink and kind.", ("sink", "kind")
        )
        self.alert_failures = counter(
            "probewatch_alert_delivery_failures",
            "Failed alert delivery attempts (each is retried), by sink and kind.",
            ("sink", "kind"),
        )
        self.alert_damaged_lines = counter(
            "probewatch_alert_outbox_damaged_lines",
            "Damaged outbox lines found at start (their alerts are not sent; the segment is kept as *.damaged).",
        )
        self.registry.register(EngineGauges(read_stats, read_queue_depth, read_campaigns, read_ready, queue_capacity))
        self.registry.register(AlertBacklog(read_alert_backlog))
        self.registry.register(RepeatCacheGauges(read_repeat_cache))

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric (media type :data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)
