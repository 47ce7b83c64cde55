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
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, create_model, field_validator, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, EnvSettingsSource, PydanticBaseSettingsSource, SettingsConfigDict

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

FsyncPolicy = Literal["always", "batch", "interval", "never"]
PromptOverflow = Literal["truncate", "reject"]
GuardrailAction = Literal["NONE", "BLOCKED"]
LogFormat = Literal["text", "json"]


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
    max_connections: int = Field(1024, ge=1)  # uvicorn limit_concurrency: 503 past it
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

    # LiteLLM Generic Guardrail API
    guardrail_account_field: AccountField = "user_api_key_hash"
    guardrail_prompt_source: GuardrailPromptSource = "last_user"
    guardrail_action_on_flag: GuardrailAction = "BLOCKED"
    guardrail_action_on_watch: GuardrailAction = "NONE"
    guardrail_request_meta: bool = True  # pass the request's user agent and org to the campaign layer

    # the engine
    calibration_path: str | None = None
    engine: EngineConfig = Field(default_factory=lambda: EngineConfig(**SIDECAR_ENGINE_DEFAULTS))

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(exc, ServerConfig) from None

    @field_validator("calibration_path", "log_hash_key", mode="before")
    @classmethod
    def _unset_words_mean_none(cls, value: Any) -> Any:
        return _none_if_unset(value)

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


def _environment_layer(environ: Mapping[str, str]) -> dict[str, Any]:
    names = {name.upper() for name in environ}
    for old, new in RENAMED_SETTINGS.items():
        if ENV_PREFIX + old.upper() in names:
            raise _renamed(f"the environment sets {ENV_PREFIX}{old.upper()}", f"{ENV_PREFIX}{new.upper()}")
    sidecar = _Environment(ServerConfig, environ, ignore={"engine"})()  # engine: PROBEWATCH_ENGINE_<FIELD>
    return {**sidecar, "engine": _Environment(EngineSettings, environ)()}


def _read_yaml(path: Path) -> dict[str, Any]:
    import yaml  # only needed when a file is given; the integrations read settings without it

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
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
    unknown = sorted(str(name) for name in data if name not in SIDECAR_SETTINGS and name != "engine")
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; valid ones are {sorted(SIDECAR_SETTINGS)} and 'engine'")
    return {**data, "engine": engine}


def _renamed(what: str, new_name: str) -> ConfigError:
    # Ignoring a setting under its old name would silently change the behaviour: refuse it.
    return ConfigError(f"{what}, a setting renamed {new_name} in this version; use {new_name} (same values)")


def _config_error(exc: ValidationError, settings_cls: type[BaseSettings], scope: str = "") -> ConfigError:
    """One ConfigError naming each bad setting, what it expects and what came (never a secret)."""
    prefix = f"{scope}." if scope else ""
    errors = exc.errors()
    problems = [_describe(error, prefix) for error in errors if error["type"] != "extra_forbidden"]
    unknown = sorted(prefix + str(error["loc"][0]) for error in errors if error["type"] == "extra_forbidden")
    if unknown:
        valid = sorted(prefix + name for name in settings_cls.model_fields)
        problems.append(f"unknown settings {unknown}; valid ones are {valid}")
    return ConfigError("; ".join(problems))


def _describe(error: ErrorDetails, prefix: str) -> str:
    if error["type"] == "value_error":  # raised by our own checks, whose message names the setting
        return str(error.get("ctx", {}).get("error", error["msg"]))
    name = prefix + ".".join(str(part) for part in error["loc"])
    came = "<hidden>" if name in SECRET_SETTINGS else repr(error["input"])
    return f"setting {name}: {error['msg']}; got {came}"
