"""Alerts on level transitions: an account or a campaign going ok -> watch -> flag.

Each transition becomes one alert event (JSON, see :func:`alert_event`) written to a durable
outbox in ``<data_dir>/alerts`` and delivered by a background loop to every configured sink
(``alert_sinks``), at least once, with retries and exponential backoff with jitter, at most
``rate_per_s`` deliveries a second per sink (a token bucket; events over it wait in the
outbox). Nothing is created while no sink is configured.

Levels only rise: an account's level is sticky at its peak and a campaign's groups keep
theirs. A forget (privacy deletion) or a memory eviction removes an account rather than
lowering it, and sends nothing; an account forgotten and seen again starts at ok and alerts
again when it rises.

Durability. The outbox is a :class:`~.journal.Journal` (CRC-checked JSON lines, one fsync
per append, whatever ``journal_fsync`` says: transitions are rare). The state thread that
applies a micro-batch writes the batch's alert events after its journal records and after
the engine applied them, and before any caller of the batch is answered; snapshots are taken
on that same thread, so every transition a snapshot covers has its event in the outbox. A
kill between the journal write and the outbox write loses only that batch's events from the
outbox: at start, the journal records replayed after the snapshot are checked for
transitions again, and those after the newest journal seq the outbox holds an event for
(``alerted_through``) are created then. If the outbox cannot be written, the service stops
acknowledging observations (like a journal failure) and takes no more snapshots, so a
restart recreates what was lost. A delivery is marked in the outbox (one line per event and
sink) once the sink accepted it; a kill between the sink's answer and that mark sends the
event again after the restart, with the same ``event_id`` for the receiver to drop.

Sinks. A sink is anything with a ``name``, its :class:`~.config.AlertSinkConfig` as
``settings`` (rate, timeout, retry schedule) and two coroutines: ``send(event, body)``,
which returns once the destination accepted the event and raises otherwise (any exception
is a failed attempt, retried), and ``aclose()``. :data:`SINK_KINDS` maps a config ``kind``
to its class: :class:`WebhookSink` (a signed POST) and :class:`KafkaSink` (a record on a topic,
acknowledged by every in-sync replica).

:class:`AlertPipeline` (sinks, outbox folder, metrics, optional fixed instance id) is the part
that does not depend on the sidecar: the Kafka worker runs one per partition, with the offset
+ 1 as journal seq and ``group/topic/partition`` as instance (docs/kafka.md "Alerts");
:class:`Alerts` is the sidecar's, built from its settings.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import hashlib
import hmac
import json
import logging
import random
import secrets
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from .. import __version__
from ..errors import UnknownCampaignError
from ..types import Level, Verdict
from .config import AlertSinkConfig, ServerConfig
from .journal import Journal, JournalFailure, _parse_line, _whole_record_in_tail
from .logs import account_fields
from .ratelimit import TokenBuckets

if TYPE_CHECKING:
    from ..engine import Engine
    from .metrics import ServerMetrics

log = logging.getLogger("probewatch.serve.alerts")

OUTBOX_FOLDER = "alerts"
EVENT_TYPE = "probewatch.level_changed"
SIGNATURE_HEADER = "X-Probewatch-Signature"
TIMESTAMP_HEADER = "X-Probewatch-Timestamp"
EVENT_ID_HEADER = "X-Probewatch-Event-Id"
REPLAY_WINDOW_S = 300  # what verify_signature accepts by default between the timestamp and now
TOP_REASONS = 3
COMPACT_EVERY = 512  # delivery marks appended before the outbox is rewritten with what is still pending
DAMAGED_SUFFIX = ".damaged"  # a segment with damaged lines, kept after its pending alerts are carried forward


class DeliveryError(RuntimeError):
    """One delivery attempt failed; the event stays in the outbox and is tried again."""


# -- events ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Transition:
    """One level change, found in the verdict of the journal record ``journal_seq``."""

    kind: str  # "account" | "campaign"
    id: str
    from_level: Level
    to_level: Level
    risk: float | None
    one_in: float | None  # about 1 in this many benign accounts reach this score (accounts only)
    reasons: tuple[str, ...]
    journal_seq: int
    observed_ts: float | None


def event_id(instance: str, transition: Transition) -> str:
    """The same transition found again (replayed after a kill) gets the same id."""
    key = (
        "|".join((instance, transition.kind, transition.id, transition.from_level.value, transition.to_level.value))
        + f"|{transition.journal_seq}"
    )
    return "evt-" + hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def alert_event(transition: Transition, instance: str, now: float) -> dict[str, Any]:
    """The JSON every sink receives for one transition."""
    return {
        "event_id": event_id(instance, transition),
        "type": EVENT_TYPE,
        "kind": transition.kind,
        "id": transition.id,
        "from_level": transition.from_level.value,
        "to_level": transition.to_level.value,
        "risk": transition.risk,
        "one_in": transition.one_in,
        "reasons": list(transition.reasons),
        "ts": round(now, 3),
        "observed_ts": transition.observed_ts,
        "journal_seq": transition.journal_seq,
        "text": slack_text(transition),
    }


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def slack_text(transition: Transition) -> str:
    """One message in Slack's mrkdwn (also readable as plain text)."""
    rising = transition.to_level > transition.from_level
    what = f"{transition.kind} `{_slack_escape(transition.id)}`"
    text = f"probewatch: {what} {'rose' if rising else 'fell'} from {transition.from_level.value} to *{transition.to_level.value}*"
    if transition.risk is not None:
        text += f" (risk {transition.risk:.4f}"
        if transition.one_in is not None and transition.one_in >= 2:
            text += f", about 1 in {transition.one_in:,.0f} benign accounts score this high"
        text += ")"
    if transition.reasons:
        text += ". Top reasons: " + "; ".join(_slack_escape(reason) for reason in transition.reasons)
    return text


