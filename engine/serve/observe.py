"""``POST /v1/observe``: one or many prompts in, one result per item out, in order.

An item is ``{account, prompt, ts?, meta?}``; ``meta`` is optional request metadata (``ip``,
``network``, ``user_agent``, ``org``, ``payment``, ``key_created``: strings of at most 512
characters) that links accounts sharing infrastructure into campaigns. A bad ``meta`` is
that item's error, naming the key. Verdicts carry ``campaign`` (null unless the account is
in a campaign at watch or flag).

Status codes: 200 with one result per item, each either a verdict or that item's error;
422 when *every* item was invalid (same body shape), so a client that sent only garbage
notices; 400 for a body that is not JSON; 422 for JSON of the wrong shape; 413 for more
than ``max_items_per_request`` items; 503 while the model loads. (The Gatekeeper answers
401 without a valid token and 413 for a body over ``max_body_bytes``.)
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, create_model

from ..campaigns.metadata import MAX_META_VALUE_CHARS, META_KEYS
from ..errors import ProbewatchError
from .http import RequestError, Service, read_json, require_ready
from .metrics import ServerMetrics
from .service import Item, ObservationService, Outcome, verdict_action

router = APIRouter(tags=["observe"])

ITEM_KEYS = ("account", "prompt", "ts", "meta")
REQUIRED_ITEM_KEYS = ("account", "prompt")

# Request documents for the OpenAPI document only: bodies are parsed by hand, for clear errors.
ObserveMeta = create_model(
    "ObserveMeta",
    __config__=ConfigDict(extra="forbid"),
    __doc__="Request metadata; every key optional. Only salted hashes of the values are kept, never returned.",
    **{
        key: (str | None, Field(default=None, max_length=MAX_META_VALUE_CHARS, description=what))
        for key, what in META_KEYS.items()
    },
)


class ObserveItem(BaseModel):
    account: str = Field(description="Account id (<= 256 chars, no control characters).")
    prompt: str = Field(description="The prompt text; longer than max_prompt_chars is truncated or rejected.")
    ts: float | None = Field(default=None, description="Unix seconds; default: the time the sidecar received it.")
    meta: ObserveMeta | None = Field(  # type: ignore[valid-type]
        default=None, description="Request metadata that links accounts sharing infrastructure into campaigns."
    )


class ObserveRequest(BaseModel):
    items: list[ObserveItem] = Field(description="One or more items; a bare item object or a JSON list also works.")


def inlined_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its ``$defs`` written in place: a request body given as
    ``openapi_extra`` keeps no ``$defs`` of its own, so a ``#/$defs/...`` reference would
    point nowhere in the OpenAPI document."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {key: resolve(value) for key, value in node.items()}
        if isinstance(node, list):
            return [resolve(value) for value in node]
        return node

    return resolve(schema)


_REQUEST_BODY = {"required": True, "content": {"application/json": {"schema": inlined_schema(ObserveRequest)}}}


@router.post("/v1/observe", openapi_extra={"requestBody": _REQUEST_BODY})
async def observe(request: Request, service: Service) -> JSONResponse:
    """Observe one or many prompts; verdicts come back in order."""
    received_at = time.time()
    raw_items = _items_of(await read_json(request), service.config.max_items_per_request)
    require_ready(service)  # after the body checks: a malformed request is told so even while loading
    results, prepared = _prepare(service, raw_items, received_at)
    if prepared and not service.has_room(len(prepared)):
        # Nothing of this request is observed: say so with a status a client backs off on,
        # never with verdicts that look like answers.
        service.metrics.fallbacks.labels("overloaded").inc(len(prepared))
        raise RequestError(
            429,
            "Overloaded",
            f"the observation queue is full ({service.config.queue_capacity} items); none of the {len(prepared)} "
            f"items was observed: retry after {service.config.overload_retry_after_s} s",
            headers={"Retry-After": str(service.config.overload_retry_after_s)},
        )
    outcomes = await service.observe([item for _, item in prepared]) if prepared else []
    for (index, item), outcome in zip(prepared, outcomes, strict=True):
        results[index] = _outcome_dict(index, outcome)
        _count(service.metrics, item, outcome)
    n_errors = sum(1 for result in results if "error" in result)
    if n_errors:
        service.metrics.item_errors.inc(n_errors)
    status = 422 if n_errors == len(results) else 200
    return JSONResponse({"results": results, "errors": n_errors}, status_code=status)


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


def _prepare(
    service: ObservationService, raw_items: list[Any], received_at: float
) -> tuple[list[dict[str, Any] | None], list[tuple[int, Item]]]:
    """Check every item: the results list with each invalid item's error filled in, and the
    valid items with their index."""
    results: list[dict[str, Any] | None] = [None] * len(raw_items)
    prepared: list[tuple[int, Item]] = []
    for index, raw in enumerate(raw_items):
        problem = _shape_problem(raw)
        if problem is not None:
            results[index] = _item_error(index, "InvalidItem", problem)
            continue
        try:
            item = service.prepare_item(raw["account"], raw["prompt"], raw.get("ts"), received_at, raw.get("meta"))
            prepared.append((index, item))
        except ProbewatchError as exc:
            results[index] = _item_error(index, type(exc).__name__, str(exc))
    return results, prepared


def _shape_problem(raw: Any) -> str | None:
    """Why ``raw`` is not an ``{account, prompt, ts?, meta?}`` object, or None when it is one."""
    if not isinstance(raw, dict):
        return f"an item must be an object {{account, prompt, ts?, meta?}}; got a JSON {type(raw).__name__}"
    unknown = sorted(set(raw) - set(ITEM_KEYS))
    missing = [key for key in REQUIRED_ITEM_KEYS if key not in raw]
    if unknown or missing:
        return f"an item has keys account, prompt and optional ts and meta; missing {missing}, unexpected {unknown}"
    return None


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
        result.update(outcome.extra)
    return result


def _count(metrics: ServerMetrics, item: Item, outcome: Outcome) -> None:
    if outcome.verdict is not None:
        metrics.verdicts.labels(outcome.verdict["level"]).inc()
    if item.truncated:
        metrics.truncated.inc()
