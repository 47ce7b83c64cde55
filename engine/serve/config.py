"""Sidecar settings: built-in defaults < a YAML file < ``PROBEWATCH_*`` environment < keyword overrides.

Sidecar settings are read from ``PROBEWATCH_<NAME>`` (``PROBEWATCH_MAX_BATCH_SIZE=128``);
engine settings from the YAML mapping ``engine:`` and from ``PROBEWATCH_ENGINE_<FIELD>``
(``PROBEWATCH_ENGINE_DEVICE=cpu``). pydantic-settings reads the environment and pydantic
converts and checks every value; a bad one is a :class:`~probewatch.errors.ConfigError`
naming the setting, what it expects and what came. Every setting is listed with its default
in docs/sidecar.md.

>>> config = load_config(env={"PROBEWATCH_MAX_BATCH_SIZE": "128", "PROBEWATCH_ENGINE_DEVICE": "cpu"})
>>> config.max_batch_size, config.engine.device, config.failure_policy
(128, 'cpu', 'open')
>>> config.replace(failure_policy="closed").failure_policy
'closed'
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import typing
import urllib.parse
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails, PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from ..config import EngineConfig
from ..errors import ConfigError
from ..integrations.policy import FailurePolicy
from ..integrations.prompts import AccountField, GuardrailPromptSource

ENV_PREFIX = "PROBEWATCH_"
ENGINE_ENV_PREFIX = "PROBEWATCH_ENGINE_"
# Where the sidecar's engine differs from a library Engine(): it learns the provider's normal
# (after its warm-up: 50 accounts at least a day old; see probewatch.detect.learning).
SIDECAR_ENGINE_DEFAULTS: dict[str, Any] = {"population_update_every": 10_000}
SECRET_SETTINGS = frozenset({"api_token", "engine.campaign_salt", "log_hash_key"})  # never logged or echoed in errors
RENAMED_SETTINGS = {"fail_mode": "failure_policy"}
UNSET_WORDS = ("", "none", "null")
_TOPIC_NAME = r"^[A-Za-z0-9._-]{1,249}$"

FsyncPolicy = Literal["always", "batch", "interval", "never"]
PromptOverflow = Literal["truncate", "reject"]
GuardrailAction = Literal["NONE", "BLOCKED"]
LogFormat = Literal["text", "json"]


AlertSinkKind = Literal["webhook", "kafka"]  # probewatch.serve.alerts.SINK_KINDS has a class for each
_SECRET_PROPERTY_WORDS = ("password", "secret", "token", "key")  # librdkafka properties never logged


class AlertSinkConfig(BaseModel):
    """One place alerts are delivered to (an item of ``alert_sinks``; docs/sidecar.md "Alerts").

    ``kind: webhook`` POSTs to ``url``, signed with an HMAC secret that comes from exactly one
    of ``secret`` (inline), ``secret_env`` (the name of an environment variable of the sidecar
    process) or ``secret_file`` (a file holding it); it is never logged or echoed in errors, and
    neither is the URL's path (a chat webhook URL is itself a credential).

    ``kind: kafka`` produces to ``topic`` on ``bootstrap_servers`` (the kafka extra), with
    ``kafka`` holding extra librdkafka properties (security); secret-looking ones are not logged.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")  # the sink's metric label
    kind: AlertSinkKind = "webhook"
    # webhook
    url: str | None = None
    secret: SecretStr | None = None
    secret_env: str | None = None
    secret_file: str | None = None
    # kafka
    bootstrap_servers: str | None = None
    topic: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]{1,249}$")
    kafka: dict[str, str] = Field(default_factory=dict)  # extra librdkafka producer properties
    rate_per_s: float = Field(1.0, gt=0, allow_inf_nan=False)  # token bucket: deliveries a second on average ...
    burst: int = Field(10, ge=1)  # ... and at once; events over it wait in the outbox
    timeout_s: float = Field(5.0, gt=0, allow_inf_nan=False)  # one delivery attempt, connect to response
    retry_initial_s: float = Field(
        1.0, gt=0, allow_inf_nan=False
    )  # backoff after the first failed attempt, doubling ...
    retry_max_s: float = Field(300.0, gt=0, allow_inf_nan=False)  # ... up to this, with jitter; retried until delivered

    @field_validator("rate_per_s", "burst", "timeout_s", "retry_initial_s", "retry_max_s", mode="before")
    @classmethod
    def _numbers_not_booleans(cls, value: Any) -> Any:
        if isinstance(value, bool):  # YAML's true would read as 1
            raise PydanticCustomError("number_not_boolean", "a number is expected, not true or false")
        return value

    @field_validator("kafka", mode="before")
    @classmethod
    def _properties_as_text(cls, value: Any) -> Any:
        return kafka_properties_as_text(value)

    @model_validator(mode="after")
    def _usable(self) -> AlertSinkConfig:
        where = f"alert_sinks[{self.name}]"
        if self.retry_max_s < self.retry_initial_s:
            raise ValueError(
                f"{where}.retry_max_s must be >= retry_initial_s ({self.retry_initial_s}); got {self.retry_max_s}"
            )
        if self.kind == "kafka":
            return self._usable_kafka(where)
        misplaced = [name for name in ("bootstrap_servers", "topic", "kafka") if getattr(self, name)]
        if misplaced:
            raise ValueError(f"{where}: {misplaced} are settings of kind kafka; this sink is a webhook")
        if self.url is None:
            raise ValueError(f"{where}.url is required for a webhook sink (an http:// or https:// URL)")
        try:
            parts = urllib.parse.urlsplit(self.url)
            parts.port  # noqa: B018 - raises for a port that is no number or out of range
        except ValueError as exc:  # the reason names the port or the bracket, never the path
            raise ValueError(f"{where}.url is not a usable URL: {exc}") from None
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{where}.url must be an http:// or https:// URL with a host; got one with scheme {parts.scheme!r} "
                f"and host {parts.hostname!r}"
            )
        if any(c.isspace() or not c.isprintable() for c in parts.hostname):
            raise ValueError(f"{where}.url's host {parts.hostname[:80]!r} holds a space or a control character")
        sources = [name for name in ("secret", "secret_env", "secret_file") if getattr(self, name) is not None]
        if len(sources) != 1:
            raise ValueError(
                f"{where} needs exactly one of secret, secret_env (an environment variable's name) or secret_file "
                f"(a path) for the HMAC signature; got {sources or 'none'}"
            )
        self.read_secret()  # a secret that cannot be read is refused at start, not at the first alert
        return self

    def _usable_kafka(self, where: str) -> AlertSinkConfig:
        webhook_only = [
            name for name in ("url", "secret", "secret_env", "secret_file") if getattr(self, name) is not None
        ]
        if webhook_only:
            raise ValueError(
                f"{where}: {webhook_only} are settings of kind webhook; a kafka sink needs bootstrap_servers and topic "
                "(librdkafka security properties go in its kafka mapping)"
            )
        missing = [name for name in ("bootstrap_servers", "topic") if not getattr(self, name)]
        if missing:
            raise ValueError(f"{where}: a kafka sink needs bootstrap_servers and topic; {missing} not set")
        reserved = sorted({"bootstrap.servers", "acks", "message.timeout.ms"} & set(self.kafka))
        if reserved:
            raise ValueError(
                f"{where}.kafka sets {reserved}, which the sink sets itself (from bootstrap_servers; acks=all; "
                "from timeout_s); remove them"
            )
        try:
            import confluent_kafka  # noqa: F401 - the kafka extra, checked at start rather than at the first alert
        except ImportError:
            raise ValueError(
                f"{where} is a kafka sink, which needs the kafka extra (confluent-kafka): pip install 'probewatch[kafka]'"
            ) from None
        return self

    def read_secret(self) -> bytes:
        """The HMAC key, from wherever it is configured; ValueError naming the source (never the value)."""
        where = f"alert_sinks[{self.name}]"
        # the same key wherever it comes from: spaces and newlines around it are not part of it
        if self.secret is not None:
            value = self.secret.get_secret_value().strip()
        elif self.secret_env is not None:
            value = os.environ.get(self.secret_env, "").strip()
            if not value:
                raise ValueError(f"{where}.secret_env names {self.secret_env!r}, which is unset or empty")
        else:
            try:
                value = Path(self.secret_file).read_text(encoding="utf-8").strip()
            except (OSError, UnicodeDecodeError) as exc:
                raise ValueError(f"{where}.secret_file {self.secret_file!r} cannot be read: {exc}") from None
        if len(value) < 16:
            raise ValueError(f"{where}: the signing secret must be at least 16 characters (use a random one)")
        return value.encode("utf-8")

    def public_dict(self) -> dict[str, Any]:
        """The sink's settings for logs: no secret, the URL as scheme://host:port only, and no
        secret-looking librdkafka property."""
        out = self.model_dump(exclude={"secret"})
        if self.url is not None:
            parts = urllib.parse.urlsplit(self.url)
            out["url"] = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}/..."
        out["secret"] = "<set>" if self.secret is not None else None
        out["kafka"] = {k: "<set>" if any(w in k for w in _SECRET_PROPERTY_WORDS) else v for k, v in self.kafka.items()}
        return out


