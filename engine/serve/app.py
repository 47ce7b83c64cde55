"""The HTTP face of the sidecar (FastAPI on uvicorn).

Status codes of ``POST /v1/observe``: 200 with one result per item in order, each either a
verdict or that item's error; 422 when *every* item was invalid (same body shape), so a
client that sent only garbage notices; 400 for a body that is not JSON; 422 for JSON of
the wrong shape; 413 for a body over ``max_body_bytes``; 401 without a valid token; 503
while the model loads.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, Field
from starlette.requests import ClientDisconnect

from ..types import LEVELS
from ..engine import Engine
from ..errors import InvalidAccountError, ProbewatchError, UnknownAccountError
from ..io.validation import check_account
from .config import ServerConfig
from .metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from .service import Item, ObservationService, Outcome, verdict_action

log = logging.getLogger("probewatch.server")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
GUARDRAIL_PATH = "/beta/litellm_basic_guardrail_api"


# -- request documents (for the OpenAPI document; bodies are parsed by hand for clear errors) --
class ObserveItem(BaseModel):
    account: str = Field(description="Account id (<= 256 chars, no control characters).")
    prompt: str = Field(description="The prompt text; longer than max_prompt_chars is truncated or rejected.")
    ts: float | None = Field(default=None, description="Unix seconds; default: the time the sidecar received it.")


class ObserveRequest(BaseModel):
    items: list[ObserveItem] = Field(description="One or more items; a bare item object or a JSON list also works.")


class GuardrailRequest(BaseModel):
    input_type: str = Field(description="'request' (observed) or 'response' (always NONE).")
    texts: list[str] | None = None
    structured_messages: list[dict[str, Any]] | None = None
    request_data: dict[str, Any] = Field(description="user_api_key_hash, user_api_key_team_id, ...")
    litellm_call_id: str | None = None
    model: str | None = None


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _error_body(status: int, message: str, **extra: Any) -> JSONResponse:
    return JSONResponse({"error": {"status": status, "message": message, **extra}}, status_code=status)


class Gatekeeper:
    """Outermost ASGI layer: request metrics, bearer-token check and body size limit, all
    before the body is read."""

    def __init__(self, app: FastAPI, config: ServerConfig, service: ObservationService):
        self.app = app
        self.config = config
        self.service = service
        self._token = config.api_token.encode() if config.api_token else None

    def _route_label(self, scope) -> str:
        from starlette.routing import Match  # noqa: PLC0415

        for route in self.app.router.routes:
            match, _ = route.matches(scope)
            if match != Match.NONE:
                return getattr(route, "path", "other")
        return "unmatched"

    def _authorized(self, scope) -> bool:
        if self._token is None:
            return True
        headers = dict(scope.get("headers") or [])
        supplied = None
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() == b"bearer ":
            supplied = auth[7:].strip()
        elif b"x-api-key" in headers:  # what LiteLLM's generic guardrail sends for api_key
            supplied = headers[b"x-api-key"].strip()
        return supplied is not None and hmac.compare_digest(supplied, self._token)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        endpoint = self._route_label(scope)
        status_holder = {"status": 500}
        responded = {"done": False}

        async def send_tracking(message):
            if responded["done"]:
                return  # we already answered 413; the app's late reply is dropped
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
            await send(message)

        try:
            if scope["path"] not in OPEN_PATHS and not self._authorized(scope):
                await self._reply(send_tracking, 401, "missing or wrong API token: send 'Authorization: Bearer <token>'",
                                  {"www-authenticate": "Bearer"})
                return
            length = dict(scope.get("headers") or []).get(b"content-length")
            limit = self.config.max_body_bytes
            if length is not None and length.isdigit() and int(length) > limit:
                await self._reply(send_tracking, 413, f"request body is {int(length)} bytes; the limit is {limit} "
                                  "(max_body_bytes); split the batch")
                return
            seen = 0

            async def receive_limited():
                nonlocal seen
                message = await receive()
                if message["type"] == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit and not responded["done"]:
                        # Chunked body over the limit: answer now and tell the app the client left.
                        await self._reply(send_tracking, 413, f"request body exceeds the limit of {limit} bytes "
                                          "(max_body_bytes); split the batch")
                        responded["done"] = True
                        return {"type": "http.disconnect"}
                return message

            await self.app(scope, receive_limited, send_tracking)
        finally:
            self.service.metrics.requests.inc(endpoint, scope.get("method", ""), str(status_holder["status"]))
            self.service.metrics.request_latency.observe(time.perf_counter() - started, endpoint)

    @staticmethod
    async def _reply(send, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        body = json.dumps({"error": {"status": status, "message": message}}).encode()
        raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        raw_headers += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
        await send({"type": "http.response.start", "status": status, "headers": raw_headers})
        await send({"type": "http.response.body", "body": body})


def _outcome_dict(index: int, outcome: Outcome) -> dict[str, Any]:
    if outcome.error is not None:
        return {"index": index, "error": {"type": type(outcome.error).__name__, "message": str(outcome.error)}}
    verdict = dict(outcome.verdict)
    verdict["action"] = verdict_action(verdict)
    out = {"index": index, **verdict, "truncated": outcome.truncated}
    if outcome.fallback is not None:
        out["fallback"] = outcome.fallback
        out["queued"] = outcome.queued
        out.update(outcome.extra)
    return out


async def _read_json(request: Request) -> Any:
    try:
        body = await request.body()
    except ClientDisconnect:  # the client left, or the Gatekeeper already answered 413
        raise BadRequest(400, "the client disconnected before the body was read") from None
    if not body:
        raise BadRequest(400, "the request body is empty; send JSON")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"the request body is not valid JSON: {exc}") from None


def _items_of(payload: Any, max_items: int) -> list[Any]:
    if isinstance(payload, dict) and "items" in payload:
        extra = sorted(set(payload) - {"items"})
        if extra:
            raise BadRequest(422, f"unexpected keys {extra} next to 'items'")
        items = payload["items"]
        if not isinstance(items, list):
            raise BadRequest(422, f"'items' must be a list of {{account, prompt, ts?}} objects; got {type(items).__name__}")
    elif isinstance(payload, dict):
        items = [payload]
    elif isinstance(payload, list):
        items = payload
    else:
        raise BadRequest(422, "the body must be an {account, prompt, ts?} object, a list of them, or {\"items\": [...]}; "
                              f"got a JSON {type(payload).__name__}")
    if not items:
        raise BadRequest(422, "no items: send at least one {account, prompt, ts?} object")
    if len(items) > max_items:
        raise BadRequest(413, f"{len(items)} items in one request; the limit is {max_items} (max_items_per_request)")
    return items


def create_app(config: ServerConfig | None = None, engine: Engine | None = None) -> Any:
    """The ASGI application. ``engine`` lets tests and embedders pass a ready engine."""
    config = config or ServerConfig()
    service = ObservationService(config, engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        if config.api_token is None:
            log.warning("!" * 78)
            log.warning("NO API TOKEN CONFIGURED: every endpoint, including account reports and forget, is open to "
                        "anyone who can reach %s:%s. Set PROBEWATCH_API_TOKEN or api_token.", config.host, config.port)
            log.warning("!" * 78)
        loader = asyncio.create_task(service.start(), name="probewatch-start")
        try:
            yield
        finally:
            await asyncio.gather(loader, return_exceptions=True)
            await service.stop()

    app = FastAPI(title="probewatch sidecar", version=_version(), lifespan=lifespan,
                  description="Per-account model-extraction detection for LLM inference nodes.")
    app.state.service = service

    @app.exception_handler(BadRequest)
    async def _bad_request(_request: Request, exc: BadRequest):
        return _error_body(exc.status, exc.message)

    @app.exception_handler(UnknownAccountError)
    async def _unknown(_request: Request, exc: UnknownAccountError):
        return _error_body(404, str(exc))

    @app.exception_handler(InvalidAccountError)
    async def _bad_account(_request: Request, exc: InvalidAccountError):
        return _error_body(422, str(exc))

    def _require_ready() -> None:
        if not service.ready:
            detail = service.load_error or "the model is loading and state is being restored; retry shortly"
            raise BadRequest(503, f"not ready: {detail}")

    @app.get("/healthz", tags=["operations"])
    async def healthz():
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["operations"])
    async def readyz():
        """Readiness: the model is loaded and state restored from snapshot and journal."""
        if service.ready:
            return {"status": "ready", "snapshot_seq": service.covered_seq, "journal_seq": service.journal.last_seq}
        return JSONResponse({"status": "failed" if service.load_error else "loading", "error": service.load_error},
                            status_code=503)

    @app.get("/metrics", tags=["operations"], response_class=PlainTextResponse)
    async def metrics():
        """Prometheus text format."""
        return PlainTextResponse(service.metrics.render(), media_type=METRICS_CONTENT_TYPE)

    @app.post("/v1/observe", tags=["observe"],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": ObserveRequest.model_json_schema()}}}})
    async def observe(request: Request):
        """Observe one or many prompts; verdicts come back in order."""
        received_at = time.time()
        payload = await _read_json(request)
        raw_items = _items_of(payload, config.max_items_per_request)
        _require_ready()
        results: list[dict[str, Any] | None] = [None] * len(raw_items)
        prepared: list[tuple[int, Item]] = []
        for i, raw in enumerate(raw_items):
            if not isinstance(raw, dict):
                results[i] = {"index": i, "error": {"type": "InvalidItem", "message":
                              f"an item must be an object {{account, prompt, ts?}}; got a JSON {type(raw).__name__}"}}
                continue
            unknown = sorted(set(raw) - {"account", "prompt", "ts"})
            missing = [k for k in ("account", "prompt") if k not in raw]
            if unknown or missing:
                results[i] = {"index": i, "error": {"type": "InvalidItem", "message":
                              f"an item has keys account, prompt and optional ts; missing {missing}, unexpected {unknown}"}}
                continue
            try:
                prepared.append((i, service.prepare_item(raw["account"], raw["prompt"], raw.get("ts"), received_at)))
            except ProbewatchError as exc:
                results[i] = {"index": i, "error": {"type": type(exc).__name__, "message": str(exc)}}
        outcomes = await service.observe([it for _, it in prepared]) if prepared else []
        for (i, it), outcome in zip(prepared, outcomes):
            results[i] = _outcome_dict(i, outcome)
            if outcome.verdict is not None:
                service.metrics.verdicts.inc(outcome.verdict["level"])
            if it.truncated:
                service.metrics.truncated.inc()
        n_errors = sum(1 for r in results if "error" in r)
        if n_errors:
            service.metrics.item_errors.inc(amount=n_errors)
        status = 422 if n_errors == len(results) else 200
        return JSONResponse({"results": results, "errors": n_errors}, status_code=status)

    @app.get("/v1/accounts", tags=["accounts"])
    async def list_accounts(level: str | None = Query(None, description="ok | watch | flag"),
                            limit: int | None = Query(None, ge=1, description="page size"),
                            after: str | None = Query(None, description="return ids after this one (next_after)")):
        """Account ids held now, sorted, paginated by id cursor."""
        _require_ready()
        if level is not None and level not in LEVELS:
            raise BadRequest(422, f"level must be one of {LEVELS}; got {level!r}")
        size = min(limit or config.page_size_default, config.page_size_max)
        ids = sorted(await service.accounts(level))
        if after is not None:
            import bisect  # noqa: PLC0415

            ids = ids[bisect.bisect_right(ids, after):]
        page = ids[:size]
        return {"accounts": page, "level": level, "next_after": page[-1] if len(ids) > size else None}

    @app.get("/v1/accounts/{account:path}", tags=["accounts"])
    async def account_report(account: str):
        """The account's report: history size, features with benign percentiles, risk over time."""
        _require_ready()
        check_account(account)
        return await service.report(account)

    @app.delete("/v1/accounts/{account:path}", tags=["accounts"])
    async def forget_account(account: str):
        """Forget an account (privacy requests); journaled, and a snapshot follows."""
        _require_ready()
        existed = await service.forget(account)
        return {"account": account, "forgotten": existed}

    @app.post(GUARDRAIL_PATH, tags=["litellm"],
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": GuardrailRequest.model_json_schema()}}}})
    async def litellm_guardrail(request: Request):
        """LiteLLM Generic Guardrail API: observe the request's prompt under the configured
        account id and answer NONE or BLOCKED."""
        received_at = time.time()
        payload = await _read_json(request)
        if not isinstance(payload, dict):
            raise BadRequest(422, "the guardrail request must be a JSON object")
        if payload.get("input_type", "request") != "request":
            return {"action": "NONE"}  # responses are not prompts: nothing to observe
        request_data = payload.get("request_data") or {}
        if not isinstance(request_data, dict):
            raise BadRequest(422, "request_data must be an object")
        account = request_data.get(config.guardrail_account_field)
        prompt = _guardrail_prompt(payload, config.guardrail_prompt_source)
        if not account or prompt is None:
            # Nothing to attribute or nothing to read: never block on missing metadata.
            return {"action": "NONE"}
        try:
            item = service.prepare_item(str(account), prompt, None, received_at)
        except ProbewatchError as exc:
            log.debug("guardrail item not observed: %s", exc)
            return {"action": "NONE"}
        outcome = (await service.observe([item]))[0]
        if outcome.verdict is None:
            return {"action": "NONE"}
        verdict = outcome.verdict
        service.metrics.verdicts.inc(verdict["level"])
        if outcome.fallback is not None:
            if config.fail_mode == "closed":
                return {"action": "BLOCKED", "blocked_reason": f"probewatch unavailable ({outcome.fallback}); failing closed"}
            return {"action": "NONE"}
        action = {"flag": config.guardrail_action_on_flag, "watch": config.guardrail_action_on_watch}.get(
            verdict["level"], "NONE")
        if action == "BLOCKED":
            return {"action": "BLOCKED", "blocked_reason":
                    f"probewatch: this account's traffic looks like model extraction (level {verdict['level']})"}
        return {"action": "NONE"}

    return Gatekeeper(app, config, service)


def _guardrail_prompt(payload: dict[str, Any], source: str) -> str | None:
    texts = payload.get("texts") or []
    texts = [t for t in texts if isinstance(t, str) and t.strip()]
    if source == "joined":
        return "\n".join(texts) if texts else None
    for message in reversed(payload.get("structured_messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            text = _message_text(message.get("content"))
            if text:
                return text
    return texts[-1] if texts else None


def _message_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content if content.strip() else None
    if isinstance(content, list):
        parts = [p.get("text") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)]
        joined = "\n".join(parts)
        return joined if joined.strip() else None
    return None


def _version() -> str:
    from .. import __version__  # noqa: PLC0415

    return __version__
