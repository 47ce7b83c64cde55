"""What the sidecar's routers share: the one error shape, the service dependency, JSON bodies.

Every HTTP error the sidecar answers has the body ``{"error": {"type", "message", "field"?}}``:
``type`` is the probewatch exception class name where one applies (``InvalidAccountError``,
``UnknownAccountError``, ...) or a short stable name (``Unauthorized``, ``PayloadTooLarge``,
``InvalidJSON``, ``InvalidBody``, ``InvalidParameter``, ``NotReady``, ...); ``field`` names
the request field or parameter at fault, when there is one.

>>> error_document("InvalidParameter", "limit must be >= 1", field="limit")
{'error': {'type': 'InvalidParameter', 'message': 'limit must be >= 1', 'field': 'limit'}}
"""

from __future__ import annotations

import json
import math
import sys
import unicodedata
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from ..io.validation import _INVISIBLE_CATEGORIES, MAX_ACCOUNT_ID_LENGTH
from .ratelimit import TokenBuckets
from .service import ObservationService


class RequestError(Exception):
    """An HTTP error status with the sidecar's error body; raised by routes and dependencies."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        field: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.field = field
        self.headers = headers


def error_document(error_type: str, message: str, field: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"type": error_type, "message": message}
    if field is not None:
        error["field"] = field
    return {"error": error}


def error_response(
    status: int, error_type: str, message: str, field: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_document(error_type, message, field), status_code=status, headers=headers)


def get_service(request: Request) -> ObservationService:
    """The app's :class:`ObservationService` (a FastAPI dependency)."""
    return request.app.state.service


def require_ready(service: ObservationService) -> None:
    """503 ``NotReady`` until the model is loaded and the state restored."""
    if not service.ready:
        detail = service.load_error or "the model is loading and state is being restored; retry shortly"
        raise RequestError(503, "NotReady", f"not ready: {detail}")


Service = Annotated[ObservationService, Depends(get_service)]


def get_ready_service(service: Service) -> ObservationService:
    """The service, once it is ready (a FastAPI dependency; see :func:`require_ready`)."""
    require_ready(service)
    return service


ReadyService = Annotated[ObservationService, Depends(get_ready_service)]


async def read_json(request: Request) -> Any:
    """The request body parsed as JSON, or a 400 saying why it is not (a 415 for a compressed body)."""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise RequestError(
            415,
            "UnsupportedMediaType",
            f"the request body is sent with Content-Encoding {encoding[:40]!r}; the sidecar reads uncompressed "
            "JSON: send the body without Content-Encoding",
        )
    try:
        body = await request.body()
    except ClientDisconnect:  # the client left, or the Gatekeeper already answered 413
        raise RequestError(400, "ClientDisconnected", "the client disconnected before the body was read") from None
    if not body:
        raise RequestError(400, "InvalidJSON", "the request body is empty; send JSON")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(400, "InvalidJSON", f"the request body is not valid JSON: {exc}") from None
    except RecursionError:  # arrays or objects nested thousands deep
        raise RequestError(
            400, "InvalidJSON", "the request body nests arrays or objects too deeply to parse; send a flat document"
        ) from None


# -- the input rules as JSON Schema, for the OpenAPI document --------------------------------------
def _char_class(chars: list[int]) -> str:
    """A regex class body for ``chars``: ranges with \\u escapes (read alike by ECMA, Python and
    Rust regexes), astral characters written as themselves."""
    parts: list[str] = []
    runs: list[list[int]] = []
    for code in chars:
        if runs and code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])

    def one(code: int) -> str:
        return f"\\u{code:04x}" if code <= 0xFFFF else chr(code)

    for first, last in runs:
        parts.append(one(first) if first == last else f"{one(first)}-{one(last)}")
    return "".join(parts)


def _codes(keep) -> list[int]:
    return [code for code in range(sys.maxunicode + 1) if not 0xD800 <= code <= 0xDFFF and keep(chr(code))]


_HIDDEN = _codes(lambda ch: ord(ch) < 32 or ord(ch) == 127 or unicodedata.category(ch) in _INVISIBLE_CATEGORIES)
_SPACES = _codes(lambda ch: ch.isspace())
_HIDDEN_CLASS = _char_class(_HIDDEN)
_HIDDEN_OR_SPACE_CLASS = _char_class(sorted(set(_HIDDEN) | set(_SPACES)))
# check_account: no control, format or line-separator character, and not only whitespace.
ACCOUNT_SCHEMA: dict[str, Any] = {
    "type": "string",
    "minLength": 1,
    "maxLength": MAX_ACCOUNT_ID_LENGTH,
    "pattern": f"^[^{_HIDDEN_CLASS}]*[^{_HIDDEN_OR_SPACE_CLASS}][^{_HIDDEN_CLASS}]*$",
    "description": f"Account id: <= {MAX_ACCOUNT_ID_LENGTH} characters, not only whitespace, no control, format "
    "(zero-width, direction override) or line-separator characters.",
}
# check_meta: a value with something besides whitespace, and no NUL.
TEXT_PATTERN = f"^[^\\u0000]*[^\\u0000{_char_class(_SPACES)}][^\\u0000]*$"


# -- per-client rate limits ---------------------------------------------------------------------------
class RateLimits:
    """The token buckets of one app: bulk observation and the guardrail route each have their own,
    so bulk clients never spend what the guardrail needs."""

    def __init__(self, config) -> None:
        self.header = config.rate_limit_client_header.lower()
        self.observe = TokenBuckets(config.rate_limit_items_per_s, config.rate_limit_burst)
        self.guardrail = TokenBuckets(config.guardrail_rate_limit_per_s, config.guardrail_rate_limit_burst)


def client_of(request: Request, header: str) -> str:
    """Who is calling: the client header's value (a key id the caller picks), else the one token."""
    key = request.headers.get(header)
    return f"key:{key[:128]}" if key else "token"


def require_rate(request: Request, buckets: TokenBuckets, cost: int, endpoint: str) -> None:
    """429 ``RateLimited`` with ``Retry-After`` when the caller is over its rate (nothing of the
    request is observed then: counted as unobserved items, by route)."""
    if not buckets.enabled:
        return
    limits: RateLimits = request.app.state.rate_limits
    wait = buckets.take(client_of(request, limits.header), cost)
    if wait <= 0:
        return
    service: ObservationService = request.app.state.service
    retry = max(1, math.ceil(wait))
    service.metrics.rate_limited.labels(endpoint).inc()
    service.metrics.unobserved.labels(endpoint, "rate_limited").inc(cost)
    raise RequestError(
        429,
        "RateLimited",
        f"this client is over its rate limit ({buckets.rate:g} a second, bursts of {buckets.burst:g}; a client is the "
        f"{limits.header} header's value, else the token); none of the {cost} items was observed: retry after "
        f"{retry} s",
        headers={"Retry-After": str(retry)},
    )
