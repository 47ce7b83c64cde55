"""A local, always-current view of the verdicts topics: the latest verdict of each account.

What a front end (a sidecar in Kafka mode, a gateway) answers from: it publishes an observation
with :class:`~probewatch.stream.Publisher` and either answers at once from :meth:`VerdictCache.get`
(the account's verdict as of its previous queries: no added latency, one query behind) or waits
for this request's own verdict with :meth:`VerdictCache.wait_for` (produce → worker → verdict,
docs/kafka.md gives the measured latency).

The cache reads every partition of the verdicts topic (and, when given, the campaign verdicts
topic) from the beginning with no consumer group and no commits. A replay after a worker crash
produces some verdicts again; an account's entry only moves forward (by ``n_queries``), so a
reader never sees it go back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

from ..types import Level

_RANK = {level.value: i for i, level in enumerate((Level.OK, Level.WATCH, Level.FLAG))}


class VerdictCache:
    def __init__(
        self,
        bootstrap_servers: str,
        verdicts_topic: str = "probewatch.verdicts",
        campaign_verdicts_topic: str | None = None,
        *,
        kafka: dict[str, str] | None = None,
        max_waiting_requests: int = 100_000,
    ):
        from confluent_kafka import Consumer  # the kafka extra

        self._topics = [t for t in (verdicts_topic, campaign_verdicts_topic) if t]
        self.verdicts_topic = verdicts_topic
        self._consumer = Consumer(
            {
                "group.id": "probewatch-verdict-cache",  # never joins: partitions are assigned by hand
                "enable.auto.commit": "false",
                "fetch.wait.max.ms": "10",
                **(kafka or {}),
                "bootstrap.servers": bootstrap_servers,
            }
        )
        self._latest: dict[str, dict[str, Any]] = {}
        self._campaign: dict[str, dict[str, Any]] = {}
        self._by_request: dict[str, dict[str, Any]] = {}
        self._waiters: dict[str, Callable[[dict[str, Any]], None]] = {}  # request id -> called with its verdict
        self.partitions = 0  # assigned at start(): every partition of the verdict topics
        self._max_waiting = max_waiting_requests
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    def start(self, timeout: float = 15.0) -> VerdictCache:
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        metadata = self._consumer.list_topics(timeout=timeout).topics
        missing = [t for t in self._topics if t not in metadata]
        if missing:
            raise ValueError(f"verdict topics {missing} do not exist; expected the worker's topics (docs/kafka.md)")
        assignment = [TopicPartition(t, p, OFFSET_BEGINNING) for t in self._topics for p in metadata[t].partitions]
        self._consumer.assign(assignment)
        self.partitions = len(assignment)
        self._thread = threading.Thread(target=self._run, name="probewatch-verdict-cache", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            messages = self._consumer.consume(500, 0.1)
            if not messages:
                continue
            with self._changed:
                for msg in messages:
                    if msg.error():
                        self.errors += 1
                        continue
                    try:
                        body = json.loads(msg.value())
                    except (TypeError, ValueError):
                        self.errors += 1
                        continue
                    if msg.topic() == self.verdicts_topic:
                        self._take_verdict(body)
                    else:
                        self._campaign[body["account"]] = body
                self._changed.notify_all()

    def _take_verdict(self, body: dict[str, Any]) -> None:
        account = body["account"]
        held = self._latest.get(account)
        if held is None or body["verdict"]["n_queries"] >= held["verdict"]["n_queries"]:
            self._latest[account] = body
        request_id = body.get("request_id")
        if request_id is not None:
            waiter = self._waiters.pop(request_id, None)
            if waiter is not None:
                waiter(body)
                return
            if len(self._by_request) >= self._max_waiting:  # oldest first: nobody waits that long
                self._by_request.pop(next(iter(self._by_request)))
            self._by_request[request_id] = body

    def get(self, account: str) -> dict[str, Any] | None:
        """The account's latest verdict body (``verdict`` as ``Verdict.to_dict()``), its level raised
        to its campaign verdict's level when that is higher; None for an account not seen yet."""
        with self._changed:
            body = self._latest.get(account)
        return None if body is None else self.with_campaign(body)

    def with_campaign(self, body: dict[str, Any]) -> dict[str, Any]:
        """``body`` with its level raised to the account's campaign verdict level when that is higher."""
        with self._changed:
            campaign = self._campaign.get(body["account"])
        if campaign is not None and _RANK[campaign["level"]] > _RANK[body["verdict"]["level"]]:
            verdict = {**body["verdict"], "level": campaign["level"], "flagged": campaign["level"] == "flag"}
            body = {**body, "verdict": verdict, "campaign": campaign["campaign"]}
        return body

    def wait_for(self, request_id: str, timeout: float) -> dict[str, Any] | None:
        """The verdict of the observation published with ``request_id``; None after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while request_id not in self._by_request:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._changed.wait(left)
            return self._by_request.pop(request_id)

    def subscribe(self, request_id: str, callback: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Have ``callback(body)`` called from the cache's thread when the verdict of ``request_id``
        comes (for an event loop: hand it on with ``call_soon_threadsafe``); returns the body at once,
        without subscribing, when it is already here. Subscribe before publishing, and
        :meth:`unsubscribe` after giving up."""
        with self._changed:
            body = self._by_request.pop(request_id, None)
            if body is None:
                self._waiters[request_id] = callback
            return body

    def unsubscribe(self, request_id: str) -> None:
        with self._changed:
            self._waiters.pop(request_id, None)

    @property
    def alive(self) -> bool:
        """Whether the reading thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def __len__(self) -> int:
        return len(self._latest)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._consumer.close()
