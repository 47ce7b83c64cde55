"""argparse types for numbers, shared by the ``probewatch`` commands and the bench scripts: a bad
number is a one-line usage error (exit 2), not a traceback minutes into a run, nor a run on
nonsense."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def at_least(minimum: float, kind: type = int, at_most: float | None = None) -> Callable[[str], float]:
    """A ``kind`` number >= ``minimum`` (and <= ``at_most`` when given)."""
    if at_most is None:
        return _bounded(kind, lambda v: v >= minimum, f">= {minimum}")
    return _bounded(kind, lambda v: minimum <= v <= at_most, f"{minimum} to {at_most}")


def above(bound: float, kind: type = float) -> Callable[[str], float]:
    """A ``kind`` number > ``bound``."""
    return _bounded(kind, lambda v: v > bound, f"> {bound}")


def _bounded(kind: type, ok: Callable[[float], bool], rule: str) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what} {rule}; got {text!r}") from None
        if not math.isfinite(value) or not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}; got {text}")
        return value

    return parse
