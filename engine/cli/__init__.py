"""``probewatch`` command line: demo, replay, calibrate, serve (see :func:`main`)."""

from .main import build_parser, main

__all__ = ["build_parser", "main"]
