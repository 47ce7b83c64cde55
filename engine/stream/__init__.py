"""probewatch.stream: scale out on Kafka (``probewatch worker``; docs/kafka.md). Needs the ``kafka`` extra.

- :mod:`.schema`: the JSON messages (observations, verdicts, dead letters), version 1, checked.
- :class:`Publisher`: produces observations keyed by account.
- :class:`Worker`: a consumer-group member with an engine per assigned partition, checkpoints
  (:mod:`.checkpoints`) tagged with the partition's next offset, commits after them.
- :mod:`.campaigns`: per-query campaign records and the cross-partition campaign aggregator.
- :class:`VerdictCache`: a front end's local view of the verdicts topics (latest verdict per account).
- :mod:`.frontend`: the sidecar's Kafka mode (``probewatch serve --kafka``), built on both.
- :mod:`.config` (``WorkerConfig``, same YAML/env/flags as the sidecar), :mod:`.metrics`, :mod:`.runner`.
"""

from __future__ import annotations

from .cache import VerdictCache
from .config import WorkerConfig, load_worker_config
from .publisher import Publisher, PublishError
from .schema import SCHEMA_VERSION, Observation, PoisonMessage, parse_observation

__all__ = [
    "SCHEMA_VERSION",
    "Observation",
    "PoisonMessage",
    "PublishError",
    "Publisher",
    "VerdictCache",
    "Worker",
    "WorkerConfig",
    "load_worker_config",
    "parse_observation",
]


def __getattr__(name: str):
    if name == "Worker":  # imports the engine and the Kafka client only when asked for
        from .worker import Worker

        return Worker
    raise AttributeError(name)
