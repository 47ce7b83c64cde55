"""Sidecar settings: defaults, a YAML file, then ``PROBEWATCH_*`` environment overrides.

Precedence (later wins): built-in defaults < YAML file < environment. Engine settings live
under the YAML key ``engine:`` and in the environment as ``PROBEWATCH_ENGINE_<FIELD>``
(for example ``PROBEWATCH_ENGINE_DEVICE=cpu``). Every setting is listed with its default
in docs/sidecar.md.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..config import EngineConfig
from ..errors import ConfigError

ENV_PREFIX = "PROBEWATCH_"
ENGINE_ENV_PREFIX = "PROBEWATCH_ENGINE_"

FSYNC_POLICIES = ("always", "batch", "interval", "never")
FAIL_MODES = ("open", "closed")
PROMPT_OVERFLOW_RULES = ("truncate", "reject")
GUARDRAIL_ACCOUNT_FIELDS = (
    "user_api_key_hash",
    "user_api_key_team_id",
    "user_api_key_end_user_id",
    "user_api_key_user_id",
    "user_api_key_org_id",
    "user_api_key_alias",
)
GUARDRAIL_PROMPT_SOURCES = ("last_user", "joined")
GUARDRAIL_ACTIONS = ("NONE", "BLOCKED")


@dataclass(frozen=True)
class ServerConfig:
    """Every sidecar setting with its default; see docs/sidecar.md for the long form."""

    host: str = "127.0.0.1"
    port: int = 8321
    data_dir: str = "./probewatch-data"
    log_level: str = "info"

    # security
    api_token: str | None = None
    max_body_bytes: int = 4 * 1024**2
    max_items_per_request: int = 256
    max_prompt_chars: int = 16_384
    prompt_overflow: str = "truncate"

    # micro-batching and the failure policy
    max_batch_size: int = 64
    max_wait_ms: float = 5.0
    queue_capacity: int = 4096
    request_deadline_ms: float = 2000.0
    fail_mode: str = "open"

    # durability
    journal_fsync: str = "batch"
    journal_fsync_interval_ms: float = 200.0
    snapshot_interval_s: float = 300.0
    snapshot_every_observations: int = 100_000
    snapshot_keep: int = 2
    snapshot_after_forget: bool = True
    shutdown_drain_s: float = 10.0

    # pagination of GET /v1/accounts
    page_size_default: int = 100
    page_size_max: int = 1000

    # LiteLLM Generic Guardrail API
    guardrail_account_field: str = "user_api_key_hash"
    guardrail_prompt_source: str = "last_user"
    guardrail_action_on_flag: str = "BLOCKED"
    guardrail_action_on_watch: str = "NONE"

    # the engine
    calibration_path: str | None = None
    engine: EngineConfig = field(default_factory=lambda: EngineConfig(device="auto"))

    def __post_init__(self) -> None:
        def need(cond: bool, what: str, value: Any) -> None:
            if not cond:
                raise ConfigError(f"server config {what}; got {value!r}")

        need(0 <= self.port <= 65535, "port must be in [0, 65535]", self.port)
        need(self.max_body_bytes >= 1024, "max_body_bytes must be >= 1024", self.max_body_bytes)
        need(self.max_items_per_request >= 1, "max_items_per_request must be >= 1", self.max_items_per_request)
        need(1 <= self.max_prompt_chars <= self.engine.max_prompt_chars,
             f"max_prompt_chars must be in [1, engine.max_prompt_chars={self.engine.max_prompt_chars}]",
             self.max_prompt_chars)
        need(self.prompt_overflow in PROMPT_OVERFLOW_RULES, f"prompt_overflow must be one of {PROMPT_OVERFLOW_RULES}",
             self.prompt_overflow)
        need(self.max_batch_size >= 1, "max_batch_size must be >= 1", self.max_batch_size)
        need(self.max_wait_ms >= 0, "max_wait_ms must be >= 0", self.max_wait_ms)
        need(self.queue_capacity >= self.max_items_per_request,
             "queue_capacity must be >= max_items_per_request", self.queue_capacity)
        need(self.request_deadline_ms > 0, "request_deadline_ms must be > 0", self.request_deadline_ms)
        need(self.fail_mode in FAIL_MODES, f"fail_mode must be one of {FAIL_MODES}", self.fail_mode)
        need(self.journal_fsync in FSYNC_POLICIES, f"journal_fsync must be one of {FSYNC_POLICIES}", self.journal_fsync)
        need(self.journal_fsync_interval_ms > 0, "journal_fsync_interval_ms must be > 0", self.journal_fsync_interval_ms)
        need(self.snapshot_interval_s > 0, "snapshot_interval_s must be > 0", self.snapshot_interval_s)
        need(self.snapshot_every_observations >= 1, "snapshot_every_observations must be >= 1",
             self.snapshot_every_observations)
        need(self.snapshot_keep >= 1, "snapshot_keep must be >= 1", self.snapshot_keep)
        need(self.shutdown_drain_s >= 0, "shutdown_drain_s must be >= 0", self.shutdown_drain_s)
        need(1 <= self.page_size_default <= self.page_size_max, "needs 1 <= page_size_default <= page_size_max",
             (self.page_size_default, self.page_size_max))
        need(self.guardrail_account_field in GUARDRAIL_ACCOUNT_FIELDS,
             f"guardrail_account_field must be one of {GUARDRAIL_ACCOUNT_FIELDS}", self.guardrail_account_field)
        need(self.guardrail_prompt_source in GUARDRAIL_PROMPT_SOURCES,
             f"guardrail_prompt_source must be one of {GUARDRAIL_PROMPT_SOURCES}", self.guardrail_prompt_source)
        for name in ("guardrail_action_on_flag", "guardrail_action_on_watch"):
            need(getattr(self, name) in GUARDRAIL_ACTIONS, f"{name} must be one of {GUARDRAIL_ACTIONS}",
                 getattr(self, name))
        if self.api_token is not None:
            need(len(self.api_token) >= 16, "api_token must be at least 16 characters (use a random secret)", "<hidden>")

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)

    def replace(self, **changes: Any) -> "ServerConfig":
        return dataclasses.replace(self, **changes)

    def public_dict(self) -> dict[str, Any]:
        """The settings with the token hidden, for logs."""
        out = dataclasses.asdict(self)
        out["api_token"] = None if self.api_token is None else "<set>"
        return out


_SERVER_FIELDS = {f.name: f for f in dataclasses.fields(ServerConfig) if f.name != "engine"}
_ENGINE_FIELDS = {f.name: f for f in dataclasses.fields(EngineConfig) if f.name != "extra"}


def _coerce(name: str, raw: str, default: Any) -> Any:
    """Convert an environment string to the type of the setting's default."""
    text = raw.strip()
    if text.lower() in ("", "none", "null") and (default is None or name in ("api_token", "calibration_path", "model")):
        return None
    try:
        if isinstance(default, bool):
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError("expected true/false")
        if isinstance(default, int):
            return int(text.replace("_", ""))
        if isinstance(default, float):
            return float(text)
    except ValueError as exc:
        raise ConfigError(f"environment setting for {name!r} must be a {type(default).__name__}; got {raw!r}") from exc
    return raw


