"""The sidecar's ASGI application: the FastAPI app with its routers, its exception handlers,
and the :class:`Gatekeeper` in front of it.

One router per surface: :mod:`.observe` (``POST /v1/observe``), :mod:`.accounts`
(``/v1/accounts``), :mod:`.campaigns` (``/v1/campaigns``), :mod:`.guardrail` (LiteLLM's
Generic Guardrail API) and :mod:`.operations` (``/healthz``, ``/readyz``, ``/metrics``).
Every HTTP error has the body ``{"error": {"type", "message", "field"?}}`` (see
:mod:`.http`). Serve it with uvicorn::

    uvicorn.run(create_app(load_config()), host="127.0.0.1", port=8321)
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import unquote_to_bytes

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from prometheus_client import Gauge
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match, Route

from .. import __version__
from ..engine import Engine
from ..errors import (
    ConfigError,
    InputError,
    InvalidAccountError,
    InvalidPromptError,
    InvalidTimestampError,
    ProbewatchError,
    UnknownAccountError,
    UnknownCampaignError,
)
from ..integrations.context import SentTexts
from . import accounts, campaigns, console, guardrail, observe, operations
from .config import ServerConfig, require_auth_choice
from .guardrail import GUARDRAIL_PATH
from .http import ACCOUNT_SCHEMA, RateLimits, RequestError, error_response
from .logs import REQUEST_ID_HEADER, request_id, request_id_from
from .metrics import ServerMetrics
from .service import ObservationService, StorageFailedError

log = logging.getLogger("probewatch.serve")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
ROUTERS = (observe.router, accounts.router, campaigns.router, guardrail.router, operations.router, console.router)
# The request field each probewatch error is about.
ERROR_FIELDS = {
    InvalidAccountError: "account",
    UnknownAccountError: "account",
    UnknownCampaignError: "campaign",
    InvalidPromptError: "prompt",
    InvalidTimestampError: "ts",
}
HTTP_ERROR_TYPES = {404: "NotFound", 405: "MethodNotAllowed"}


def create_app(config: ServerConfig | None = None, engine: Engine | None = None) -> Gatekeeper:
    """The ASGI application. ``engine`` lets tests and embedders pass a ready engine.

    Raises :class:`~probewatch.errors.ConfigError` when ``config`` has no ``api_token`` and
    not ``no_auth``: the service never serves open by accident."""
    config = config or ServerConfig()
    require_auth_choice(config)
    if config.kafka_mode:  # the Kafka workers hold the state (probewatch.stream.frontend)
        from ..stream.frontend import KafkaObservationService

        if engine is not None:
            raise ConfigError("kafka_mode answers from the Kafka workers' verdicts; it takes no local engine")
        config = config.replace(console=False)  # the console reads a local engine's accounts
        service: ObservationService = KafkaObservationService(config)  # type: ignore[assignment]
    else:
        service = ObservationService(config, engine)
    Gauge(
        "probewatch_sidecar_mode", "1 for the mode this sidecar runs in: local or kafka", ("mode",),
        registry=service.metrics.registry,
    ).labels("kafka" if config.kafka_mode else "local").set(1)  # fmt: skip
    app = FastAPI(
        # no 307 to the same path without its trailing slash: its Location would be built from
        # the client's Host header, and an API client gets an empty body instead of an error
        redirect_slashes=False,
        title="probewatch sidecar",
        version=__version__,
        lifespan=_lifespan,
        description="Per-account model-extraction detection for LLM inference nodes.",
    )
    app.state.service = service  # what the routers' dependencies hand them
    app.state.rate_limits = RateLimits(config)
    # what each account has sent, for the guardrail route's context texts (this process's own)
    app.state.sent_texts = (
        SentTexts(
            per_request=config.guardrail_context_texts_per_request,
            instructions_every=config.guardrail_context_instructions_every,
            few_shot_turns=config.guardrail_context_answered_turns,
        )
        if config.guardrail_observe_context
        else None
    )
    if config.kafka_mode:  # first: its /readyz says what ready means there
        from ..stream.frontend import router as kafka_router

        app.include_router(kafka_router)
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(ProbewatchError, _probewatch_error)
    app.add_exception_handler(RequestValidationError, _invalid_parameter)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _internal_error)
    app.openapi = lambda: _openapi_with_errors(app)
    app.state.routes = _labelled_routes(app)
    return Gatekeeper(app, config, service.metrics, app.state.routes)


_ERROR_DESCRIPTIONS = {
    400: "the body is not JSON (or nests too deeply)",
    401: "missing or wrong bearer token",
    404: "unknown account or campaign",
    413: "body or item count over the limit",
    422: "a field or parameter of the wrong shape; the error names it",
    429: "the observation queue is full, or this client is over its rate limit: nothing observed, see Retry-After",
    503: "loading, or unable to acknowledge (see /readyz)",
}


def _openapi_with_errors(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document plus what the Gatekeeper and the handlers add: the bearer scheme and
    every error status a route can answer, all with the one error body."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
    components = schema.setdefault("components", {})
    components.setdefault("securitySchemes", {})["bearer"] = {"type": "http", "scheme": "bearer"}
    components.setdefault("schemas", {})["ErrorDocument"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["type", "message"],
                "properties": {"type": {"type": "string"}, "message": {"type": "string"}, "field": {"type": "string"}},
            }
        },
    }
    error_body = {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorDocument"}}}
    for path, by_method in schema.get("paths", {}).items():
        for method, operation in by_method.items():
            statuses = {503}
            if path not in OPEN_PATHS:
                operation["security"] = [{"bearer": []}]
                statuses |= {401, 422}
            if method == "post":
                statuses |= {400, 413}
            if "{" in path:
                statuses.add(404)
            if path in ("/v1/observe", GUARDRAIL_PATH):
                statuses.add(429)
            responses = operation.setdefault("responses", {})
            for status in sorted(statuses):
                responses.setdefault(str(status), {"description": _ERROR_DESCRIPTIONS[status], "content": error_body})
            if 429 in statuses:
                responses["429"]["headers"] = {
                    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer", "minimum": 1}}
                }
            for parameter in operation.get("parameters", []):
                _tighten_parameter(parameter)
    app.openapi_schema = schema
    return schema


def _tighten_parameter(parameter: dict[str, Any]) -> None:
    """A parameter's schema as the route checks it: an account id's rules, and no ``null``
    branch for an optional query parameter (a query string has no null; absent is absent)."""
    schema = parameter.get("schema", {})
    if parameter.get("in") == "path" and parameter.get("name") == "account":
        parameter["schema"] = {**ACCOUNT_SCHEMA, "title": schema.get("title", "Account")}
        return
    branches = schema.get("anyOf")
    if parameter.get("in") == "query" and branches:
        kept = [branch for branch in branches if branch.get("type") != "null"]
        if len(kept) == 1:
            rest = {key: value for key, value in schema.items() if key != "anyOf"}
            parameter["schema"] = {**rest, **kept[0]}


def _labelled_routes(app: FastAPI) -> list[BaseRoute]:
    """The routes whose templates label the request metrics: the app's own (the OpenAPI
    document and docs pages) and every router's. Read from the routers themselves: newer
    FastAPI versions keep an included router as a single entry of ``app.router.routes``."""
    own = [route for route in app.router.routes if isinstance(route, Route)]
    return own + [route for router in ROUTERS for route in router.routes]


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Load the model and restore state in the background (``/readyz`` turns 200 after);
    at shutdown, drain the queue and write a final snapshot."""
    service: ObservationService = app.state.service
    if service.config.no_auth:
        log.warning("!" * 78)
        log.warning(
            "--no-auth: every endpoint, including account reports and forget, is open to every process on "
            "this machine (%s:%s). For development only; set PROBEWATCH_API_TOKEN anywhere else.",
            service.config.host,
            service.config.port,
        )
        log.warning("!" * 78)
    loader = asyncio.create_task(service.start(), name="probewatch-start")
    try:
        yield
    finally:
        service.stopping()  # a start waiting for the data_dir's lock gives up, rather than hold the exit
        await asyncio.gather(loader, return_exceptions=True)
        await service.stop()