class _GivenValuesOnly(BaseSettings):
    """Settings built from the values passed in and the defaults, never from os.environ behind the
    caller's back: :func:`load_config` layers the file and the environment (which tests pass in)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


class _Environment(EnvSettingsSource):
    """The settings of ``settings_cls`` found in ``environ`` (its env_prefix + the setting name, any case)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str], ignore: Iterable[str] = ()):
        self._environ = environ  # read by _load_env_vars, which the base __init__ calls
        self._ignore = frozenset(ignore)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str]:
        return {name.lower(): value for name, value in self._environ.items()}

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        if field_name in self._ignore:
            return None, field_name, False
        return super().get_field_value(field, field_name)


def kafka_properties_as_text(value: Any) -> Any:
    """librdkafka properties are all text: YAML's ``true`` becomes ``"true"``, numbers their digits."""
    if isinstance(value, Mapping):
        return {str(k): str(v).lower() if isinstance(v, bool) else str(v) for k, v in value.items()}
    return value


def _none_if_unset(value: Any) -> Any:
    """None for text that means "not set" (empty, 'none' or 'null', any case); other values as they are."""
    return None if isinstance(value, str) and value.strip().lower() in UNSET_WORDS else value


class _EngineSettingsBase(_GivenValuesOnly):
    model_config = SettingsConfigDict(env_prefix=ENGINE_ENV_PREFIX, extra="forbid")

    @field_validator("*", mode="before")
    @classmethod
    def _unset_words_mean_none(cls, value: Any, info: ValidationInfo) -> Any:
        return _none_if_unset(value) if cls.model_fields[info.field_name].default is None else value


