"""Creating the worker's topics (``probewatch worker --create-topics N``; tests and the compose file use it)."""

from __future__ import annotations

from .config import WorkerConfig


def create_topics(config: WorkerConfig, partitions: int, replication: int = 1, timeout: float = 30.0) -> list[str]:
    """Create the topics of ``config`` that do not exist yet; returns those created. Observations and
    dead letters get ``partitions``; verdicts too, compacted (the latest verdict per account);
    summaries one partition (the campaign aggregator reads them all, in order), campaign verdicts
    one, compacted."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient, NewTopic

    if partitions < 1:
        raise ValueError(f"partitions must be >= 1; got {partitions}")
    admin = AdminClient({"bootstrap.servers": config.bootstrap_servers, **config.kafka})
    try:
        existing = set(admin.list_topics(timeout=timeout).topics)
    except KafkaException as exc:
        raise ConnectionError(
            f"cannot create topics: no Kafka broker at {config.bootstrap_servers} (bootstrap_servers) answered within "
            f"{timeout:g} s: {exc.args[0].str() if exc.args else exc}"
        ) from None
    wanted = [
        NewTopic(config.observations_topic, partitions, replication),
        NewTopic(config.verdicts_topic, partitions, replication, config={"cleanup.policy": "compact"}),
        NewTopic(config.dead_letter_topic, partitions, replication),
    ]
    if config.summaries_topic:
        wanted.append(NewTopic(config.summaries_topic, 1, replication))
        wanted.append(NewTopic(config.campaign_verdicts_topic, 1, replication, config={"cleanup.policy": "compact"}))
    new = [t for t in wanted if t.topic not in existing]
    if not new:
        return []
    for future in admin.create_topics(new, operation_timeout=timeout).values():
        future.result(timeout)
    return [t.topic for t in new]
