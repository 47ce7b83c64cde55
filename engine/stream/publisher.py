"""Publishing observations: :class:`Publisher` checks each one and produces it keyed by account."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..errors import ProbewatchError
from .schema import PoisonMessage, observation

# murmur2 is the Java client's partitioner: records keyed by one account land on the same
# partition whichever client (Java, Go, librdkafka) produced them
PRODUCER_DEFAULTS = {"partitioner": "murmur2_random", "acks": "all", "linger.ms": "5"}
DEFAULT_MESSAGE_MAX_BYTES = 1_000_000  # librdkafka's message.max.bytes


class PublishError(ProbewatchError):
    """Observations the broker did not acknowledge (the client's error for each)."""


class Publisher:
    """Produces observations to the observations topic, key = account id.

    >>> pub = Publisher("kafka:9092")                       # doctest: +SKIP
    >>> pub.publish("acct-1", ts=time.time(), prompt="hi")  # doctest: +SKIP
    >>> pub.flush()                                         # doctest: +SKIP

    Bad input raises at once (:class:`~probewatch.stream.schema.PoisonMessage`, what was expected
    and what came); broker failures are collected and raised by :meth:`flush` as :class:`PublishError`.
    """

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str = "probewatch.observations",
        *,
        dim: int | None = None,
        max_prompt_chars: int = 16_384,
        kafka: Mapping[str, Any] | None = None,
        binary_embeddings: bool = False,
    ):
        from confluent_kafka import Producer  # the kafka extra

        self.topic = topic
        self.dim = dim
        self.max_prompt_chars = max_prompt_chars
        self.binary_embeddings = binary_embeddings  # embedding_b64: a fraction of the JSON list's decoding cost
        self._failed: list[str] = []
        self._refused = 0
        settings = {**PRODUCER_DEFAULTS, **{k: str(v) for k, v in (kafka or {}).items()}}
        self._producer = Producer({**settings, "bootstrap.servers": bootstrap_servers})
        # librdkafka refuses a bigger record at produce(); said per observation, before it
        self.max_message_bytes = int(settings.get("message.max.bytes", DEFAULT_MESSAGE_MAX_BYTES))

    def publish(
        self,
        account: str,
        ts: float,
        *,
        prompt: str | None = None,
        embedding: Any = None,
        request_id: str | None = None,
        meta: dict[str, str] | None = None,
        on_delivery: Callable[[Any, Any], None] | None = None,
        block: bool = True,
    ) -> None:
        """Produce one observation. ``on_delivery(err, msg)`` is called (from :meth:`poll` or
        :meth:`flush`) once the broker acknowledged it or gave up; with ``block=False`` a full
        local queue raises :class:`BufferError` instead of waiting for room."""
        obs = observation(
            account,
            ts,
            prompt=prompt,
            embedding=embedding,
            request_id=request_id,
            meta=meta,
            dim=self.dim,
            max_prompt_chars=self.max_prompt_chars,
        )
        key, value = obs.account.encode("utf-8"), obs.to_json(self.binary_embeddings)
        size = len(key) + len(value)
        if size > self.max_message_bytes:
            raise PoisonMessage(
                "too_large",
                f"the observation is {size:,} bytes as a Kafka record (its prompt is {len(obs.prompt or ''):,} "
                f"characters, written as JSON escapes); the producer's message.max.bytes is "
                f"{self.max_message_bytes:,}: send a shorter prompt (max_prompt_chars) or raise message.max.bytes "
                "(with the topic's max.message.bytes)",
            )
        self.produce_raw(key, value, on_delivery, block)

    def produce_raw(
        self,
        key: bytes | None,
        value: bytes | None,
        on_delivery: Callable[[Any, Any], None] | None = None,
        block: bool = True,
    ) -> None:
        """Produce bytes as they are (tests use it for malformed messages)."""

        def delivered(err, msg) -> None:
            self._delivered(err, msg)
            if on_delivery is not None:
                on_delivery(err, msg)

        while True:
            try:
                self._producer.produce(self.topic, key=key, value=value, on_delivery=delivered)
                break
            except BufferError:  # the local queue is full: let deliveries drain it
                if not block:
                    raise
                self._producer.poll(0.1)
        if block:
            self._producer.poll(0)

    def poll(self, timeout: float = 0.0) -> int:
        """Serve delivery callbacks (a front end calls it from a thread of its own)."""
        return self._producer.poll(timeout)

    def list_topics(self, timeout: float) -> Any:
        """The cluster's metadata (``confluent_kafka.admin.ClusterMetadata``); KafkaException when no broker answers."""
        return self._producer.list_topics(timeout=timeout)

    def _delivered(self, err, msg) -> None:
        if err is not None:
            self._refused += 1
            if len(self._failed) < 100:  # a long-lived publisher (the sidecar) keeps a sample, not every one
                self._failed.append(f"{msg.key()!r}: {err}")

    def flush(self, timeout: float = 30.0) -> None:
        """Wait until every observation is acknowledged; :class:`PublishError` for those that were not."""
        left = self._producer.flush(timeout)
        failed, self._failed = self._failed, []
        refused, self._refused = self._refused, 0
        if left or refused:
            raise PublishError(
                f"{refused} observations were refused and {left} not acknowledged within {timeout}s"
                + (f"; first: {failed[0]}" if failed else "")
            )

    def close(self) -> None:
        self.flush()

    def __enter__(self) -> Publisher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