# -- exception handlers: every error body is {"error": {"type", "message", "field"?}} ----------------
async def _request_error(_request: Request, exc: RequestError) -> JSONResponse:
    return error_response(exc.status, exc.error_type, exc.message, exc.field, headers=exc.headers)


async def _probewatch_error(_request: Request, exc: ProbewatchError) -> JSONResponse:
    if isinstance(exc, (UnknownAccountError, UnknownCampaignError)):
        status = 404
    elif isinstance(exc, InputError):
        status = 422
    elif isinstance(exc, StorageFailedError):
        status = 503
    else:
        status = 500
    field = next((name for kind, name in ERROR_FIELDS.items() if isinstance(exc, kind)), None)
    return error_response(status, type(exc).__name__, str(exc), field)


async def _invalid_parameter(_request: Request, exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own checks of query and path parameters (``?limit=0``, ``?level=purple``)."""
    errors = exc.errors()
    location, *path = errors[0]["loc"]
    field = ".".join(str(part) for part in path) or None
    problems = [f"{'.'.join(str(p) for p in e['loc'][1:])}: {e['msg']}; got {e.get('input')!r}" for e in errors]
    error_type = "InvalidBody" if location == "body" else "InvalidParameter"
    return error_response(422, error_type, "; ".join(problems), field)


async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    """Routing errors (no such path, wrong method)."""
    error_type = HTTP_ERROR_TYPES.get(exc.status_code, "HTTPError")
    headers = exc.headers
    message = str(exc.detail)
    if exc.status_code == 405:
        # Starlette names the methods of the first route that matched the path; GET and DELETE
        # of /v1/accounts/{account} are two routes, so Allow lists every route's.
        allowed = ", ".join(_allowed_methods(request))
        headers = {**(headers or {}), "Allow": allowed}
        message = f"method {request.method} is not allowed on this path; allowed: {allowed}"
    return error_response(exc.status_code, error_type, message, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    methods: set[str] = set()
    for route in request.app.state.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    if "GET" in methods:  # the Gatekeeper answers HEAD wherever GET is served
        methods.add("HEAD")
    return sorted(methods)


def _loopback_host(host: bytes | None) -> bool:
    """Whether a Host header names this machine's loopback interface (absent: HTTP/1.0, allowed)."""
    if host is None:
        return True
    name = host.decode("latin-1").strip().lower()
    if name.startswith("["):  # [::1]:8321
        return name.partition("]")[0] == "[::1"
    name = name.rpartition(":")[0] if name.count(":") == 1 else name
    if name == "localhost" or name == "::1":
        return True
    try:
        return ipaddress.IPv4Address(name).is_loopback
    except ValueError:
        return False


def _path_problem(scope: Scope) -> tuple[int, str, str] | None:
    """(status, type, message) when the request path cannot name anything, else None.

    Percent-escapes must decode to UTF-8 (the server would turn a bad one into U+FFFD, another
    id: 400). A newline names nothing (404): a route's pattern ends at a final newline, so
    ``/v1/accounts/a%0A`` would act on account ``a``. Other control characters reach the
    handlers, which refuse them as ids."""
    raw = scope.get("raw_path")
    if raw is not None:
        try:
            unquote_to_bytes(raw.split(b"?", 1)[0]).decode("utf-8")
        except UnicodeDecodeError as exc:
            message = f"the path is not percent-encoded UTF-8 (byte {exc.start} of the decoded path is not valid UTF-8)"
            return 400, "InvalidPath", message
    try:  # the same for the query string: its values would be decoded with U+FFFD for bad bytes
        unquote_to_bytes(scope.get("query_string", b"").replace(b"+", b" ")).decode("utf-8")
    except UnicodeDecodeError as exc:
        message = f"the query string is not percent-encoded UTF-8 (byte {exc.start} decoded is not valid UTF-8)"
        return 400, "InvalidParameter", message
    newline = scope["path"].find("\n")
    if newline >= 0:
        message = f"nothing here: the path holds a newline (%0A) at position {newline}, and no id contains one"
        return 404, "NotFound", message
    return None


async def _internal_error(_request: Request, _exc: Exception) -> JSONResponse:
    # Starlette still re-raises the exception, so uvicorn logs its traceback; the body tells nothing inside.
    return error_response(500, "InternalError", "the sidecar failed to answer this request; see its log")


class Gatekeeper:
    """Outermost ASGI layer: request id (``X-Request-ID``), request metrics, bearer-token check
    and body size limit, all before the body is read."""

    def __init__(self, app: FastAPI, config: ServerConfig, metrics: ServerMetrics, routes: list[BaseRoute]):
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self.max_body_bytes = config.max_body_bytes
        self.max_in_flight = config.max_connections
        self.in_flight = 0
        self._token = config.api_token.encode() if config.api_token else None
        self._no_auth = config.no_auth
        self._console = config.console  # the console checks the token or its session cookie itself

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        rid = request_id_from(dict(scope.get("headers") or []).get(REQUEST_ID_HEADER))
        token = request_id.set(rid)
        head = scope.get("method") == "HEAD"
        if head:  # HEAD is GET without the body (RFC 9110), wherever GET is served
            scope = {**scope, "method": "GET"}
        # every answer under /ui, the JSON errors of a path no console route serves included,
        # carries the console's headers (no framing, no sniffing, no caching)
        console_headers = console.SECURITY_HEADERS if self._console and console.is_console_path(scope["path"]) else None
        reply = _Reply(send, rid, head, console_headers)
        self.in_flight += 1
        try:
            if self.in_flight > self.max_in_flight:
                message = (
                    f"the sidecar is serving {self.max_in_flight} requests at once (max_connections); "
                    "nothing of this request was done: retry after 1 s"
                )
                await reply.error(503, "Overloaded", message, {"retry-after": "1"})
            else:
                await self._admit(scope, receive, reply)
        finally:
            self.in_flight -= 1
            request_id.reset(token)
            endpoint = self._route_label(scope)
            self.metrics.requests.labels(endpoint, scope.get("method", ""), str(reply.status)).inc()
            self.metrics.request_latency.labels(endpoint).observe(time.perf_counter() - started)

    async def _admit(self, scope: Scope, receive: Receive, reply: _Reply) -> None:
        headers = dict(scope.get("headers") or [])
        if self._no_auth and not _loopback_host(headers.get(b"host")):
            # Without a token, a page whose name an attacker re-points at 127.0.0.1 (DNS
            # rebinding) would be this server's own origin to the browser: only loopback names.
            host = headers.get(b"host", b"").decode("latin-1")[:100]
            message = (
                f"with --no-auth the sidecar answers only requests addressed to a loopback name (Host 127.0.0.1, "
                f"localhost or [::1], with the port); got Host {host!r}. Serve with a token to use another name"
            )
            await reply.error(403, "ForeignHost", message)
            return
        console_page = self._console and console.is_console_path(scope["path"])
        if scope["path"] not in OPEN_PATHS and not console_page and not self._authorized(headers):
            message = "missing or wrong API token: send 'Authorization: Bearer <token>'"
            await reply.error(401, "Unauthorized", message, {"www-authenticate": "Bearer"})
            return
        problem = _path_problem(scope)
        if problem is not None:
            await reply.error(*problem)
            return
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body_bytes:
            message = f"request body is {int(length)} bytes; the limit is {self.max_body_bytes} (max_body_bytes); split the batch"
            await reply.error(413, "PayloadTooLarge", message)
            return
        await self.app(scope, self._limited(receive, reply), reply.send)

    def _limited(self, receive: Receive, reply: _Reply) -> Receive:
        """A receive() that answers 413 as soon as a chunked body crosses the limit, then tells
        the app the client left."""
        seen = 0

        async def receive_limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes and not reply.started:
                    limit = self.max_body_bytes
                    text = f"request body exceeds the limit of {limit} bytes (max_body_bytes); split the batch"
                    await reply.error(413, "PayloadTooLarge", text)
                    return {"type": "http.disconnect"}
            return message

        return receive_limited

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        if self._token is None:
            return True
        supplied = None
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            supplied = auth[7:].strip()
        elif b"x-api-key" in headers:  # what LiteLLM's generic guardrail sends for api_key
            supplied = headers[b"x-api-key"].strip()
        return supplied is not None and hmac.compare_digest(supplied, self._token)

    def _route_label(self, scope: Scope) -> str:
        """The route template (never the path itself: it may hold an account id)."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path", "other")
        return "unmatched"


class _Reply:
    """The send() side of one request: remembers the status, and once the Gatekeeper has
    answered by itself, drops the app's late reply."""

    def __init__(
        self,
        send: Send,
        request_id: str | None = None,
        head: bool = False,
        extra_headers: dict[str, str] | None = None,
    ):
        self._send = send
        self._head = head  # a HEAD request: headers as for GET, no body bytes
        self._request_id = request_id.encode() if request_id else None
        # headers every answer carries, unless the app set them itself
        self._extra = [(k.lower().encode(), v.encode()) for k, v in (extra_headers or {}).items()]
        self.status = 500  # what the metrics record if nothing is ever sent
        self.started = False
        self._closed = False

    async def send(self, message: Message) -> None:
        if self._closed:
            return
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.started = True
            headers = list(message.get("headers") or [])
            if self._extra:
                present = {k.lower() for k, _ in headers}
                headers += [(k, v) for k, v in self._extra if k not in present]
            if self._request_id is not None:  # echoed, so a client can find this request in the log
                headers = [(k, v) for k, v in headers if k.lower() != REQUEST_ID_HEADER]
                headers.append((REQUEST_ID_HEADER, self._request_id))
            message = {**message, "headers": headers}
        elif self._head and message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await self._send(message)

    async def error(self, status: int, error_type: str, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer with the sidecar's error body (rendered as the exception handlers render it)."""
        response = error_response(status, error_type, message, headers=headers)
        await self.send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
        await self.send({"type": "http.response.body", "body": response.body})
        self._closed = True
