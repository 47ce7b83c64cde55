"""The failure policy: what a request gets when probewatch cannot judge it in time.

One spelling for every surface: the sidecar's ``failure_policy`` setting and the
integrations' ``failure_policy=`` argument. ``open`` lets the request through (availability
first); ``closed`` refuses it (protection first).

>>> check_failure_policy("closed")
'closed'
"""

from __future__ import annotations

from typing import Any, Literal, get_args

from ..errors import ConfigError

FailurePolicy = Literal["open", "closed"]
FAILURE_POLICIES: tuple[str, ...] = get_args(FailurePolicy)


def check_failure_policy(value: Any) -> FailurePolicy:
    """``value`` if it is a failure policy, else a :class:`~probewatch.errors.ConfigError`."""
    if value not in FAILURE_POLICIES:
        raise ConfigError(f"failure_policy must be one of {FAILURE_POLICIES}; got {value!r}")
    return value