def _engine_settings_class() -> type[_EngineSettingsBase]:
    """EngineConfig's fields as a settings class, so values from text get EngineConfig's types."""
    hints = typing.get_type_hints(EngineConfig)
    fields: dict[str, Any] = {f.name: (hints[f.name], f.default) for f in dataclasses.fields(EngineConfig)}
    return create_model("EngineSettings", __base__=_EngineSettingsBase, **fields)


EngineSettings = _engine_settings_class()


def engine_config_from(values: Mapping[str, Any]) -> EngineConfig:
    """An :class:`EngineConfig` from engine setting values (text from the environment is converted)."""
    try:
        checked = EngineSettings.model_validate(dict(values))
    except ValidationError as exc:
        raise _config_error(exc, EngineSettings, scope="engine") from None
    try:
        return EngineConfig.from_dict(checked.model_dump())
    except ConfigError as exc:  # EngineConfig's own range checks
        raise ConfigError(f"engine settings: {exc}") from None


class ServerConfig(_GivenValuesOnly):
    """Every sidecar setting with its default; see docs/sidecar.md for the long form.

    Immutable: :meth:`replace` returns a changed copy. Built directly it holds the values
    given and the defaults; :func:`load_config` adds the YAML file and the environment.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    host: str = "127.0.0.1"
    port: int = Field(8321, ge=0, le=65535)
    data_dir: str = "./probewatch-data"
    log_level: str = "info"
    log_format: LogFormat = "text"  # json: one object a line with ts, level, logger, event, request_id
    log_account_ids: bool = False  # log raw account ids; otherwise only account_hash (keyed HMAC)
    log_hash_key: str | None = None  # the account_hash key; unset: a random key per process

    # security
    api_token: str | None = None
    no_auth: bool = False  # run without a token on purpose: loopback hosts only, for development
    max_body_bytes: int = Field(4 * 1024**2, ge=1024)
    max_items_per_request: int = Field(256, ge=1)
    max_prompt_chars: int = Field(16_384, ge=1)
    prompt_overflow: PromptOverflow = "truncate"

    # micro-batching and the failure policy
    max_batch_size: int = Field(64, ge=1)
    max_wait_ms: float = Field(5.0, ge=0)
    queue_capacity: int = 4096
    guardrail_reserved_capacity: int = Field(256, ge=0)  # queue room only the guardrail route may use
    max_connections: int = Field(1024, ge=1)  # requests at once; past it a JSON 503 (uvicorn's cap: twice it)
    overload_retry_after_s: int = Field(1, ge=1)  # Retry-After of a 429 when the queue is full
    request_deadline_ms: float = Field(2000.0, gt=0)
    failure_policy: FailurePolicy = "open"

    # per-client token buckets (a client: the rate_limit_client_header value, else the token); 0 = off
    rate_limit_items_per_s: float = Field(0.0, ge=0)  # POST /v1/observe items a second, per client
    rate_limit_burst: int = Field(1024, ge=1)  # items at once (>= max_items_per_request)
    guardrail_rate_limit_per_s: float = Field(0.0, ge=0)  # guardrail calls a second, per client
    guardrail_rate_limit_burst: int = Field(64, ge=1)
    rate_limit_client_header: str = Field("x-probewatch-client", pattern=r"^[A-Za-z0-9-]+$")

    # durability
    journal_fsync: FsyncPolicy = "batch"
    journal_fsync_interval_ms: float = Field(200.0, gt=0)
    snapshot_interval_s: float = Field(300.0, gt=0)
    snapshot_every_observations: int = Field(100_000, ge=1)
    snapshot_keep: int = Field(2, ge=1)
    snapshot_after_forget: bool = True
    shutdown_drain_s: float = Field(10.0, ge=0)

    # pagination of GET /v1/accounts
    page_size_default: int = Field(100, ge=1)
    page_size_max: int = 1000

    # the analyst's web console at /ui (same token; a login page sets a signed session cookie)
    console: bool = True
    console_session_ttl_s: float = Field(8 * 3600.0, gt=0)

    # LiteLLM Generic Guardrail API
    guardrail_account_field: AccountField = "user_api_key_hash"
    guardrail_prompt_source: GuardrailPromptSource = "last_user"
    guardrail_action_on_flag: GuardrailAction = "BLOCKED"
    guardrail_action_on_watch: GuardrailAction = "NONE"
    guardrail_request_meta: bool = True  # pass the request's user agent and org to the campaign layer
    # observe the earlier user turns (at most this many new ones a request, sampled) and the
    # system messages (one new one every 16 requests) of structured_messages that the account
    # has not sent before (probewatch.integrations.context)
    guardrail_observe_context: bool = True
    guardrail_context_texts_per_request: int = Field(32, ge=0, le=1024)
    guardrail_context_answered_turns: int = Field(8, ge=0, le=1024)  # answered turns a request leaves unread
    guardrail_context_instructions_every: int = Field(16, ge=1, le=100_000)  # requests between new instructions

    # alerts on account and campaign level transitions; none configured: no alerts, no outbox
    alert_sinks: list[AlertSinkConfig] = Field(default_factory=list)

    # Kafka mode (--kafka; docs/kafka.md "The sidecar in Kafka mode"): /v1/observe publishes to
    # observations_topic and answers from the verdicts topics; the workers hold the state (no local
    # engine, journal or snapshots). Topic and broker names are the worker's settings of the same name.
    kafka_mode: bool = False
    bootstrap_servers: str = "127.0.0.1:9092"
    observations_topic: str = Field("probewatch.observations", pattern=_TOPIC_NAME)
    verdicts_topic: str = Field("probewatch.verdicts", pattern=_TOPIC_NAME)
    campaign_verdicts_topic: str | None = Field(None, pattern=_TOPIC_NAME)  # set: answers take campaign levels
    kafka: dict[str, str] = Field(default_factory=dict)  # extra librdkafka properties (security, linger.ms)
    kafka_verdict_wait_ms: float = Field(500.0, ge=0)  # /v1/observe waits this long for the request's own verdict
    kafka_guardrail_wait_ms: float = Field(0.0, ge=0)  # the guardrail route's wait; 0: the cached level at once
    kafka_connect_timeout_s: float = Field(10.0, gt=0)  # per attempt to reach the brokers (retried until they answer)

    # the engine
    calibration_path: str | None = None
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(**SIDECAR_ENGINE_DEFAULTS))

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(exc, ServerConfig) from None

    @field_validator("calibration_path", "log_hash_key", "campaign_verdicts_topic", mode="before")
    @classmethod
    def _unset_words_mean_none(cls, value: Any) -> Any:
        return _none_if_unset(value)

    @field_validator("kafka", mode="before")
    @classmethod
    def _properties_as_text(cls, value: Any) -> Any:
        return kafka_properties_as_text(value)

    @field_validator("api_token", mode="before")
    @classmethod
    def _set_token_is_a_secret(cls, value: Any) -> Any:
        # A token variable that is set but blank, 'none' or 'null' is a deployment mistake (a
        # missing secret), not a request to turn authentication off.
        if isinstance(value, str) and value.strip().lower() in UNSET_WORDS:
            raise ValueError(
                "api_token is set but empty (blank, 'none' or 'null'): set a random secret of at least 16 "
                "characters, or unset it and pass --no-auth (loopback development only)"
            )
        return value

    @field_validator("api_token")
    @classmethod
    def _token_is_long_enough(cls, token: str | None) -> str | None:
        if token is not None and len(token) < 16:
            raise ValueError("api_token must be at least 16 characters (use a random secret); got <hidden>")
        return token

    @field_validator("engine", mode="before")
    @classmethod
    def _engine_from_mapping(cls, value: Any) -> Any:
        return engine_config_from({**SIDECAR_ENGINE_DEFAULTS, **value}) if isinstance(value, Mapping) else value

    @model_validator(mode="after")
    def _settings_agree(self) -> ServerConfig:
        limit = self.engine.max_prompt_chars
        if self.max_prompt_chars > limit:
            raise ValueError(
                f"max_prompt_chars must be <= engine.max_prompt_chars ({limit}); got {self.max_prompt_chars}"
            )
        if self.queue_capacity < self.max_items_per_request:
            raise ValueError(
                f"queue_capacity must be >= max_items_per_request ({self.max_items_per_request}); got {self.queue_capacity}"
            )
        if self.no_auth and self.api_token is not None:
            raise ValueError("no_auth is set together with api_token: choose one (the token, outside development)")
        if self.no_auth and not is_loopback(self.host):
            raise ValueError(
                f"no_auth serves every endpoint without a token, so it binds only to a loopback host (127.0.0.1, ::1, "
                f"localhost); got host {self.host!r}: set PROBEWATCH_API_TOKEN to listen there"
            )
        if self.rate_limit_items_per_s > 0 and self.rate_limit_burst < self.max_items_per_request:
            raise ValueError(
                f"rate_limit_burst must be >= max_items_per_request ({self.max_items_per_request}) so a full request "
                f"can pass; got {self.rate_limit_burst}"
            )
        names = [sink.name for sink in self.alert_sinks]
        if len(set(names)) != len(names):
            raise ValueError(f"alert_sinks: every sink needs a name of its own; got {names}")
        for wait in ("kafka_verdict_wait_ms", "kafka_guardrail_wait_ms"):
            if getattr(self, wait) >= self.request_deadline_ms:
                raise ValueError(
                    f"{wait} must be < request_deadline_ms ({self.request_deadline_ms}), which also bounds the "
                    f"publish; got {getattr(self, wait)}"
                )
        if "bootstrap.servers" in self.kafka:
            raise ValueError(
                "kafka property 'bootstrap.servers' is the setting bootstrap_servers; remove it from kafka"
            )
        topics = [t for t in (self.observations_topic, self.verdicts_topic, self.campaign_verdicts_topic) if t]
        if len(set(topics)) != len(topics):  # it would read its own observations as verdicts
            raise ValueError(
                "observations_topic, verdicts_topic and campaign_verdicts_topic must differ (as the worker's "
                f"do); got {topics}"
            )
        if self.page_size_default > self.page_size_max:
            raise ValueError(
                f"page_size_default must be <= page_size_max ({self.page_size_max}); got {self.page_size_default}"
            )
        return self

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def replace(self, **changes: Any) -> ServerConfig:
        """A copy with ``changes`` applied and checked like any other setting."""
        return type(self)(**{**dict(self), **changes})

    def public_dict(self) -> dict[str, Any]:
        """The settings with the secrets (the token, the campaign metadata salt) hidden, for logs."""
        out = self.model_dump()
        for name in SECRET_SETTINGS:
            *parents, key = name.split(".")
            where = out
            for parent in parents:
                where = where.get(parent) if isinstance(where, dict) else None
            if isinstance(where, dict) and where.get(key) is not None:
                where[key] = "<set>"
        out["alert_sinks"] = [sink.public_dict() for sink in self.alert_sinks]
        out["kafka"] = {k: "<set>" if any(w in k for w in _SECRET_PROPERTY_WORDS) else v for k, v in self.kafka.items()}
        return out


SIDECAR_SETTINGS = tuple(name for name in ServerConfig.model_fields if name != "engine")


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a bind address) reaches only this machine."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def require_auth_choice(config: ServerConfig) -> None:
    """Refuse to serve unless a token is set or ``no_auth`` was chosen on purpose (a missing
    secret must never open every endpoint by accident)."""
    if config.api_token is None and not config.no_auth:
        raise ConfigError(
            "no API token: set PROBEWATCH_API_TOKEN (a random secret of at least 16 characters), or pass --no-auth "
            "(PROBEWATCH_NO_AUTH=true) to serve without authentication on a loopback host for development"
        )


def load_config(
    path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None, **overrides: Any
) -> ServerConfig:
    """Defaults, then the YAML file at ``path`` (if given), then ``env`` (default: os.environ),
    then keyword ``overrides`` (what the command line passes; None means "not given", and
    ``engine=`` takes a mapping of engine settings)."""
    environ = os.environ if env is None else env
    layers = (
        _read_yaml(Path(path)) if path is not None else {},
        _environment_layer(environ),
        {name: value for name, value in overrides.items() if value is not None},
    )
    return ServerConfig(**_merge(layers))


def _merge(layers: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Later layers win, setting by setting; engine settings too, not the engine mapping as a whole."""
    merged: dict[str, Any] = {}
    engine: dict[str, Any] = {}
    for layer in layers:
        engine.update(layer.get("engine") or {})
        merged.update({name: value for name, value in layer.items() if name != "engine"})
    return {**merged, "engine": engine}


