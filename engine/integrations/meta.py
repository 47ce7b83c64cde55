"""Request metadata for the campaign layer, read from what each serving stack already knows.

The engine links accounts that share infrastructure (``meta``: ``ip``, ``user_agent``,
``org``, ``key_created``, ...; it keeps only salted hashes). The integrations pass what
their request context offers, and nothing they would have to guess:

* LiteLLM in-process (:func:`meta_from_litellm`): the proxy's own ``requester_ip_address``
  (the client address, or ``X-Forwarded-For`` with ``general_settings.use_x_forwarded_for``)
  and ``user_agent`` from the request metadata, the key's ``org_id`` and ``created_at``;
* LiteLLM's Generic Guardrail API (:func:`meta_from_guardrail_request`): the
  ``User-Agent`` of ``request_headers`` and ``request_data.user_api_key_org_id`` (LiteLLM
  sends no client address to a generic guardrail);
* ASGI (:func:`meta_from_asgi_scope`): the client address of the scope (behind a reverse
  proxy, that is the proxy's unless the server rewrites it from trusted proxy headers, e.g.
  uvicorn ``--proxy-headers --forwarded-allow-ips``) and the ``User-Agent`` header.

Values are cleaned so that metadata never costs an observation: unknown keys and blank
values are dropped, NUL characters removed, and long values cut to the engine's limit.

>>> clean_meta({"ip": " 203.0.113.7 ", "user_agent": "", "org": None, "colour": "red"})
{'ip': '203.0.113.7'}
>>> meta_from_asgi_scope({"client": ("198.51.100.4", 50123), "headers": [(b"user-agent", b"curl/8.5")]})
{'ip': '198.51.100.4', 'user_agent': 'curl/8.5'}
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ..campaigns.metadata import MAX_META_VALUE_CHARS, META_KEYS

# What LiteLLM's generic guardrail sends for a header whose value it does not forward.
HEADER_PRESENT_PLACEHOLDER = "[present]"


def clean_meta(values: Mapping[str, Any]) -> dict[str, str] | None:
    """The known keys of ``values`` with usable text values (None when none is left)."""
    out: dict[str, str] = {}
    for key, value in values.items():
        if key not in META_KEYS or value is None or isinstance(value, bool):
            continue
        if isinstance(value, dt.datetime):
            value = _iso_seconds(value)
        elif not isinstance(value, (str, int, float)):
            continue
        try:
            text = str(value)
        except ValueError:  # an int past Python's digit limit for str(): no usable value
            continue
        # NUL and lone surrogates (JSON can escape them) are dropped: the value is cleaned, not judged
        text = text.encode("utf-8", "ignore").decode("utf-8").replace("\x00", "").strip()[:MAX_META_VALUE_CHARS]
        if text and text != HEADER_PRESENT_PLACEHOLDER:
            out[key] = text
    return out or None


def _iso_seconds(moment: dt.datetime) -> str:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return moment.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _first_address(value: Any) -> Any:
    """The client's own address of an ``X-Forwarded-For`` style list ("client, proxy1, ...")."""
    return value.split(",")[0] if isinstance(value, str) else value


def meta_from_litellm(auth: Any = None, data: Mapping[str, Any] | None = None) -> dict[str, str] | None:
    """Metadata of a LiteLLM proxy request: its ``UserAPIKeyAuth`` and the request ``data``
    (``metadata`` / ``litellm_metadata`` as LiteLLM's pre-call processing fills them)."""
    request_meta: dict[str, Any] = {}
    for key in ("metadata", "litellm_metadata"):
        value = (data or {}).get(key)
        if isinstance(value, Mapping):
            request_meta.update(value)
    return clean_meta(
        {
            "ip": _first_address(request_meta.get("requester_ip_address")),
            "user_agent": request_meta.get("user_agent"),
            "org": getattr(auth, "org_id", None) or request_meta.get("user_api_key_org_id"),
            "key_created": getattr(auth, "created_at", None),
        }
    )


def meta_from_guardrail_request(payload: Mapping[str, Any]) -> dict[str, str] | None:
    """Metadata of a LiteLLM Generic Guardrail API request (``request_headers``, ``request_data``)."""
    headers = payload.get("request_headers")
    headers = {str(k).lower(): v for k, v in headers.items()} if isinstance(headers, Mapping) else {}
    request_data = payload.get("request_data")
    request_data = request_data if isinstance(request_data, Mapping) else {}
    return clean_meta({"user_agent": headers.get("user-agent"), "org": request_data.get("user_api_key_org_id")})


def meta_from_asgi_scope(scope: Mapping[str, Any]) -> dict[str, str] | None:
    """Metadata of an ASGI HTTP request: the client address and the ``User-Agent`` header."""
    client = scope.get("client")
    user_agent = dict(scope.get("headers") or []).get(b"user-agent")
    return clean_meta(
        {
            "ip": client[0] if client else None,
            "user_agent": user_agent.decode("latin-1") if user_agent else None,
        }
    )
