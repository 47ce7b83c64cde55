"""The Kafka worker: one consumer-group member running an engine per assigned partition.

Per poll: messages are checked (poison ones go to the dead-letter topic), the batch's prompts
are embedded at once, each partition's observations go through that partition's
:class:`~probewatch.Engine` in offset order, and a verdict per observation goes to the
compacted verdicts topic keyed by account. Every ``checkpoint_interval_s`` or
``checkpoint_every_messages`` a partition's engine is written to the state store named by
the partition's next offset; only when that file is durable (and the verdicts before it are
acknowledged) is the offset committed. On assignment the newest readable checkpoint is
loaded and the partition replayed from its offset; on revocation and on SIGTERM each owned
partition is checkpointed and committed first.

Alerts (``alert_sinks``): each partition has its own outbox in
``<alert_outbox_dir>/<group>/<topic>/p<partition>`` and its own level tracker, seeded from the
engine on assignment. A transition found at offset O is written to the outbox as journal seq
O + 1, in the poll that observes O, so before any checkpoint covering O; its event id is salted
with ``group/topic/partition``, so whoever replays O finds the same id. An outbox is kept and
delivered from (on one asyncio loop thread) for the worker's lifetime, also after its partition
was revoked, and every outbox folder found at start is reopened: an event is lost only with the
folder. docs/kafka.md "Alerts" says where at-least-once holds.

Replay gives the uninterrupted state because everything an engine does depends only on the
partition's order of observations: its housekeeping (population refits, memory-budget
evictions) runs at fixed observation counts (``housekeeping_every``,
``population_update_every``), never at poll boundaries. What remains of poll boundaries is
float32 rounding in the last bit of batched matrix products.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..backend.embedder import Embedder
from ..engine import DEFAULT_CALIBRATION_PATH, Engine
from ..errors import BatchError, InputError, ProbewatchError
from ..io.persistence import read_calibration
from ..serve.alerts import AlertPipeline
from .checkpoints import CheckpointStore
from .config import WorkerConfig
from .metrics import WorkerMetrics
from .publisher import PRODUCER_DEFAULTS
from .schema import (
    MAX_DEAD_LETTER_KEY_BYTES,
    Observation,
    PoisonMessage,
    dead_letter_message,
    parse_observation,
    verdict_message,
)

log = logging.getLogger("probewatch.stream")


class WorkerError(ProbewatchError):
    """The worker cannot go on safely (a produce the broker refused, a topic that is missing)."""


@dataclass
class PartitionState:
    """One assigned partition: its engine and where it stands in the log."""

    engine: Engine
    next_offset: int  # the next offset to observe (everything below is in the engine)
    checkpointed_offset: int  # the offset of the newest durable checkpoint (== next_offset: clean)
    checkpointed_at: float = field(default_factory=time.time)
    checkpoint_bytes: int = 0
    lag: int = 0

    @property
    def dirty(self) -> bool:
        return self.next_offset != self.checkpointed_offset


@dataclass
class _Item:
    offset: int
    key: bytes | None
    value: bytes | None
    obs: Observation | None
    poison: PoisonMessage | None = None
    vector: np.ndarray | None = None
    read: str | None = None  # what the model reads of the prompt (Engine.read_prompts)


class Worker:
    """``Worker(config).run()`` consumes until :meth:`stop` (the CLI calls it on SIGTERM)."""

    def __init__(self, config: WorkerConfig, *, embedder: Embedder | None = None, metrics: WorkerMetrics | None = None):
        self.config = config
        self.store = CheckpointStore(config.state_url, config.checkpoint_keep)
        self.benign = read_calibration(Path(config.calibration_path or DEFAULT_CALIBRATION_PATH))
        self.dim = self.benign.reference.dim
        self._embedder = embedder
        self.partitions: dict[int, PartitionState] = {}
        self._parked: dict[int, PartitionState] = {}  # revoked; reused if the partition comes back unchanged
        # what this worker reads and writes (the campaign aggregator, a subclass, reads other topics)
        self.group = config.group_id
        self.input_topic = config.observations_topic
        self.output_topic = config.verdicts_topic
        self.metrics = metrics or WorkerMetrics()
        self.metrics.watch(self)
        self._stop = threading.Event()
        self._delivery_errors: list[str] = []
        self.ready = False
        self.loop_at = time.monotonic()
        self._consumer: Any = None
        self._producer: Any = None
        self._alerts: dict[int, AlertPipeline] = {}  # every partition outbox opened, owned or not
        self._alert_loop: asyncio.AbstractEventLoop | None = None
        self._alert_thread: threading.Thread | None = None

    # -- the embedding model, loaded on the first prompt -----------------------------------
    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            engine = self.config.engine
            self._embedder = Embedder(engine.model, engine.device, engine.embed_batch_size)
            if self._embedder.dim != self.dim:
                raise WorkerError(
                    f"the embedding model gives {self._embedder.dim}-d vectors but the calibration is for "
                    f"{self.dim}-d; set calibration_path to a calibration made with this model"
                )
        return self._embedder

    def _new_engine(self) -> Engine:
        return Engine(self.config.engine, embedder=self._embedder, benign=self.benign)

    # -- Kafka clients -----------------------------------------------------------------------
    def _clients(self) -> tuple[Any, Any]:
        from confluent_kafka import Consumer, Producer  # the kafka extra

        c = self.config
        common = {"bootstrap.servers": c.bootstrap_servers, **c.kafka}
        consumer = Consumer(
            {
                "group.id": self.group,
                "enable.auto.commit": "false",
                "enable.auto.offset.store": "false",
                "auto.offset.reset": "earliest",
                "session.timeout.ms": str(c.session_timeout_ms),
                "heartbeat.interval.ms": str(max(100, c.session_timeout_ms // 10)),
                "enable.partition.eof": "false",
                **common,
                **c.kafka_consumer,
            }
        )
        producer = Producer({**PRODUCER_DEFAULTS, **common, **c.kafka_producer})
        return consumer, producer

    def stop(self) -> None:
        """Ask :meth:`run` to checkpoint, commit and return (safe from a signal handler)."""
        self._stop.set()

    def run(self, max_seconds: float | None = None) -> None:
        """Consume until :meth:`stop` (or ``max_seconds``); then checkpoint and commit every
        owned partition and leave the group."""
        consumer, producer = self._consumer, self._producer = self._clients()
        try:
            self._check_topics(consumer)
            if self.alerting:
                self._start_alerts()
            consumer.subscribe(
                [self.input_topic],
                on_assign=self._on_assign,
                on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )
            self.ready = True
            deadline = None if max_seconds is None else time.monotonic() + max_seconds
            timeout = self.config.poll_timeout_ms / 1000.0
            while not self._stop.is_set() and (deadline is None or time.monotonic() < deadline):
                self.loop_at = time.monotonic()
                messages = consumer.consume(self.config.max_batch_size, timeout)
                if messages:
                    self._handle(messages)
                self._update_lag()
                self._checkpoint_due()
                producer.poll(0)
            self.ready = False
            log.info("stopping: checkpointing %d partitions", len(self.partitions))
            self._checkpoint(sorted(self.partitions), "shutdown")
        finally:
            self.ready = False
            consumer.close()  # leaves the group; the revocation callback finds nothing dirty
            producer.flush(10)
            self._stop_alerts()

    def topics_needed(self) -> list[str]:
        wanted = [self.input_topic, self.output_topic, self.config.dead_letter_topic]
        return [*wanted, self.config.summaries_topic] if self.config.summaries_topic else wanted

    def _check_topics(self, consumer) -> None:
        from confluent_kafka import KafkaException

        try:
            topics = consumer.list_topics(timeout=15).topics
        except KafkaException as exc:
            raise WorkerError(
                f"cannot reach the Kafka brokers at {self.config.bootstrap_servers} (bootstrap_servers): {exc}"
            ) from None
        missing = [t for t in self.topics_needed() if t not in topics]
        if missing:
            raise WorkerError(
                f"topics {missing} do not exist on {self.config.bootstrap_servers}; create them (docs/kafka.md) "
                "or start once with --create-topics N"
            )

    # -- rebalances -------------------------------------------------------------------------
    def _on_assign(self, consumer, partitions) -> None:
        from confluent_kafka import OFFSET_BEGINNING

        self.metrics.rebalances.labels(event="assign").inc()
        self.ready = False
        try:
            for tp in partitions:
                state = self._restore(tp.partition)
                if self.alerting:  # the levels the engine holds: transitions are found from there
                    self._partition_alerts(tp.partition).tracker.seed(state.engine)
                self.partitions[tp.partition] = state
                tp.offset = state.next_offset if state.next_offset > 0 else OFFSET_BEGINNING
            self._parked.clear()  # partitions not given back went to other members: free their engines
            consumer.assign(partitions)
            log.info(
                "assigned partitions %s",
                {tp.partition: self.partitions[tp.partition].next_offset for tp in partitions},
            )
        finally:
            self.ready = not self._stop.is_set()

    def _restore(self, partition: int) -> PartitionState:
        c = self.config
        offsets = self.store.offsets(self.group, self.input_topic, partition)
        parked = self._parked.pop(partition, None)
        if parked is not None and (not offsets or parked.next_offset >= offsets[0]):
            return parked  # nobody went further while it was away: the state in memory is current
        loaded = self.store.load_newest(
            self.group, self.input_topic, partition, embedder=self._embedder, device=c.engine.device
        )
        if loaded is None:
            return PartitionState(self._new_engine(), 0, 0, checkpointed_at=time.time())
        if loaded.skipped:
            self.metrics.checkpoint_fallbacks.inc(len(loaded.skipped))
        log.info(
            "partition %d: restored the checkpoint at offset %d (%d bytes)", partition, loaded.offset, loaded.nbytes
        )
        return PartitionState(loaded.engine, loaded.offset, loaded.offset, time.time(), loaded.nbytes)

    def _on_revoke(self, consumer, partitions) -> None:
        self.metrics.rebalances.labels(event="revoke").inc()
        owned = [tp.partition for tp in partitions if tp.partition in self.partitions]
        try:
            self._checkpoint(owned, "revoked")
        finally:
            for p in owned:
                self._parked[p] = self.partitions.pop(p)

    def _on_lost(self, consumer, partitions) -> None:
        # the group moved on without us (session timed out): another member may be ahead, so nothing is committed
        self.metrics.rebalances.labels(event="lost").inc()
        for tp in partitions:
            state = self.partitions.pop(tp.partition, None)
            if state is not None:
                self._parked[tp.partition] = state

    # -- alerts ------------------------------------------------------------------------------
    @property
    def alerting(self) -> bool:
        """Alerts are found by the observation workers (the campaign aggregator reads another topic)."""
        return bool(self.config.alert_sinks) and self.input_topic == self.config.observations_topic

    def _alert_folder(self) -> Path:
        return Path(self.config.alert_outbox_dir) / quote(self.group, safe="") / self.input_topic

    def _start_alerts(self) -> None:
        """The delivery loop's thread, then the outbox of every partition this worker held before:
        its undelivered events go out whoever owns the partition now."""
        loop = asyncio.new_event_loop()
        self._alert_thread = threading.Thread(target=loop.run_forever, name="probewatch-worker-alerts", daemon=True)
        self._alert_thread.start()
        self._alert_loop = loop
        folder = self._alert_folder()
        found = (
            sorted(int(m[1]) for d in folder.iterdir() if (m := re.fullmatch(r"p(\d+)", d.name)))
            if folder.is_dir()
            else []
        )
        for partition in found:
            self._partition_alerts(partition)
        log.info("alerts to %s; outboxes in %s", [s.name for s in self.config.alert_sinks], folder)

    def _partition_alerts(self, partition: int) -> AlertPipeline:
        """The partition's outbox, tracker and delivery, opened once and kept until the worker stops."""
        alerts = self._alerts.get(partition)
        if alerts is None:
            if self._alert_loop is None:
                raise WorkerError("alerts are configured but their delivery loop is not running (call run())")
            alerts = AlertPipeline(
                self.config.alert_sinks,
                self._alert_folder() / f"p{partition}",
                self.metrics,
                instance=f"{self.group}/{self.input_topic}/{partition}",  # the same event ids for every owner
            )
            alerts.outbox.open()
            asyncio.run_coroutine_threadsafe(alerts.start(), self._alert_loop).result(30)
            self._alerts[partition] = alerts
        return alerts

    def _stop_alerts(self) -> None:
        """Stop delivering (what is undelivered stays in the outboxes for the next start)."""
        loop, self._alert_loop = self._alert_loop, None
        if loop is None:
            return
        for partition, alerts in sorted(self._alerts.items()):
            try:
                asyncio.run_coroutine_threadsafe(alerts.stop(), loop).result(30)
            except Exception as exc:  # noqa: BLE001 - the others still have to be closed
                log.warning("stopping the alert delivery of partition %d: %s", partition, exc)
            alerts.close()
        self._alerts.clear()
        loop.call_soon_threadsafe(loop.stop)
        if self._alert_thread is not None:
            self._alert_thread.join(10)
        if not loop.is_running():
            loop.close()

    def alert_backlog(self) -> dict[tuple[str, str], tuple[int, float]]:
        """{(sink, kind): (events waiting, age of the oldest)} over every outbox (read by /metrics)."""
        out: dict[tuple[str, str], tuple[int, float]] = {}
        for alerts in list(self._alerts.values()):
            for sink, kind, count, age in alerts.backlog():
                before = out.get((sink, kind), (0, 0.0))
                out[(sink, kind)] = (before[0] + count, max(before[1], age))
        return out

    # -- observing ---------------------------------------------------------------------------
    def _handle(self, messages: Sequence[Any]) -> None:
        by_partition: dict[int, list[_Item]] = {}
        for msg in messages:
            if msg.error():
                log.warning("consumer error: %s", msg.error())
                continue
            p, offset = msg.partition(), msg.offset()
            state = self.partitions.get(p)
            if state is None:  # revoked while this poll was in flight
                continue
            items = by_partition.setdefault(p, [])
            expected = items[-1].offset + 1 if items else state.next_offset
            if offset < expected:  # delivered again after a seek: already in the engine
                self.metrics.messages.labels(outcome="duplicate").inc()
                continue
            if offset > expected and expected > 0:
                log.warning("partition %d: offsets %d..%d are gone from the log (retention?)", p, expected, offset - 1)
            key, value = msg.key(), msg.value()
            try:
                items.append(_Item(offset, key, value, self._parse(key, value)))
            except PoisonMessage as poison:
                items.append(_Item(offset, key, value, None, poison))
        if not by_partition:
            return
        self._embed(by_partition)
        for p, items in by_partition.items():
            self._observe_partition(p, items)
        self.metrics.batch_size.observe(sum(len(items) for items in by_partition.values()))

    def _parse(self, key: bytes | None, value: bytes | None) -> Any:
        """A message's content, or :class:`PoisonMessage`."""
        return parse_observation(
            value,
            dim=self.dim,
            max_bytes=self.config.max_message_bytes,
            max_prompt_chars=self.config.engine.max_prompt_chars,
            key=key,
        )

    def _embed(self, by_partition: dict[int, list[_Item]]) -> None:
        """Every item's vector: the message's own, or the model's for its prompt (one call for
        the poll), which reads the prompt as its partition's engine does (``Engine.read_prompts``)."""
        for p, part in by_partition.items():
            prompted = [it for it in part if it.obs is not None and it.obs.prompt is not None]
            if prompted:
                read = self.partitions[p].engine.read_prompts(
                    [it.obs.account for it in prompted],  # type: ignore[union-attr]
                    [it.obs.prompt for it in prompted],  # type: ignore[union-attr]
                )
                for it, text in zip(prompted, read, strict=True):
                    it.read = text
        items = [item for part in by_partition.values() for item in part]
        with_prompt = [it for it in items if it.obs is not None and it.obs.embedding is None]
        if with_prompt:
            vectors = self.embedder.encode([it.read for it in with_prompt])
            for it, vector in zip(with_prompt, vectors, strict=True):
                it.vector = vector
        for it in items:
            if it.obs is not None and it.obs.embedding is not None:
                it.vector = it.obs.embedding

    def _observe_partition(self, partition: int, items: list[_Item]) -> None:
        """Poison messages to the dead-letter topic, the rest to :meth:`_observe_good`, then
        the partition's next offset moves past the whole poll."""
        state = self.partitions[partition]
        for it in items:
            if it.poison is not None:
                self._dead_letter(partition, it, it.poison)
        good = [it for it in items if it.obs is not None]
        if good:
            self._observe_good(partition, state, good)
        state.next_offset = items[-1].offset + 1
        self.metrics.messages.labels(outcome="observed").inc(len(good))

    def _observe_good(self, partition: int, state: PartitionState, good: list[_Item]) -> None:
        in_housekeeping_chunks(
            state.engine,
            good,
            self.config.housekeeping_every,
            lambda chunk: self._observe_chunk(partition, state.engine, chunk),
        )

    def _observe_chunk(self, partition: int, engine: Engine, items: list[_Item]) -> None:
        obs = [it.obs for it in items]
        evidence = None
        if self.config.summaries_topic:
            from .campaigns import EvidenceTap  # the campaign plumbing imports this module

            evidence = EvidenceTap(engine)
        try:
            verdicts = engine.observe_embeddings(
                [o.account for o in obs],  # type: ignore[union-attr]
                np.stack([it.vector for it in items]),
                [o.ts for o in obs],  # type: ignore[union-attr]
                [o.meta for o in obs],  # type: ignore[union-attr]
                [o.prompt for o in obs],  # type: ignore[union-attr]
                read=[it.read for it in items],
            )
            errors: dict[int, Exception] = {}
        except BatchError as exc:
            verdicts, errors = exc.verdicts, exc.errors
        except InputError as exc:  # a whole-batch refusal: take the items one at a time to find the bad ones
            if len(items) == 1:
                self._dead_letter(partition, items[0], PoisonMessage("rejected", str(exc)))
                return
            for it in items:
                self._observe_chunk(partition, engine, [it])
            return
        finally:
            if evidence is not None:
                evidence.close()
        if evidence is not None:
            from .campaigns import publish_campaign_records

            publish_campaign_records(self, partition, items, verdicts, evidence.values)
        for i, (it, verdict) in enumerate(zip(items, verdicts, strict=True)):
            if verdict is None:
                self._dead_letter(partition, it, PoisonMessage("rejected", str(errors.get(i, "refused by the engine"))))
                continue
            self._produce(
                self.output_topic,
                verdict.account.encode("utf-8"),
                verdict_message(verdict, it.obs, partition, it.offset),  # type: ignore[arg-type]
            )
        alerts = self._alerts.get(partition)
        if alerts is not None:  # before any checkpoint covering these offsets (the poll ends first)
            records = [{"seq": it.offset + 1, "ts": it.obs.ts} for it in items]  # type: ignore[union-attr]
            if alerts.record(engine, verdicts, records):
                alerts.notify()

    def _dead_letter(self, partition: int, item: _Item, poison: PoisonMessage) -> None:
        self.metrics.dead_letters.labels(kind=poison.kind).inc()
        self.metrics.messages.labels(outcome="dead_letter").inc()
        log.warning("partition %d offset %d to the dead-letter topic: %s", partition, item.offset, poison.reason)
        value = dead_letter_message(poison, self.input_topic, partition, item.offset, item.key, item.value)
        key = None if item.key is None else item.key[:MAX_DEAD_LETTER_KEY_BYTES]
        self._produce(self.config.dead_letter_topic, key, value)

    def _produce(self, topic: str, key: bytes | None, value: bytes) -> None:
        while True:
            try:
                self._producer.produce(topic, key=key, value=value, on_delivery=self._delivered)
                return
            except BufferError:  # the local queue is full: serve deliveries, then retry
                self._producer.poll(0.1)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._delivery_errors.append(f"{msg.topic()}: {err}")

    # -- checkpoints and commits --------------------------------------------------------------
    def _update_lag(self) -> None:
        from confluent_kafka import TopicPartition

        for p, state in list(self.partitions.items()):
            tp = TopicPartition(self.input_topic, p)
            try:
                _, high = self._consumer.get_watermark_offsets(tp, cached=True)
            except Exception:  # noqa: BLE001 - a metric must never stop the loop
                continue
            if high >= 0:
                state.lag = max(0, high - state.next_offset)

    def _checkpoint_due(self) -> None:
        now = time.time()
        due = [
            p
            for p, s in self.partitions.items()
            if s.dirty
            and (
                now - s.checkpointed_at >= self.config.checkpoint_interval_s
                or s.next_offset - s.checkpointed_offset >= self.config.checkpoint_every_messages
            )
        ]
        if due:
            self._checkpoint(due, "due")

    def _checkpoint(self, partitions: Sequence[int], why: str) -> None:
        """Checkpoint the dirty ``partitions``, then commit their offsets. Verdicts and dead letters
        of everything checkpointed are acknowledged by the broker first, so a commit never skips them."""
        from confluent_kafka import KafkaException, TopicPartition

        dirty = [p for p in partitions if p in self.partitions and self.partitions[p].dirty]
        if not dirty:
            return
        broken = {p: self._alerts[p].failed for p in dirty if p in self._alerts and self._alerts[p].failed}
        if broken:
            raise WorkerError(
                f"the alert outbox of partitions {sorted(broken)} cannot be written ({next(iter(broken.values()))}); "
                "not checkpointing, so a restart replays those offsets and creates their alerts again"
            )
        left = self._producer.flush(30)
        if left or self._delivery_errors:
            errors, self._delivery_errors = self._delivery_errors, []
            raise WorkerError(
                f"{len(errors)} verdicts or dead letters were refused and {left} not acknowledged; not committing "
                f"(a restart replays from the last checkpoint){': ' + errors[0] if errors else ''}"
            )
        for p in dirty:
            state = self.partitions[p]
            started = time.monotonic()
            state.checkpoint_bytes = self.store.save(self.group, self.input_topic, p, state.next_offset, state.engine)
            state.checkpointed_offset, state.checkpointed_at = state.next_offset, time.time()
            self.metrics.checkpoint_seconds.observe(time.monotonic() - started)
            self.metrics.checkpoints.labels(trigger=why).inc()
        offsets = [TopicPartition(self.input_topic, p, self.partitions[p].next_offset) for p in dirty]
        try:
            self._consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as exc:  # the checkpoint is what a new owner starts from; the commit is for lag tools
            self.metrics.commit_failures.inc()
            log.warning(
                "commit of %s failed after the checkpoint: %s",
                {p: o.offset for p, o in zip(dirty, offsets, strict=True)},
                exc,
            )
            return
        log.debug("checkpointed and committed %s (%s)", {tp.partition: tp.offset for tp in offsets}, why)


def in_housekeeping_chunks(
    engine: Engine, items: list, housekeeping_every: int, observe: Callable[[list], None]
) -> None:
    """Call ``observe`` on consecutive chunks of ``items`` cut at the engine's housekeeping points:
    every ``housekeeping_every`` observations the memory budget is enforced (only there: auto_evict is
    off in between), and every ``population_update_every`` a population refit may fall. The points
    are observation counts of the engine, so any split of a partition's stream into polls gives the
    same evictions and refits at the same queries."""
    start = 0
    while start < len(items):
        done = engine.pipeline.observations
        step = housekeeping_every - done % housekeeping_every
        every = engine.config.population_update_every
        if every:
            step = min(step, every - done % every)
        take = min(len(items) - start, step)
        engine.auto_evict = take == step and (done + take) % housekeeping_every == 0
        observe(items[start : start + take])
        start += take
