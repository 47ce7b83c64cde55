"""Worker settings: defaults < a YAML file < ``PROBEWATCH_*`` environment < command-line flags.

The same machinery as the sidecar's :mod:`probewatch.serve.config` (pydantic-settings, one
:class:`~probewatch.errors.ConfigError` naming each bad setting); engine settings come from the
YAML mapping ``engine:`` and ``PROBEWATCH_ENGINE_<FIELD>``. Every setting is listed in docs/kafka.md.

>>> config = load_worker_config(env={"PROBEWATCH_BOOTSTRAP_SERVERS": "kafka:9092", "PROBEWATCH_ENGINE_DEVICE": "cpu"})
>>> config.bootstrap_servers, config.engine.device, config.group_id
('kafka:9092', 'cpu', 'probewatch')
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from ..config import EngineConfig
from ..serve.config import (
    ENV_PREFIX,
    SIDECAR_ENGINE_DEFAULTS,
    AlertSinkConfig,
    LogFormat,
    _config_error,
    _environment_layer,
    _GivenValuesOnly,
    _merge,
    _none_if_unset,
    _read_yaml,
    engine_config_from,
    kafka_properties_as_text,
)

# librdkafka properties whose values are never logged
_SECRET_WORDS = ("password", "secret", "token", "key")
_TOPIC_NAME = r"^[A-Za-z0-9._-]{1,249}$"


class WorkerConfig(_GivenValuesOnly):
    """Every ``probewatch worker`` setting with its default (docs/kafka.md has the long form)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    # Kafka
    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = Field("probewatch", min_length=1)
    observations_topic: str = Field("probewatch.observations", pattern=_TOPIC_NAME)
    verdicts_topic: str = Field("probewatch.verdicts", pattern=_TOPIC_NAME)
    dead_letter_topic: str = Field("probewatch.dead-letters", pattern=_TOPIC_NAME)
    summaries_topic: str | None = Field(None, pattern=_TOPIC_NAME)  # per-query campaign records; None: off
    campaign_verdicts_topic: str = Field("probewatch.campaign-verdicts", pattern=_TOPIC_NAME)  # the aggregator's
    session_timeout_ms: int = Field(10_000, ge=1000)  # how long a dead worker keeps its partitions
    kafka: dict[str, str] = Field(default_factory=dict)  # extra librdkafka properties of both clients (security)
    kafka_consumer: dict[str, str] = Field(default_factory=dict)  # ... of the consumer only (fetch.wait.max.ms)
    kafka_producer: dict[str, str] = Field(default_factory=dict)  # ... of the producer only (linger.ms)

    # batching and message limits
    max_batch_size: int = Field(256, ge=1)  # messages per poll, embedded at once
    poll_timeout_ms: float = Field(100.0, ge=0)  # how long a poll waits to fill a batch
    max_message_bytes: int = Field(1024**2, ge=256)  # larger observations are poison
    # the memory budget is enforced, and evictions decided, every this many observations of a
    # partition (at the same offsets on every replay, so replay evicts exactly as the live run did)
    housekeeping_every: int = Field(1000, ge=1)

    # state
    state_url: str = "file://./probewatch-state"
    checkpoint_interval_s: float = Field(60.0, gt=0)
    checkpoint_every_messages: int = Field(50_000, ge=1)
    checkpoint_keep: int = Field(3, ge=1)

    # alerts on level transitions (the sidecar's alert_sinks items); none: no alerts, no outbox.
    # The outboxes live in a local POSIX folder of this worker (fsynced), one per partition it owned.
    alert_sinks: list[AlertSinkConfig] = Field(default_factory=list)
    alert_outbox_dir: str = Field("./probewatch-alerts", min_length=1)

    # operations
    host: str = "127.0.0.1"
    port: int = Field(8322, ge=0, le=65535)  # /metrics, /healthz, /readyz
    log_level: str = "info"
    log_format: LogFormat = "text"

    # the engine
    calibration_path: str | None = None
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(**SIDECAR_ENGINE_DEFAULTS))

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(exc, WorkerConfig) from None

    @field_validator("calibration_path", "summaries_topic", mode="before")
    @classmethod
    def _unset_words_mean_none(cls, value: Any) -> Any:
        return _none_if_unset(value)

    @field_validator("kafka", "kafka_consumer", "kafka_producer", mode="before")
    @classmethod
    def _properties_as_text(cls, value: Any) -> Any:
        return kafka_properties_as_text(value)

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_from_mapping(cls, value: Any) -> Any:
        return engine_config_from({**SIDECAR_ENGINE_DEFAULTS, **value}) if isinstance(value, Mapping) else value

    @model_validator(mode="after")
    def _settings_agree(self) -> WorkerConfig:
        topics = [
            self.observations_topic,
            self.verdicts_topic,
            self.dead_letter_topic,
            self.summaries_topic,
            self.campaign_verdicts_topic,
        ]
        named = [t for t in topics if t is not None]
        if len(set(named)) != len(named):
            raise ValueError(
                f"the observations, verdicts, dead-letter, summaries and campaign verdicts topics must differ; got {named}"
            )
        names = [sink.name for sink in self.alert_sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"alert_sinks: every sink needs a name of its own; got {names}")
        if "://" in self.alert_outbox_dir:
            raise ValueError(
                f"alert_outbox_dir must be a local folder (the outbox is fsynced on every write), not a URL; "
                f"got {self.alert_outbox_dir!r}"
            )
        if self.summaries_topic and not self.engine.campaigns:
            raise ValueError("summaries_topic carries what the campaign layer needs: set engine.campaigns true with it")
        for reserved in ("group.id", "bootstrap.servers", "enable.auto.commit"):
            if reserved in {**self.kafka, **self.kafka_consumer, **self.kafka_producer}:
                raise ValueError(
                    f"kafka property {reserved!r} is set by the worker itself (use group_id / bootstrap_servers; "
                    "offsets are committed after checkpoints); remove it from kafka"
                )
        return self

    def replace(self, **changes: Any) -> WorkerConfig:
        return type(self)(**{**dict(self), **changes})

    def public_dict(self) -> dict[str, Any]:
        """The settings for logs, secret-looking Kafka properties and the campaign salt hidden."""
        out = self.model_dump()
        out["alert_sinks"] = [sink.public_dict() for sink in self.alert_sinks]
        for name in ("kafka", "kafka_consumer", "kafka_producer"):
            out[name] = {k: "<set>" if any(w in k for w in _SECRET_WORDS) else v for k, v in out[name].items()}
        if out["engine"].get("campaign_salt") is not None:
            out["engine"]["campaign_salt"] = "<set>"
        return out


WORKER_SETTINGS = tuple(name for name in WorkerConfig.model_fields if name != "engine")


def load_worker_config(
    path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> WorkerConfig:
    """Defaults, the YAML file at ``path``, ``env`` (default: os.environ), then ``overrides``
    (None means not given; ``engine=`` takes a mapping of engine settings)."""
    from pathlib import Path

    environ = os.environ if env is None else env
    layers = (
        _read_yaml(Path(path), WORKER_SETTINGS) if path is not None else {},
        _environment_layer(environ, WorkerConfig),
        {name: value for name, value in overrides.items() if value is not None},
    )
    return WorkerConfig(**_merge(layers))