def _reason_text(reason: Any) -> str:
    described = f"{reason.description}: " if reason.description else ""
    return (
        f"{described}{reason.feature}={reason.value:.4g}, {reason.direction} benign look-alikes "
        f"(benign percentile {reason.benign_percentile:.1f})"
    )


class LevelTracker:
    """Finds level transitions, in order, from a batch's verdicts and the engine's state after it.

    It keeps the level of every account at watch or flag and of every campaign it has seen
    (seeded from the engine when the state is restored): the engine keeps no history of
    levels, and a campaign that becomes hot raises its members' sticky levels, members
    absent from the batch included. So after the verdicts, the members of every campaign
    the batch's verdicts carry are checked as well."""

    def __init__(self) -> None:
        self._accounts: dict[str, Level] = {}
        self._campaigns: dict[str, Level] = {}

    def seed(self, engine: Engine) -> None:
        pipeline = engine.pipeline
        self._accounts = {a: state.level for a, state in pipeline.states.items() if state.level > Level.OK}
        for account, record in pipeline.evicted.items():  # an evicted account comes back at its level
            if Level(record[0]) > Level.OK:
                self._accounts.setdefault(account, Level(record[0]))
        self._campaigns = {report.id: report.level for report in engine.campaigns()}

    def forget(self, account: str) -> None:
        self._accounts.pop(account, None)

    def _moved(self, account: str, level: Level) -> Level | None:
        """The account's previous level if ``level`` differs from it (and remember ``level``)."""
        previous = self._accounts.get(account, Level.OK)
        if level is previous:
            return None
        if level > Level.OK:
            self._accounts[account] = level
        else:
            self._accounts.pop(account, None)
        return previous

    def transitions(
        self, engine: Engine, verdicts: Sequence[Verdict | None], records: Sequence[dict[str, Any]]
    ) -> list[Transition]:
        """The transitions of a batch: ``verdicts[i]`` is the verdict of journal record ``records[i]``
        (None for an item the engine rejected). Called in the state thread, right after the batch."""
        found: list[Transition] = []
        campaigns: dict[str, Any] = {}
        for verdict, record in zip(verdicts, records, strict=True):
            if verdict is None:
                continue
            seq, ts = int(record["seq"]), record.get("ts")
            previous = self._moved(verdict.account, verdict.level)
            if previous is not None:
                reasons = tuple(_reason_text(reason) for reason in verdict.reasons[:TOP_REASONS])
                if verdict.campaign is not None and verdict.campaign.level >= verdict.level:  # raised with it
                    reasons = (f"member of campaign {verdict.campaign.id} ({verdict.campaign.level.value})", *reasons)
                # the peak: a level is sticky at the account's peak score, so that is what set it
                risk, one_in = verdict.peak_risk, verdict.peak_one_in
                found.append(
                    Transition("account", verdict.account, previous, verdict.level, risk, one_in, reasons, seq, ts)
                )
            campaign = verdict.campaign
            if campaign is None:
                continue
            campaigns[campaign.id] = (campaign, seq, ts)
            previous = self._campaigns.get(campaign.id, Level.OK)
            if campaign.level > previous:
                reasons = tuple(campaign.reasons[:TOP_REASONS])
                found.append(
                    Transition("campaign", campaign.id, previous, campaign.level, campaign.risk, None, reasons, seq, ts)
                )
                self._campaigns[campaign.id] = campaign.level
        for cid, (campaign, seq, ts) in campaigns.items():
            found += self._raised_members(engine, cid, campaign, seq, ts)
        return found

    def _raised_members(self, engine: Engine, cid: str, campaign: Any, seq: int, ts: float | None) -> list[Transition]:
        """Members of campaign ``cid`` whose level rose with it (they may have sent nothing in this batch)."""
        try:
            members = engine.campaign(cid).members
        except UnknownCampaignError:  # merged into another by a later item of the batch
            return []
        pipeline = engine.pipeline
        found = []
        for account in members:
            state = pipeline.states.get(account)
            if state is None:
                continue
            previous = self._moved(account, state.level)
            if previous is not None:
                reasons = (f"member of campaign {cid} ({campaign.level.value})", *campaign.reasons[: TOP_REASONS - 1])
                risk = state.peak_risk
                found.append(Transition("account", account, previous, state.level, risk, None, reasons, seq, ts))
        return found


