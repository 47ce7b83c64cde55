"""The sidecar in Kafka mode (``probewatch serve --kafka``): publish, then answer from the verdicts topics.

:class:`KafkaObservationService` stands in for :class:`~probewatch.serve.service.ObservationService`
behind the same routes. ``POST /v1/observe`` checks each item as always, publishes it with a
:class:`~probewatch.stream.Publisher` (key = account, a fresh ``request_id``) and waits for the
broker's acknowledgement, then up to ``kafka_verdict_wait_ms`` for the worker's verdict of that
request id (read by a :class:`~probewatch.stream.VerdictCache`). Past that wait the answer is the
account's latest cached verdict with ``pending: true`` (as of its earlier queries; ``n_queries``
says which), or level ``unknown`` for an account no verdict was seen for. The guardrail route does
the same with ``kafka_guardrail_wait_ms`` (default 0: the cached level at once, no added latency).

The workers own the state: there is no engine, journal or snapshot here, and the account and
campaign routes answer 501. ``/readyz`` is 200 while the producer reaches the brokers with the
observations topic present and the cache is assigned every partition of the verdict topics.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..errors import InputError
from ..serve.config import ServerConfig
from ..serve.http import RequestError, error_document
from ..serve.metrics import LATENCY_BUCKETS, ServerMetrics
from ..serve.service import Item, ObservationService, Outcome, unknown_verdict
from .schema import PoisonMessage

log = logging.getLogger("probewatch.serve")

RETRY_CONNECT_S = 5.0  # between attempts to reach the brokers at start
HEALTH_EVERY_S = 5.0  # a metadata request to the brokers this often decides /readyz afterwards
router = APIRouter(include_in_schema=False)  # its /readyz replaces the local one in Kafka mode


class _KafkaGauges(Collector):
    def __init__(self, service: KafkaObservationService):
        self._service = service

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        s = self._service
        yield GaugeMetricFamily(
            "probewatch_kafka_connected", "1 while the brokers answer the sidecar's producer", value=float(s.connected)
        )
        yield GaugeMetricFamily(
            "probewatch_kafka_cached_accounts",
            "Accounts whose latest verdict the sidecar's verdict cache holds",
            value=float(len(s.cache)) if s.cache is not None else 0.0,
        )


class KafkaObservationService:
    """The routes' service in Kafka mode (the attributes and methods they use, same meaning)."""

    engine = None
    alerts = None

    def __init__(self, config: ServerConfig):
        self.config = config
        self.ready = False
        self.connected = False
        self.load_error: str | None = None
        self.publisher: Any = None
        self.cache: Any = None
        self._in_flight = 0
        self._closing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connector: asyncio.Task | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.metrics = ServerMetrics(
            lambda: None,
            lambda: self._in_flight,
            read_ready=lambda: self.ready,
            queue_capacity=config.queue_capacity,
        )
        r = self.metrics.registry
        self.answers = Counter(
            "probewatch_kafka_answers",
            "Kafka-mode verdicts by what they are: this_request (the worker's verdict of this item), cached (the "
            "account's latest, pending: true), none (no verdict seen for the account yet, pending: true)",
            ("source",),
            registry=r,
        )
        self.verdict_wait = Histogram(
            "probewatch_kafka_verdict_wait_seconds",
            "Publish to this request's verdict in the cache, for the answers that got it within the wait",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.publish_failures = Counter(
            "probewatch_kafka_publish_failures",
            "Observations the brokers refused or the local producer queue had no room for",
            registry=r,
        )
        r.register(_KafkaGauges(self))

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._connector = asyncio.create_task(self._connect_until_up(), name="probewatch-kafka-connect")

    async def _connect_until_up(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            try:
                await loop.run_in_executor(None, self._connect)
            except Exception as exc:  # noqa: BLE001 - reported by /readyz and the log; tried again
                self.load_error = f"{exc}; retrying every {RETRY_CONNECT_S:g} s"
                log.warning("Kafka mode not ready: %s", self.load_error)
                await asyncio.sleep(RETRY_CONNECT_S)
                continue
            self.connected = self.ready = True
            self.load_error = None
            self._poller = threading.Thread(target=self._poll, name="probewatch-kafka-producer", daemon=True)
            self._poller.start()
            log.info(
                "Kafka mode ready: publishing to %s on %s, answering from %s (%d partitions)",
                self.config.observations_topic,
                self.config.bootstrap_servers,
                self.config.verdicts_topic,
                self.cache.partitions,
            )
            return

    def _connect(self) -> None:
        """Producer and verdict cache, or an exception saying what is missing (and nothing left open)."""
        from confluent_kafka import KafkaException

        from .cache import VerdictCache
        from .publisher import Publisher

        c = self.config
        if self.publisher is None:  # one producer for every attempt: it keeps reconnecting, with backoff
            self.publisher = Publisher(
                c.bootstrap_servers,
                c.observations_topic,
                max_prompt_chars=c.engine.max_prompt_chars,
                kafka={"linger.ms": "1", **c.kafka},
            )
        publisher = self.publisher
        try:
            topics = publisher.list_topics(c.kafka_connect_timeout_s).topics
        except KafkaException as exc:
            raise ConnectionError(
                f"cannot reach the Kafka brokers at {c.bootstrap_servers} (bootstrap_servers) within "
                f"{c.kafka_connect_timeout_s:g} s: {exc.args[0].str() if exc.args else exc}"
            ) from None
        missing = [t for t in self._topics() if t not in topics]
        if missing:
            raise ConnectionError(
                f"topics {missing} do not exist on {c.bootstrap_servers}; create them (a worker started with "
                "--create-topics N does; docs/kafka.md)"
            )
        # it subscribes before it publishes: the bodies of requests nobody here waits for
        # (other sidecars', answered ones) are not kept
        self.cache = VerdictCache(
            c.bootstrap_servers, c.verdicts_topic, c.campaign_verdicts_topic, kafka=dict(c.kafka), keep_unclaimed_s=0
        ).start(c.kafka_connect_timeout_s)

    def _topics(self) -> list[str]:
        c = self.config
        return [t for t in (c.observations_topic, c.verdicts_topic, c.campaign_verdicts_topic) if t is not None]

    def _poll(self) -> None:
        """Serve delivery callbacks; every HEALTH_EVERY_S ask the brokers for metadata to keep /readyz true."""
        from confluent_kafka import KafkaException

        publisher, cache = self.publisher, self.cache  # stop() clears the attributes after this thread ends
        checked = time.monotonic()
        while not self._stop.is_set():
            publisher.poll(0.05)
            if time.monotonic() - checked < HEALTH_EVERY_S:
                continue
            checked = time.monotonic()
            try:
                topics = publisher.list_topics(min(HEALTH_EVERY_S, self.config.kafka_connect_timeout_s)).topics
                self.connected = True
                problem = None if cache.alive else "the verdict cache stopped reading; restart the sidecar"
                gone = [t for t in self._topics() if t not in topics]
                if gone:  # deleted under it: what it publishes would reach no worker
                    problem = (
                        f"topics {gone} no longer exist on {self.config.bootstrap_servers}; create them again "
                        "(a worker started with --create-topics N does), and restart the sidecar if a verdicts "
                        "topic was among them, so that its cache reads the new one from the start"
                    )
            except KafkaException as exc:
                self.connected = False
                problem = f"lost the Kafka brokers at {self.config.bootstrap_servers}: {exc}; retrying"
            if problem is not None and self.ready:
                log.error("Kafka mode no longer ready: %s", problem)
            elif problem is None and not self.ready:
                log.info("Kafka mode ready again: the brokers answer")
            self.load_error, self.ready = problem, problem is None and not self._closing

    def stopping(self) -> None:
        """The process is shutting down (the connector stops at :meth:`stop`)."""
        self._closing = True

    async def stop(self) -> None:
        """Wait for the acknowledgement of what was published (up to ``shutdown_drain_s``), close both clients."""
        self._closing = True
        self.ready = False
        if self._connector is not None:
            self._connector.cancel()
            await asyncio.gather(self._connector, return_exceptions=True)
        self._stop.set()
        if self._poller is not None:
            self._poller.join(5)
        await asyncio.get_running_loop().run_in_executor(None, self._close_clients)

    def _close_clients(self) -> None:
        publisher, cache, self.publisher, self.cache = self.publisher, self.cache, None, None
        if publisher is not None:
            try:
                publisher.flush(self.config.shutdown_drain_s)
            except Exception as exc:  # noqa: BLE001 - closing: say what was not acknowledged
                log.warning("at shutdown: %s", exc)
        if cache is not None:
            cache.close()

    # -- observing ------------------------------------------------------------------------------
    def prepare_item(
        self, raw_account: Any, raw_prompt: Any, raw_ts: Any, received_at: float, raw_meta: Any = None
    ) -> Item:
        """The same checks and prompt-size rule as the local sidecar's."""
        return ObservationService.prepare_item(self, raw_account, raw_prompt, raw_ts, received_at, raw_meta)  # type: ignore[arg-type]

    def has_room(self, n_items: int, reserved: bool = False) -> bool:
        """Items published and not answered yet count against ``queue_capacity`` (+ the guardrail's reserve)."""
        capacity = self.config.queue_capacity + (self.config.guardrail_reserved_capacity if reserved else 0)
        return self._in_flight + n_items <= capacity

    async def observe(self, items: list[Item], reserved: bool = False) -> list[Outcome]:
        """Publish ``items``; answer each with its own verdict when it comes within the wait, else the
        account's cached one marked ``pending``. ``reserved``: the guardrail route and its wait."""
        from confluent_kafka import KafkaException

        if not self.ready or self._closing:
            return [self._fallback(it, "not_ready", queued=False) for it in items]
        if not self.has_room(len(items), reserved):
            return [self._fallback(it, "overloaded", queued=False) for it in items]
        loop = asyncio.get_running_loop()
        config = self.config
        wait_s = (config.kafka_guardrail_wait_ms if reserved else config.kafka_verdict_wait_ms) / 1000.0
        started = loop.time()
        deadline = started + config.request_deadline_ms / 1000.0
        publisher, cache = self.publisher, self.cache
        acks: list[asyncio.Future] = []
        verdicts: list[asyncio.Future | None] = []
        request_ids: list[str] = []
        rejected: dict[int, InputError] = {}
        self._in_flight += len(items)
        try:
            for i, it in enumerate(items):
                request_id = uuid.uuid4().hex
                request_ids.append(request_id)
                ack, verdict = loop.create_future(), loop.create_future() if wait_s > 0 else None
                acks.append(ack)
                verdicts.append(verdict)
                if verdict is not None:
                    early = cache.subscribe(request_id, _resolver(loop, verdict))
                    if early is not None:
                        verdict.set_result((early, loop.time()))
                try:
                    publisher.publish(
                        it.account,
                        it.ts,
                        prompt=it.prompt,
                        request_id=request_id,
                        meta=it.meta,
                        on_delivery=_ack_resolver(loop, ack),
                        block=False,
                    )
                except BufferError:
                    ack.set_result("the producer's local queue is full")
                except PoisonMessage as exc:  # the sidecar's checks passed it: a rule only the schema has
                    rejected[i] = InputError(exc.reason)
                    ack.set_result(exc.reason)
                except KafkaException as exc:  # refused at produce(): this item alone is not published
                    ack.set_result(f"the producer refused the record: {exc}")
            await asyncio.wait(acks, timeout=max(0.0, deadline - loop.time()))
            pending_verdicts = [v for v, a in zip(verdicts, acks, strict=True) if v is not None and _acked(a)]
            if pending_verdicts:
                left = min(started + wait_s, deadline) - loop.time()
                if left > 0:
                    await asyncio.wait(pending_verdicts, timeout=left)
            outcomes = []
            for i, it in enumerate(items):
                ack, verdict = acks[i], verdicts[i]
                if verdict is not None and not verdict.done():
                    cache.unsubscribe(request_ids[i])
                if i in rejected:
                    outcomes.append(Outcome(error=rejected[i], truncated=it.truncated))
                elif not ack.done():  # still in the producer's queue: delivered unless the brokers stay away
                    outcomes.append(self._fallback(it, "deadline", queued=True))
                elif ack.result() is not None:
                    self.publish_failures.inc()
                    outcome = self._fallback(it, "publish_failed", queued=False)
                    outcome.extra["detail"] = str(ack.result())
                    outcomes.append(outcome)
                elif verdict is not None and verdict.done():
                    self.answers.labels("this_request").inc()
                    body, arrived_at = verdict.result()
                    self.verdict_wait.observe(arrived_at - started)
                    body = cache.with_campaign(body) if cache is not None else body
                    outcomes.append(self._answer(body, it, pending=False))
                else:
                    body = cache.get(it.account) if cache is not None else None
                    self.answers.labels("cached" if body is not None else "none").inc()
                    outcomes.append(self._answer(body, it, pending=True))
            return outcomes
        finally:
            self._in_flight -= len(items)

    def _answer(self, body: dict[str, Any] | None, item: Item, pending: bool) -> Outcome:
        verdict = dict(body["verdict"]) if body is not None else unknown_verdict(item.account)
        if body is not None and "campaign" in body and verdict.get("campaign") is None:
            verdict["campaign"] = body["campaign"]
        return Outcome(verdict=verdict, queued=True, truncated=item.truncated, extra={"pending": pending})

    def _fallback(self, item: Item, cause: str, queued: bool) -> Outcome:
        self.metrics.fallbacks.labels(cause).inc()
        verdict = unknown_verdict(item.account, flagged=self.config.failure_policy == "closed")
        return Outcome(verdict=verdict, fallback=cause, queued=queued, truncated=item.truncated)

    # -- what needs a local engine -------------------------------------------------------------
    def _no_local_state(self, what: str) -> RequestError:
        return RequestError(
            501,
            "NotInKafkaMode",
            f"{what} needs the account state, which the Kafka workers hold in this mode (kafka_mode); read "
            f"verdicts from the {self.config.verdicts_topic} topic or run a local sidecar (docs/kafka.md)",
        )

    async def report(self, account: str) -> dict[str, Any]:
        raise self._no_local_state("an account report")

    async def standing_level(self, account: str) -> str | None:
        """The account's level in the verdict cache (its campaign's when higher); None for one it has not seen."""
        cache = self.cache
        body = cache.get(account) if cache is not None else None
        return None if body is None else body["verdict"]["level"]

    async def accounts(self, level: str | None) -> list[str]:
        raise self._no_local_state("listing accounts")

    async def forget(self, account: str) -> bool:
        raise self._no_local_state("forgetting an account")

    async def mark_benign(self, account: str) -> bool:
        raise self._no_local_state("marking an account benign")

    async def campaign(self, campaign_id: str) -> dict[str, Any]:
        raise self._no_local_state("a campaign report")

    async def campaign_page(self, level: str | None, after: str | None, size: int) -> tuple[list, str | None]:
        raise self._no_local_state("listing campaigns")


def _resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future):
    """The cache's callback: settles ``future`` with (verdict body, loop time it came)."""

    def resolve(body: dict[str, Any]) -> None:  # the cache's thread
        loop.call_soon_threadsafe(lambda: _settle(future, (body, loop.time())))

    return resolve


def _ack_resolver(loop: asyncio.AbstractEventLoop, future: asyncio.Future):
    def delivered(err, _msg) -> None:  # the producer's poll thread
        loop.call_soon_threadsafe(_settle, future, None if err is None else str(err))

    return delivered


def _settle(future: asyncio.Future, value: Any) -> None:
    if not future.done():
        future.set_result(value)


def _acked(future: asyncio.Future) -> bool:
    return future.done() and future.result() is None


@router.get("/readyz", response_model=None)
async def readyz(request: Request) -> dict[str, Any] | JSONResponse:
    """Kafka mode's readiness: the producer reaches the brokers (the observations topic exists) and the
    verdict cache is assigned every partition of the verdict topics."""
    service: KafkaObservationService = request.app.state.service
    if service.ready:
        return {
            "status": "ready",
            "mode": "kafka",
            "bootstrap_servers": service.config.bootstrap_servers,
            "observations_topic": service.config.observations_topic,
            "verdict_partitions": service.cache.partitions,
            "cached_accounts": len(service.cache),
        }
    status = "failed" if service.load_error else "loading"
    message = service.load_error or "connecting to the Kafka brokers; retry shortly"
    return JSONResponse({"status": status, "mode": "kafka", **error_document("NotReady", message)}, status_code=503)
