"""The analyst's web console at ``/ui``: accounts, account pages with charts, campaigns and
the forget and known-benign actions, served by the sidecar as HTML with inline SVG (no
script, no third-party asset: everything ships in the wheel)."""

from __future__ import annotations

from .routes import SECURITY_HEADERS, router

CONSOLE_PREFIX = "/ui"


def is_console_path(path: str) -> bool:
    """Whether a request path is the console's (it checks the token or its session itself)."""
    return path == CONSOLE_PREFIX or path.startswith(CONSOLE_PREFIX + "/")


__all__ = ["CONSOLE_PREFIX", "SECURITY_HEADERS", "is_console_path", "router"]
