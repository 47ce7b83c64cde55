"""Engine settings for an integration that a framework builds with no arguments.

vLLM builds :class:`~probewatch.integrations.asgi.ProbewatchMiddleware` and LiteLLM builds
:class:`~probewatch.integrations.litellm.ProbewatchGuardrail` from their own configuration,
so the engine's settings come from the same ``PROBEWATCH_ENGINE_*`` environment the sidecar
reads, through the sidecar's settings loader.
"""

from __future__ import annotations

import os

from ..config import EngineConfig
from ..errors import BackendUnavailableError, ConfigError

TRUE_WORDS = ("1", "true", "yes", "on")
FALSE_WORDS = ("0", "false", "no", "off")


def engine_config_from_env(integration: str) -> EngineConfig:
    """``PROBEWATCH_ENGINE_*`` as an :class:`EngineConfig`; an error naming the extra to
    install when the settings loader is missing (raised when the integration is built,
    not at its first request)."""
    try:
        from ..serve.config import load_config  # pydantic-settings: the serve extra
    except ImportError as exc:
        raise BackendUnavailableError(
            f"{integration} built without an engine reads its settings from PROBEWATCH_ENGINE_* with the "
            f"sidecar's settings loader, which is not installed ({exc}); install 'probewatch[serve]' or pass "
            "engine=probewatch.Engine(...)"
        ) from exc
    return load_config().engine


def env_flag(name: str, default: bool) -> bool:
    """The boolean environment setting ``name`` (true/false, yes/no, on/off, 1/0; any case),
    ``default`` when unset or empty; a :class:`~probewatch.errors.ConfigError` otherwise."""
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ConfigError(f"{name} must be one of {TRUE_WORDS + FALSE_WORDS}; got {raw!r}")