def _environment_layer(environ: Mapping[str, str], settings_cls: type[BaseSettings] | None = None) -> dict[str, Any]:
    """``settings_cls``' settings (default ServerConfig; the Kafka worker passes its own) and the engine's."""
    names = {name.upper() for name in environ}
    for old, new in RENAMED_SETTINGS.items():
        if ENV_PREFIX + old.upper() in names:
            raise _renamed(f"the environment sets {ENV_PREFIX}{old.upper()}", f"{ENV_PREFIX}{new.upper()}")
    # engine: PROBEWATCH_ENGINE_<FIELD>
    try:
        sidecar = _Environment(settings_cls or ServerConfig, environ, ignore={"engine"})()
    except SettingsError as exc:  # a list setting (alert_sinks) whose variable is not JSON
        raise ConfigError(
            f"{exc}: a list setting's variable must hold a JSON list, e.g. '[{{\"name\": ...}}]'"
        ) from None
    return {**sidecar, "engine": _Environment(EngineSettings, environ)()}


def _read_yaml(path: Path, known: Iterable[str] = SIDECAR_SETTINGS) -> dict[str, Any]:
    """The settings mapping of a YAML file; ``known``: the valid setting names besides 'engine'."""
    known = tuple(known)
    import yaml  # only needed when a file is given; the integrations read settings without it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"the config file {path} must be UTF-8 text; byte {exc.start} is {exc.object[exc.start : exc.start + 1]!r}"
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"the config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"the config file {path} must hold a mapping of settings; got {type(data).__name__}")
    engine = data.get("engine") or {}
    if not isinstance(engine, dict):
        raise ConfigError(f"{path}: 'engine' must be a mapping of engine settings; got {type(engine).__name__}")
    for old, new in RENAMED_SETTINGS.items():
        if old in data:
            raise _renamed(f"{path} sets {old}", new)
    unknown = sorted(str(name) for name in data if name not in known and name != "engine")
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; valid ones are {sorted(known)} and 'engine'")
    return {**data, "engine": engine}


