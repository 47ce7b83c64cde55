"""A local, always-current view of the verdicts topics: the latest verdict of each account.

What a front end (a sidecar in Kafka mode, a gateway) answers from: it publishes an observation
with :class:`~probewatch.stream.Publisher` and either answers at once from :meth:`VerdictCache.get`
(the account's verdict as of its previous queries: no added latency, one query behind) or waits
for this request's own verdict with :meth:`VerdictCache.wait_for` (produce → worker → verdict,
docs/kafka.md gives the measured latency).

The cache reads every partition of the verdicts topic (and, when given, the campaign verdicts
topic) from the beginning with no consumer group and no commits. A replay after a worker crash
produces some verdicts again; an account's entry only moves forward, by the offset of the
observation it judged (its ``n_queries`` restarts at 1 when a worker evicts the account or it
is forgotten, so ``n_queries`` cannot order it), so a reader never sees it go back.

A record that is not a verdict (another producer's, a hand-written one) is counted in
``errors`` and skipped: it must not stop the reading thread, since every restart would read
it again from the compacted topic.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..types import Level

_RANK = {level.value: i for i, level in enumerate((Level.OK, Level.WATCH, Level.FLAG))}
log = logging.getLogger("probewatch.stream.cache")


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _verdict_problem(body: Any) -> str | None:
    """Why a verdicts-topic record is not a verdict the cache can hold, or None."""
    if not isinstance(body, dict):
        return f"a JSON {type(body).__name__}, not an object"
    if not isinstance(body.get("account"), str):
        return "no account id (text)"
    verdict = body.get("verdict")
    if not isinstance(verdict, dict) or verdict.get("level") not in _RANK or not _whole(verdict.get("n_queries")):
        return "no verdict object with a level and n_queries"
    if not isinstance(body.get("request_id"), str | None):
        return "a request_id that is not text"
    return None


def _campaign_problem(body: Any) -> str | None:
    """Why a campaign-verdicts record is not one the cache can hold, or None."""
    if not isinstance(body, dict):
        return f"a JSON {type(body).__name__}, not an object"
    if not isinstance(body.get("account"), str) or body.get("level") not in _RANK:
        return "no account id (text) and level"
    if not isinstance(body.get("campaign"), dict | None):
        return "a campaign that is not an object"
    return None


def _later(body: dict[str, Any], held: dict[str, Any] | None) -> bool:
    """Whether ``body`` judges a later observation of its account than ``held`` (or the same one)."""
    if held is None:
        return True
    where, held_where = (body.get("partition"), body.get("offset")), (held.get("partition"), held.get("offset"))
    if all(_whole(x) for x in (*where, *held_where)):
        if where[0] == held_where[0]:  # an account's observations are in one partition, in order
            return where[1] >= held_where[1]
        return True  # the topic was repartitioned: the account's records moved, take the newest
    return body["verdict"]["n_queries"] >= held["verdict"]["n_queries"]  # records without offsets


class VerdictCache:
    def __init__(
        self,
        bootstrap_servers: str,
        verdicts_topic: str = "probewatch.verdicts",
        campaign_verdicts_topic: str | None = None,
        *,
        kafka: dict[str, str] | None = None,
        max_waiting_requests: int = 100_000,
        keep_unclaimed_s: float = 30.0,
    ):
        """``keep_unclaimed_s``: how long the verdict of a request nobody waits for yet is kept
        for a later :meth:`wait_for` (at most ``max_waiting_requests`` of them). Every request of
        every publisher of the topic arrives here: a reader that subscribes before it publishes
        (the sidecar) passes 0 and keeps none."""
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
        self._by_request: dict[str, tuple[float, dict[str, Any]]] = {}  # request id -> (arrived, body)
        self._keep_unclaimed_s = keep_unclaimed_s
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
                        self._take(msg.topic(), json.loads(msg.value()))
                    except (TypeError, ValueError, RecursionError) as exc:
                        self._skip(msg, f"not JSON ({type(exc).__name__})")
                    except Exception as exc:  # noqa: BLE001 - one record must not stop the reader
                        self._skip(msg, f"{type(exc).__name__}: {exc}")
                self._changed.notify_all()

    def _skip(self, msg: Any, why: str) -> None:
        self.errors += 1
        if self.errors <= 10 or self.errors % 1000 == 0:  # a flood of them must not flood the log
            log.warning(
                "skipped the record at %s[%s]@%s: %s (%d skipped so far)",
                msg.topic(),
                msg.partition(),
                msg.offset(),
                why,
                self.errors,
            )

    def _take(self, topic: str, body: Any) -> None:
        if topic == self.verdicts_topic:
            problem = _verdict_problem(body)
            if problem is None:
                self._take_verdict(body)
                return
        else:
            problem = _campaign_problem(body)
            if problem is None:
                self._campaign[body["account"]] = body
                return
        raise ValueError(f"not a verdict: {problem}")

    def _take_verdict(self, body: dict[str, Any]) -> None:
        account = body["account"]
        if _later(body, self._latest.get(account)):
            self._latest[account] = body
        request_id = body.get("request_id")
        if request_id is not None:
            waiter = self._waiters.pop(request_id, None)
            if waiter is not None:
                try:
                    waiter(body)
                except Exception:  # a waiter's failure is its own (a closed event loop)
                    log.exception("a verdict waiter failed for request %s", request_id)
                return
            if self._keep_unclaimed_s <= 0:
                return
            now = time.monotonic()
            kept = self._by_request
            while kept and (
                len(kept) >= self._max_waiting or now - next(iter(kept.values()))[0] > self._keep_unclaimed_s
            ):
                kept.pop(next(iter(kept)))  # oldest first: nobody waits that long
            kept[request_id] = (now, body)

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
            return self._by_request.pop(request_id)[1]

    def subscribe(self, request_id: str, callback: Callable[[dict[str, Any]], None]) -> dict[str, Any] | None:
        """Have ``callback(body)`` called from the cache's thread when the verdict of ``request_id``
        comes (for an event loop: hand it on with ``call_soon_threadsafe``); returns the body at once,
        without subscribing, when it is already here. Subscribe before publishing, and
        :meth:`unsubscribe` after giving up."""
        with self._changed:
            kept = self._by_request.pop(request_id, None)
            if kept is None:
                self._waiters[request_id] = callback
                return None
            return kept[1]

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
