"""probewatch.serve: the HTTP sidecar (``probewatch serve``). Needs the ``serve`` extra::

    from probewatch.serve import load_config, run

    run(load_config("probewatch.yaml"))  # or: python -m probewatch.serve

Modules: :mod:`.config` (settings), :mod:`.runner` (uvicorn and the command line),
:mod:`.app` (app factory, Gatekeeper, error handlers), one router per surface
(:mod:`.observe`, :mod:`.accounts`, :mod:`.campaigns`, :mod:`.guardrail`,
:mod:`.operations`) sharing :mod:`.http`, and under them :mod:`.service` (micro-batching,
failure policy), :mod:`.journal`, :mod:`.repair` (``probewatch repair-state``) and
:mod:`.metrics`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .config import ServerConfig, load_config
from .runner import main_serve, run

if TYPE_CHECKING:
    from ..engine import Engine
    from .app import Gatekeeper

__all__ = ["ServerConfig", "create_app", "load_config", "main_serve", "run"]


def create_app(config: ServerConfig | None = None, engine: Engine | None = None) -> Gatekeeper:
    """The ASGI app (:func:`probewatch.serve.app.create_app`; imported on first use, so the
    settings work without FastAPI)."""
    from .app import create_app as _create_app

    return _create_app(config, engine)