def _renamed(what: str, new_name: str) -> ConfigError:
    # Ignoring a setting under its old name would silently change the behaviour: refuse it.
    return ConfigError(f"{what}, a setting renamed {new_name} in this version; use {new_name} (same values)")


def _config_error(exc: ValidationError, settings_cls: type[BaseSettings], scope: str = "") -> ConfigError:
    """One ConfigError naming each bad setting, what it expects and what came (never a secret)."""
    prefix = f"{scope}." if scope else ""
    errors = exc.errors()
    problems = [_describe(error, prefix) for error in errors if error["type"] != "extra_forbidden"]
    nested = [error for error in errors if error["type"] == "extra_forbidden" and len(error["loc"]) > 1]
    problems += [f"setting {_location(error, prefix)}: not a known key here" for error in nested]
    unknown = sorted(
        prefix + str(error["loc"][0])
        for error in errors
        if error["type"] == "extra_forbidden" and len(error["loc"]) == 1
    )
    if unknown:
        valid = sorted(prefix + name for name in settings_cls.model_fields)
        problems.append(f"unknown settings {unknown}; valid ones are {valid}")
    return ConfigError("; ".join(problems))


def _describe(error: ErrorDetails, prefix: str) -> str:
    if error["type"] == "value_error":  # raised by our own checks, whose message names the setting
        return str(error.get("ctx", {}).get("error", error["msg"]))
    name = _location(error, prefix)
    value = error["input"]
    hidden = name in SECRET_SETTINGS or (
        name.startswith("alert_sinks.") and (name.endswith((".secret", ".url")) or ".kafka" in name)
    )
    if hidden:
        came = "<hidden>"
    elif name.startswith("alert_sinks") and isinstance(value, dict):  # a whole sink: its secret, its URL
        came = f"an object with keys {sorted(map(str, value))}"
    elif name.startswith("alert_sinks") and isinstance(value, list | tuple):
        came = f"a list of {len(value)} items"
    else:
        came = repr(value)
    return f"setting {name}: {error['msg']}; got {came}"


def _location(error: ErrorDetails, prefix: str) -> str:
    return prefix + ".".join(str(part) for part in error["loc"])
