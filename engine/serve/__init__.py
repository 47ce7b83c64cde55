"""probewatch.serve: the HTTP sidecar (``probewatch serve``). Needs the ``serve`` extra::

    from probewatch.serve import load_config, run

    run(load_config("probewatch.yaml"))  # or: python -m probewatch.serve
"""

from .config import ServerConfig, load_config
from .runner import main_serve, run

__all__ = ["ServerConfig", "create_app", "load_config", "main_serve", "run"]


def create_app(*args, **kwargs):
    """The ASGI app (imported lazily so ``probewatch.server.config`` works without FastAPI)."""
    from .app import create_app as _create_app  # noqa: PLC0415

    return _create_app(*args, **kwargs)