def load_config(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None,
                **overrides: Any) -> ServerConfig:
    """Defaults, then the YAML file at ``path`` (if given), then ``env`` (default: os.environ),
    then keyword ``overrides`` (what the command line passes)."""
    env = os.environ if env is None else env
    values: dict[str, Any] = {}
    engine_values: dict[str, Any] = {}
    if path is not None:
        values, engine_values = _read_yaml(Path(path))

    defaults = ServerConfig()
    for name in _SERVER_FIELDS:
        key = ENV_PREFIX + name.upper()
        if key in env and not key.startswith(ENGINE_ENV_PREFIX):
            values[name] = _coerce(name, env[key], getattr(defaults, name))
    default_engine = defaults.engine
    for name in _ENGINE_FIELDS:
        key = ENGINE_ENV_PREFIX + name.upper()
        if key in env:
            engine_values[name] = _coerce(name, env[key], getattr(default_engine, name))

    engine_overrides = overrides.pop("engine", None) or {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    engine_values.update(engine_overrides)
    engine = EngineConfig.from_dict({**default_engine.to_dict(), **engine_values})
    return ServerConfig(**values, engine=engine)


def _read_yaml(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    import yaml  # noqa: PLC0415  (an extra: only needed when a file is given)

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as exc:
        raise ConfigError(f"cannot read the config file {path}: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"the config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"the config file {path} must hold a mapping of settings; got {type(data).__name__}")
    engine_values = data.pop("engine", None) or {}
    if not isinstance(engine_values, dict):
        raise ConfigError(f"{path}: 'engine' must be a mapping of engine settings; got {type(engine_values).__name__}")
    unknown = sorted(set(data) - set(_SERVER_FIELDS))
    if unknown:
        raise ConfigError(f"{path}: unknown settings {unknown}; valid ones are {sorted(_SERVER_FIELDS)} and 'engine'")
    return data, engine_values
