"""``POST /v1/observe``: one or many prompts in, one result per item out, in order.

An item is ``{account, prompt, ts?, meta?}``; ``meta`` is optional request metadata (``ip``,
``network``, ``user_agent``, ``org``, ``payment``, ``key_created``: strings of at most 512
characters, or numbers) that links accounts sharing infrastructure into campaigns. Verdicts
carry ``campaign`` (null unless the account is in a campaign at watch or flag).

Status codes: 200 with one result per item, each a verdict, a failure-policy fallback
(``fallback`` names the cause; ``queued: false`` means the item was not observed and will
not be) or that item's error when its prompt cannot be observed (blank, NUL, over
``max_prompt_chars`` with ``prompt_overflow: reject``); 422 when any item breaks the
published item schema (wrong type, unknown key, invalid account id, timestamp or meta):
nothing of that request is observed and the error names the item and field; 400 for a body
that is not JSON; 413 for more than ``max_items_per_request`` items; 429 with
``Retry-After`` when the queue is full or the client is over its rate limit (nothing
observed); 503 while the model loads. (The Gatekeeper answers 401 without a valid token and
413 for a body over ``max_body_bytes``.)
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from ..campaigns.metadata import MAX_META_VALUE_CHARS, META_KEYS
from ..errors import ProbewatchError
from ..integrations.meta import clean_meta
from ..io.validation import MAX_TIMESTAMP, MIN_TIMESTAMP, check_account, check_timestamp, decimal_digits
from .http import ACCOUNT_SCHEMA, RequestError, Service, read_json, require_rate, require_ready
from .metrics import ServerMetrics
from .service import Item, ObservationService, Outcome, verdict_action

router = APIRouter(tags=["observe"])

OBSERVE_PATH = "/v1/observe"
ITEM_KEYS = ("account", "prompt", "ts", "meta")
REQUIRED_ITEM_KEYS = ("account", "prompt")
MAX_META_NUMBER = 1e15  # a number in meta is written as text: keep it short
MAX_LISTED_PROBLEMS = 5


class ObserveItem(BaseModel):
    """The item schema, for tests and the OpenAPI document (bodies are checked by hand, for
    clear errors; :data:`ITEM_SCHEMA` is what the document publishes)."""

    account: str
    prompt: str
    ts: float | None = None
    meta: dict[str, str | float | None] | None = None


# Meta values come partly from end users (a User-Agent header): a blank or long one must not
# cost the batch its observation, so values are cleaned (blank dropped, NUL removed, cut to
# MAX_META_VALUE_CHARS), never refused; only the shape (known keys, text or number) is a rule.
_META_VALUE = {
    "anyOf": [
        {
            "type": "string",
            "description": f"blank values are dropped, NUL removed, longer than {MAX_META_VALUE_CHARS} characters cut",
        },
        {"type": "number", "minimum": -MAX_META_NUMBER, "maximum": MAX_META_NUMBER},
        {"type": "null"},
    ]
}
# Every rule a whole request is refused for (422) is here; a prompt's text is checked per item.
ITEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": list(REQUIRED_ITEM_KEYS),
    "additionalProperties": False,
    "properties": {
        "account": ACCOUNT_SCHEMA,
        "prompt": {
            "type": "string",
            "description": "The prompt text. One that is blank, holds NUL, or is over max_prompt_chars with "
            "prompt_overflow: reject gets that item's error in the 200 answer (not observed); longer ones are "
            "truncated and marked.",
        },
        "ts": {
            "anyOf": [{"type": "number", "minimum": MIN_TIMESTAMP, "maximum": MAX_TIMESTAMP}, {"type": "null"}],
            "description": "Unix seconds; default: the time the sidecar received it.",
        },
        "meta": {
            "anyOf": [
                {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        key: {**_META_VALUE, "description": f"{what} (only a salted hash is kept)"}
                        for key, what in META_KEYS.items()
                    },
                },
                {"type": "null"},
            ],
            "description": "Request metadata that links accounts sharing infrastructure into campaigns.",
        },
    },
}
_ITEM_LIST = {"type": "array", "minItems": 1, "items": ITEM_SCHEMA}
REQUEST_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {
            "type": "object",
            "required": ["items"],
            "additionalProperties": False,
            "properties": {"items": {**_ITEM_LIST, "description": "at most max_items_per_request (413 past it)"}},
        },
        ITEM_SCHEMA,
        _ITEM_LIST,
    ],
    "description": '{"items": [...]}, one bare item, or a JSON list of items.',
}
_REQUEST_BODY = {"required": True, "content": {"application/json": {"schema": REQUEST_SCHEMA}}}


@router.post(OBSERVE_PATH, openapi_extra={"requestBody": _REQUEST_BODY})
async def observe(request: Request, service: Service) -> JSONResponse:
    """Observe one or many prompts; verdicts come back in order."""
    received_at = time.time()
    raw_items = _items_of(await read_json(request), service.config.max_items_per_request)
    _refuse_invalid_items(raw_items)
    require_ready(service)  # after the body checks: a malformed request is told so even while loading
    results, prepared = _prepare(service, raw_items, received_at)
    if prepared:
        require_rate(request, request.app.state.rate_limits.observe, len(prepared), OBSERVE_PATH)
    if prepared and not service.has_room(len(prepared)):
        # Nothing of this request is observed: say so with a status a client backs off on,
        # never with verdicts that look like answers.
        service.metrics.fallbacks.labels("overloaded").inc(len(prepared))
        service.metrics.unobserved.labels(OBSERVE_PATH, "overloaded").inc(len(prepared))
        raise RequestError(
            429,
            "Overloaded",
            f"the observation queue is full ({service.config.queue_capacity} items) or backed up (its oldest item "
            f"waited a quarter of the request deadline); none of the {len(prepared)} items was observed: retry after "
            f"{service.config.overload_retry_after_s} s",
            headers={"Retry-After": str(service.config.overload_retry_after_s)},
        )
    outcomes = await service.observe([item for _, item in prepared]) if prepared else []
    for (index, item), outcome in zip(prepared, outcomes, strict=True):
        results[index] = _outcome_dict(index, outcome)
        _count(service.metrics, item, outcome)
    n_errors = sum(1 for result in results if "error" in result)
    if n_errors:
        service.metrics.item_errors.inc(n_errors)
    if len(prepared) < len(raw_items):
        service.metrics.unobserved.labels(OBSERVE_PATH, "invalid_prompt").inc(len(raw_items) - len(prepared))
    return JSONResponse({"results": results, "errors": n_errors})


def _items_of(payload: Any, max_items: int) -> list[Any]:
    """The raw items of a body: ``{"items": [...]}``, a bare item, or a JSON list of items."""
    if isinstance(payload, dict) and "items" in payload:
        extra = sorted(set(payload) - {"items"})
        if extra:
            raise RequestError(422, "InvalidBody", f"unexpected keys {extra} next to 'items'")
        items = payload["items"]
        if not isinstance(items, list):
            raise RequestError(
                422,
                "InvalidBody",
                f"'items' must be a list of {{account, prompt, ts?, meta?}} objects; got {type(items).__name__}",
                field="items",
            )
    elif isinstance(payload, dict):
        items = [payload]
    elif isinstance(payload, list):
        items = payload
    else:
        raise RequestError(
            422,
            "InvalidBody",
            'the body must be an {account, prompt, ts?, meta?} object, a list of them, or {"items": [...]}; '
            f"got a JSON {type(payload).__name__}",
        )
    if not items:
        raise RequestError(422, "InvalidBody", "no items: send at least one {account, prompt, ts?, meta?} object")
    if len(items) > max_items:
        raise RequestError(
            413,
            "PayloadTooLarge",
            f"{len(items)} items in one request; the limit is {max_items} (max_items_per_request)",
            field="items",
        )
    return items


def _refuse_invalid_items(raw_items: list[Any]) -> None:
    """422 for the whole request when any item breaks :data:`ITEM_SCHEMA`, naming each bad
    item and field: nothing is observed, so a client never half-applies a malformed batch."""
    problems = [
        (index, field, message)
        for index, raw in enumerate(raw_items)
        if (problem := _item_problem(raw)) is not None
        for field, message in [problem]
    ]
    if not problems:
        return
    index, field, _ = problems[0]
    listed = "; ".join(
        f"items[{i}].{f}: {m}" if f else f"items[{i}]: {m}" for i, f, m in problems[:MAX_LISTED_PROBLEMS]
    )
    more = f" (and {len(problems) - MAX_LISTED_PROBLEMS} more)" if len(problems) > MAX_LISTED_PROBLEMS else ""
    raise RequestError(
        422,
        "InvalidItem",
        f"{len(problems)} of {len(raw_items)} items are invalid, so none was observed: {listed}{more}",
        field=f"items[{index}].{field}" if field else f"items[{index}]",
    )


def _item_problem(raw: Any) -> tuple[str, str] | None:
    """``(field, why)`` when ``raw`` breaks the item schema, else None (its prompt text is
    checked later, per item)."""
    if not isinstance(raw, dict):
        return "", f"an item must be an object {{account, prompt, ts?, meta?}}; got a JSON {type(raw).__name__}"
    unknown = sorted(set(raw) - set(ITEM_KEYS))
    missing = [key for key in REQUIRED_ITEM_KEYS if key not in raw]
    if unknown or missing:
        return "", f"an item has keys account, prompt and optional ts and meta; missing {missing}, unexpected {unknown}"
    if not isinstance(raw["prompt"], str):
        return "prompt", f"a prompt must be a str; got {type(raw['prompt']).__name__}"
    problem = _meta_shape_problem(raw.get("meta"))
    if problem is not None:
        return "meta", problem
    for field, check in (("account", check_account), ("ts", check_timestamp)):
        try:
            check(raw.get(field))
        except ProbewatchError as exc:
            return field, str(exc)
    return None


def _meta_shape_problem(meta: Any) -> str | None:
    """Why ``meta`` breaks its schema (not an object of known keys to text, numbers or
    null), else None; its values are cleaned, not judged (see ``_META_VALUE``)."""
    if meta is None:
        return None
    if not isinstance(meta, dict):
        return f"meta must be an object of {sorted(META_KEYS)} to strings, or null; got a JSON {type(meta).__name__}"
    for key, value in meta.items():
        if key not in META_KEYS:
            return f"unknown meta key {key!r}; expected some of {sorted(META_KEYS)}"
        if value is None or isinstance(value, str):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"meta[{key!r}] must be a string, a number or null; got {type(value).__name__}"
        if not abs(value) <= MAX_META_NUMBER:
            # an integer past float's range has no {:g}: say its size instead
            shown = f"{value:g}" if isinstance(value, float) else f"an integer of {decimal_digits(value):,} digits"
            return f"meta[{key!r}] as a number must be within +-{MAX_META_NUMBER:g}; got {shown}"
    return None


def _prepare(
    service: ObservationService, raw_items: list[Any], received_at: float
) -> tuple[list[dict[str, Any] | None], list[tuple[int, Item]]]:
    """The results list with each unobservable prompt's error filled in, and the other items
    prepared, with their index."""
    results: list[dict[str, Any] | None] = [None] * len(raw_items)
    prepared: list[tuple[int, Item]] = []
    for index, raw in enumerate(raw_items):
        try:
            meta = clean_meta(raw["meta"]) if isinstance(raw.get("meta"), dict) else None
            item = service.prepare_item(raw["account"], raw["prompt"], raw.get("ts"), received_at, meta)
            prepared.append((index, item))
        except ProbewatchError as exc:
            results[index] = _item_error(index, type(exc).__name__, str(exc))
    return results, prepared


def _item_error(index: int, error_type: str, message: str) -> dict[str, Any]:
    return {"index": index, "error": {"type": error_type, "message": message}}


def _outcome_dict(index: int, outcome: Outcome) -> dict[str, Any]:
    if outcome.error is not None:
        return _item_error(index, type(outcome.error).__name__, str(outcome.error))
    verdict = dict(outcome.verdict)
    verdict["action"] = verdict_action(verdict)
    result = {"index": index, **verdict, "truncated": outcome.truncated}
    if outcome.fallback is not None:
        result["fallback"] = outcome.fallback
        result["queued"] = outcome.queued
    result.update(outcome.extra)  # a fallback's detail; Kafka mode's pending (probewatch.stream.frontend)
    return result


def _count(metrics: ServerMetrics, item: Item, outcome: Outcome) -> None:
    if outcome.verdict is not None:
        metrics.verdicts.labels(outcome.verdict["level"]).inc()
    if outcome.fallback is not None and not outcome.queued:
        metrics.unobserved.labels(OBSERVE_PATH, outcome.fallback).inc()
    if item.truncated:
        metrics.truncated.inc()