# -- the outbox -------------------------------------------------------------------------------------
def event_body(event: dict[str, Any]) -> bytes:
    """The bytes a sink sends (and a webhook signs): fixed per event, so a retry sends the same."""
    return json.dumps(event, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")


@dataclass
class PendingAlert:
    event: dict[str, Any]
    body: bytes
    sinks: set[str] = field(default_factory=set)  # the sinks it still has to reach


class AlertOutbox:
    """Alert events not yet delivered to every sink, durable in a :class:`~.journal.Journal`.

    Records: ``alert`` (an event and the sinks it is for), ``delivered`` (an event id and a
    sink), ``meta`` (this outbox's random instance id, which salts event ids, and
    ``alerted_through``). Every start, and every :data:`COMPACT_EVERY` delivery marks, the
    outbox starts a new segment holding ``meta`` and the pending events, then deletes the older
    segments; a kill in between leaves both, and reading merges them by event id.
    """

    def __init__(self, folder: str | Path, sink_names: Sequence[str]):
        self.folder = Path(folder)
        self.sink_names = tuple(sink_names)
        self._journal = Journal(self.folder, "batch")
        self._write_lock = threading.Lock()  # appends and compaction, in order
        self._lock = threading.Lock()  # the in-memory tables, held briefly (the event loop reads them)
        self._pending: dict[str, PendingAlert] = {}
        self._queues: dict[str, OrderedDict[str, None]] = {name: OrderedDict() for name in self.sink_names}
        self.instance = ""
        self.alerted_through = 0  # the newest journal seq an event was created for
        self.damaged_lines = 0
        self._damaged_segments: set[Path] = set()
        self._marks = 0

    @property
    def failed(self) -> str | None:
        return self._journal.failed

    # -- start -------------------------------------------------------------------------------
    def open(self) -> None:
        """Read what earlier runs left, then rewrite it as one fresh segment."""
        records, last_seq = self._read()
        dropped: Counter = Counter()
        for record in records:
            op = record.get("op")
            if op == "meta":
                self.instance = self.instance or str(record["instance"])
                self.alerted_through = max(self.alerted_through, int(record["alerted_through"]))
            elif op == "alert":
                event = record["event"]
                self.alerted_through = max(self.alerted_through, int(event["journal_seq"]))
                known = self._pending.get(event["event_id"])
                if known is None:
                    self._pending[event["event_id"]] = PendingAlert(event, event_body(event), set(record["sinks"]))
                else:  # a copy a compaction carried forward: it knows of more deliveries
                    known.sinks &= set(record["sinks"])
            elif op == "delivered":
                known = self._pending.get(record["event_id"])
                if known is not None:
                    known.sinks.discard(record["sink"])
        for eid, pending in list(self._pending.items()):
            for sink in pending.sinks - set(self.sink_names):
                dropped[sink] += 1
            pending.sinks &= set(self.sink_names)
            if not pending.sinks:
                del self._pending[eid]
                continue
            for sink in pending.sinks:
                self._queues[sink][eid] = None
        for sink, count in sorted(dropped.items()):
            log.warning("%d undelivered alerts were for sink %r, which is no longer configured: not sent", count, sink)
        self.instance = self.instance or secrets.token_hex(8)
        segments = self._journal.segments()
        # past every segment's name, so the fresh one never appends to a torn file
        newest = max([last_seq, *(first for first, _ in segments)])
        self._journal.open(newest + 1)
        with self._write_lock:
            self._carry_forward()
            for path in self._damaged_segments:  # evidence, out of the way of reading and compaction
                path.replace(path.with_name(path.name + DAMAGED_SUFFIX))
            self._journal.drop_through(newest)
        if self._pending:
            log.info("alert outbox: %d events still to deliver", len(self._pending))

    def _read(self) -> tuple[list[dict[str, Any]], int]:
        """Every readable record and the highest seq; a damaged line is logged and skipped (its
        event is lost, the rest is kept), a torn last line (a kill mid-write) skipped."""
        records: list[dict[str, Any]] = []
        last_seq = 0
        for _, path in self._journal.segments():
            lines = path.read_bytes().split(b"\n")
            tail = lines.pop()
            whole = _whole_record_in_tail(tail)
            if whole is not None:
                lines.append(whole)
            elif tail.strip():
                log.warning("alert outbox %s ends in a torn line (a kill during a write); skipped", path.name)
            for lineno, raw in enumerate(lines, 1):
                if not raw.strip():
                    continue
                record = _parse_line(raw)
                if record is None:
                    self.damaged_lines += 1
                    self._damaged_segments.add(path)
                    log.error(
                        "alert outbox %s line %d is damaged: the alert in it, if any, will not be sent; the segment "
                        "is kept as %s%s for inspection",
                        path.name,
                        lineno,
                        path.name,
                        DAMAGED_SUFFIX,
                    )
                    continue
                last_seq = max(last_seq, int(record["seq"]))
                records.append(record)
        return records, last_seq

    def _carry_forward(self) -> None:
        """Write meta and every pending event (with the sinks still to reach) to the open segment."""
        with self._lock:
            pending = [(p.event, sorted(p.sinks)) for p in self._pending.values()]
        records = [{"op": "meta", "instance": self.instance, "alerted_through": self.alerted_through}]
        records += [{"op": "alert", "event": event, "sinks": sinks} for event, sinks in pending]
        self._journal.append(records)

    # -- writing ------------------------------------------------------------------------------
    def add(self, events: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """Write the events not yet in the outbox (journal seq after ``alerted_through``) durably;
        returns them. Raises :class:`~.journal.JournalFailure` when the outbox cannot be written."""
        new = [event for event in events if event["journal_seq"] > self.alerted_through]
        if not new:
            return []
        with self._write_lock:
            self._journal.append([{"op": "alert", "event": event, "sinks": list(self.sink_names)} for event in new])
            with self._lock:
                for event in new:
                    self._pending[event["event_id"]] = PendingAlert(event, event_body(event), set(self.sink_names))
                    for sink in self.sink_names:
                        self._queues[sink][event["event_id"]] = None
            self.alerted_through = max(self.alerted_through, *(event["journal_seq"] for event in new))
        return new

    def mark_delivered(self, eid: str, sink: str) -> None:
        """Record that ``sink`` accepted event ``eid``; a failed write is logged (the event is then
        sent again after a restart, which at-least-once allows)."""
        with self._lock:
            pending = self._pending.get(eid)
            if pending is None or sink not in pending.sinks:
                return
            pending.sinks.discard(sink)
            self._queues[sink].pop(eid, None)
            if not pending.sinks:
                del self._pending[eid]
        with self._write_lock:
            try:
                self._journal.append([{"op": "delivered", "event_id": eid, "sink": sink}])
            except JournalFailure as exc:
                log.error(
                    "marking alert %s delivered to %s failed (%s); it is sent again after a restart", eid, sink, exc
                )
                return
            self._marks += 1
            if self._marks >= COMPACT_EVERY:
                self._compact()

    def _compact(self) -> None:
        """Start a new segment holding what is pending and drop the older ones (write lock held)."""
        before = self._journal.last_seq
        try:
            self._journal.rotate()
            self._carry_forward()
        except JournalFailure as exc:
            log.error("compacting the alert outbox failed: %s", exc)
            return
        self._journal.drop_through(before)
        self._marks = 0

    # -- reading ------------------------------------------------------------------------------
    def next_for(self, sink: str) -> tuple[str, PendingAlert] | None:
        """The oldest event ``sink`` has still to receive."""
        with self._lock:
            queue = self._queues[sink]
            if not queue:
                return None
            eid = next(iter(queue))
            return eid, self._pending[eid]

    def backlog(self) -> list[tuple[str, str, int, float]]:
        """(sink, kind, events waiting, age in seconds of the oldest) for every sink and kind."""
        now = time.time()
        with self._lock:
            out = []
            for sink, queue in self._queues.items():
                count: Counter = Counter()
                oldest: dict[str, float] = {}
                for eid in queue:
                    event = self._pending[eid].event
                    count[event["kind"]] += 1
                    oldest.setdefault(event["kind"], event["ts"])
                for kind in ("account", "campaign"):
                    age = max(0.0, now - oldest[kind]) if kind in oldest else 0.0
                    out.append((sink, kind, count[kind], age))
            return out

    def pending_events(self) -> list[dict[str, Any]]:
        with self._lock:
            return [pending.event for pending in self._pending.values()]

    def close(self) -> None:
        with self._write_lock:
            self._journal.close()


# -- sinks --------------------------------------------------------------------------------------
class AlertSink(Protocol):
    name: str
    settings: AlertSinkConfig

    async def send(self, event: dict[str, Any], body: bytes) -> None: ...

    async def aclose(self) -> None: ...


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Probewatch-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of ``timestamp.body``."""
    return "sha256=" + hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def verify_signature(
    secret: bytes, timestamp: str, body: bytes, header: str, now: float | None = None, window_s: float = REPLAY_WINDOW_S
) -> bool:
    """What a receiver checks: the timestamp is within ``window_s`` of now (older deliveries may
    be replays) and the signature matches, compared in constant time. Whatever a sender puts
    in the headers (non-ASCII text, other digits, a non-string) is False, never an exception."""
    if not isinstance(timestamp, str) or not isinstance(header, str) or not (timestamp.isascii() and header.isascii()):
        return False  # int() reads other scripts' digits, which the signature's ASCII cannot hold
    try:
        age = abs((time.time() if now is None else now) - int(timestamp))
    except ValueError:
        return False
    return age <= window_s and hmac.compare_digest(signature(secret, timestamp, body), header)


class WebhookSink:
    """POSTs the event's JSON, signed (:func:`signature`) with the sink's secret; 2xx is delivered."""

    def __init__(self, settings: AlertSinkConfig):
        import httpx  # the serve extra

        self.name = settings.name
        self.settings = settings
        self._secret = settings.read_secret()
        self._client = httpx.AsyncClient(timeout=settings.timeout_s, follow_redirects=False)

    async def send(self, event: dict[str, Any], body: bytes) -> None:
        timestamp = str(int(time.time()))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": f"probewatch/{__version__}",
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: signature(self._secret, timestamp, body),
            EVENT_ID_HEADER: event["event_id"],
        }
        # streamed and never read: only the status counts, and a receiver's body (200 MB from a
        # broken or hostile one) must not land in the sidecar's memory
        async with self._client.stream("POST", self.settings.url, content=body, headers=headers) as response:
            status = response.status_code
        if not 200 <= status < 300:
            raise DeliveryError(f"the receiver answered HTTP {status}")

    async def aclose(self) -> None:
        await self._client.aclose()


class KafkaSink:
    """Produces the event's JSON to the sink's topic, keyed by the account or campaign id (its
    events stay in order on one partition), with the event id in an ``event_id`` header; delivered
    once the broker acknowledged it with ``acks=all``.

    The producer is only touched from one thread of its own, one attempt at a time: produce,
    then flush until the delivery report. librdkafka gives up on the record after
    ``message.timeout.ms``, set below ``timeout_s`` so that an attempt ends with its report
    (delivered or failed) rather than leaving a record queued that a retry would duplicate."""

    def __init__(self, settings: AlertSinkConfig):
        from confluent_kafka import Producer  # the kafka extra (checked when the settings were loaded)

        self.name = settings.name
        self.settings = settings
        self._wait_s = settings.timeout_s * 0.9
        self._producer = Producer(
            {
                "partitioner": "murmur2_random",  # the Java client's: one key, one partition, whoever produced it
                **settings.kafka,
                "bootstrap.servers": settings.bootstrap_servers,
                "acks": "all",
                "message.timeout.ms": str(max(100, int(settings.timeout_s * 800))),
            }
        )
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=f"probewatch-alerts-{self.name}")

    async def send(self, event: dict[str, Any], body: bytes) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._produce_and_wait, event, body)

    def _produce_and_wait(self, event: dict[str, Any], body: bytes) -> None:
        reports: list[Any] = []
        self._producer.produce(
            self.settings.topic,
            key=str(event["id"]).encode("utf-8", "surrogatepass"),
            value=body,
            headers=[("event_id", event["event_id"].encode("ascii"))],
            on_delivery=lambda err, msg: reports.append(err),
        )
        self._producer.flush(self._wait_s)  # serves the delivery report
        if not reports:
            raise DeliveryError(f"no acknowledgement from {self.settings.bootstrap_servers} within {self._wait_s:.1f}s")
        if reports[0] is not None:
            raise DeliveryError(f"the broker did not take the record for topic {self.settings.topic}: {reports[0]}")

    async def aclose(self) -> None:
        # what is still queued was not acknowledged and stays in the outbox: no need to wait for it
        await asyncio.get_running_loop().run_in_executor(self._thread, self._producer.purge)
        self._thread.shutdown(wait=False)


SINK_KINDS: dict[str, type] = {"webhook": WebhookSink, "kafka": KafkaSink}


def make_sink(settings: AlertSinkConfig) -> AlertSink:
    return SINK_KINDS[settings.kind](settings)


def backoff_delay(failures: int, initial_s: float, max_s: float, rng: random.Random) -> float:
    """Seconds before the next attempt after ``failures`` failed ones in a row: doubling from
    ``initial_s`` up to ``max_s``, then a random half taken off so that sinks and sidecars
    that failed together do not retry together."""
    ceiling = min(max_s, initial_s * 2 ** min(failures - 1, 62))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)


# -- delivery -------------------------------------------------------------------------------------
class AlertDispatcher:
    """One delivery loop per sink, on the event loop: the oldest event the sink has still to
    receive, once the sink's token bucket allows, one attempt at a time (bounded by
    ``timeout_s``); after a failure the sink waits :func:`backoff_delay` before trying again."""

    def __init__(self, outbox: AlertOutbox, sinks: Sequence[AlertSink], metrics: ServerMetrics | Any):
        self.outbox = outbox
        self.sinks = list(sinks)
        self.metrics = metrics
        self._wakeups: dict[str, asyncio.Event] = {}
        self._tasks: list[asyncio.Task] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        # delivery marks are fsynced: off the event loop, one at a time
        self._writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="probewatch-alerts")
        self._rng = random.Random()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        for sink in self.sinks:
            self._wakeups[sink.name] = asyncio.Event()
            self._tasks.append(asyncio.create_task(self._deliver(sink), name=f"probewatch-alerts-{sink.name}"))

    def notify(self) -> None:
        """New events are in the outbox (callable from any thread)."""
        if self._loop is None or self._loop.is_closed():
            return
        for wakeup in self._wakeups.values():
            self._loop.call_soon_threadsafe(wakeup.set)

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for sink in self.sinks:
            with contextlib.suppress(Exception):
                await sink.aclose()
        self._writer.shutdown(wait=True)

    async def _deliver(self, sink: AlertSink) -> None:
        loop = asyncio.get_running_loop()
        settings = sink.settings
        bucket = TokenBuckets(settings.rate_per_s, settings.burst)
        wakeup = self._wakeups[sink.name]
        failures = 0
        while True:
            wakeup.clear()
            head = self.outbox.next_for(sink.name)
            if head is None:
                await wakeup.wait()
                continue
            wait = bucket.take(sink.name, 1)
            if wait > 0:  # over the rate: the event waits in the outbox
                await asyncio.sleep(wait)
                continue
            eid, pending = head
            kind = pending.event["kind"]
            try:
                await asyncio.wait_for(sink.send(pending.event, pending.body), settings.timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a sink raises is a failed attempt, retried
                failures += 1
                self.metrics.alert_failures.labels(sink.name, kind).inc()
                delay = backoff_delay(failures, settings.retry_initial_s, settings.retry_max_s, self._rng)
                reason = "timed out" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
                log.warning(
                    "delivering alert %s to sink %s failed (%d in a row: %s); next attempt in %.1fs",
                    eid, sink.name, failures, reason, delay,
                )  # fmt: skip
                await asyncio.sleep(delay)
                continue
            failures = 0
            await loop.run_in_executor(self._writer, self.outbox.mark_delivered, eid, sink.name)
            self.metrics.alerts_delivered.labels(sink.name, kind).inc()


# -- what the service holds ----------------------------------------------------------------------------
class AlertPipeline:
    """Alerting for one stream of records: finds transitions where the records are applied,
    keeps them in the outbox in ``folder`` (a local POSIX folder: it is fsynced), delivers them
    from an event loop. ``metrics`` has the counters ``alerts_created`` (kind),
    ``alerts_delivered`` and ``alert_failures`` (sink, kind), and ``alert_damaged_lines``. ``instance`` salts the event ids:
    None keeps the outbox's own (random, made once and stored in it); a fixed one (the Kafka
    worker's ``group/topic/partition``) gives the same ids to whoever finds the transition."""

    def __init__(
        self,
        sinks: Sequence[AlertSinkConfig],
        folder: str | Path,
        metrics: Any,
        instance: str | None = None,
    ):
        self.metrics = metrics
        self.sinks = [make_sink(settings) for settings in sinks]
        self.outbox = AlertOutbox(folder, [sink.name for sink in self.sinks])
        if instance is not None:
            self.outbox.instance = instance  # kept by open(): it wins over the one stored
        self.tracker = LevelTracker()
        self.dispatcher = AlertDispatcher(self.outbox, self.sinks, metrics)

    @property
    def failed(self) -> str | None:
        """Why the outbox stopped taking writes (None while it works)."""
        return self.outbox.failed

    # state thread
    def open(self, engine: Engine) -> None:
        """After the snapshot is loaded and before the journal is replayed."""
        self.outbox.open()
        if self.outbox.damaged_lines:
            self.metrics.alert_damaged_lines.inc(self.outbox.damaged_lines)
        self.tracker.seed(engine)

    def forget(self, account: str) -> None:
        self.tracker.forget(account)

    def record(self, engine: Engine, verdicts: Sequence[Verdict | None], records: Sequence[dict[str, Any]]) -> int:
        """Put the batch's transitions in the outbox; how many were new. A write failure is
        logged and left in :attr:`failed` (the caller stops acknowledging)."""
        transitions = self.tracker.transitions(engine, verdicts, records)
        if not transitions:
            return 0
        now = time.time()
        events = [alert_event(transition, self.outbox.instance, now) for transition in transitions]
        try:
            new = self.outbox.add(events)
        except JournalFailure as exc:
            log.error("writing %d alert events to the outbox failed: %s", len(events), exc)
            return 0
        for event in new:
            self.metrics.alerts_created.labels(event["kind"]).inc()
            who = account_fields(event["id"]) if event["kind"] == "account" else {"campaign": event["id"]}
            log.info(
                "alert %s: %s %s -> %s", event["event_id"], event["kind"], event["from_level"], event["to_level"],
                extra=who,
            )  # fmt: skip
        return len(new)

    def backlog(self) -> list[tuple[str, str, int, float]]:
        return self.outbox.backlog()

    # event loop
    async def start(self) -> None:
        await self.dispatcher.start()
        self.dispatcher.notify()

    def notify(self) -> None:
        self.dispatcher.notify()

    async def stop(self) -> None:
        await self.dispatcher.stop()

    def close(self) -> None:
        self.outbox.close()


class Alerts(AlertPipeline):
    """The sidecar's alerting: the outbox in ``<data_dir>/alerts``, the sinks of ``alert_sinks``.
    Built only when ``alert_sinks`` is not empty."""

    def __init__(self, config: ServerConfig, metrics: ServerMetrics):
        super().__init__(config.alert_sinks, config.data_path / OUTBOX_FOLDER, metrics)
