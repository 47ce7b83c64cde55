"""The LiteLLM Generic Guardrail API (``POST /beta/litellm_basic_guardrail_api``).

LiteLLM sends each request's texts and metadata; the sidecar observes the prompt under the
account id named by ``guardrail_account_field`` and answers ``{"action": "NONE"}`` or
``{"action": "BLOCKED", "blocked_reason": ...}``. Missing metadata never blocks; a
failure-policy fallback blocks only with ``failure_policy: closed``. With
``guardrail_request_meta`` (default on) the request's ``User-Agent`` (from
``request_headers``) and ``request_data.user_api_key_org_id`` go with the prompt as ``meta``
for the campaign layer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from ..errors import ProbewatchError
from ..integrations.meta import meta_from_guardrail_request
from ..integrations.prompts import prompt_from_guardrail_request
from .http import RequestError, Service, read_json
from .service import Item, ObservationService, Outcome

log = logging.getLogger("probewatch.serve")

router = APIRouter(tags=["litellm"])

GUARDRAIL_PATH = "/beta/litellm_basic_guardrail_api"
ALLOW = {"action": "NONE"}


# The request document for the OpenAPI document only: the body is parsed by hand.
class GuardrailRequest(BaseModel):
    input_type: str = Field(description="'request' (observed) or 'response' (always NONE).")
    texts: list[str] | None = None
    structured_messages: list[dict[str, Any]] | None = None
    request_data: dict[str, Any] = Field(description="user_api_key_hash, user_api_key_team_id, ...")
    request_headers: dict[str, str] | None = Field(
        default=None, description="The inbound request's headers as LiteLLM forwards them (user-agent, ...)."
    )
    litellm_call_id: str | None = None
    model: str | None = None


_REQUEST_BODY = {"required": True, "content": {"application/json": {"schema": GuardrailRequest.model_json_schema()}}}


@router.post(GUARDRAIL_PATH, openapi_extra={"requestBody": _REQUEST_BODY})
async def litellm_guardrail(request: Request, service: Service) -> dict[str, str]:
    """LiteLLM Generic Guardrail API: observe the request's prompt under the configured
    account id and answer NONE or BLOCKED."""
    received_at = time.time()
    payload = await read_json(request)
    if not isinstance(payload, dict):
        raise RequestError(422, "InvalidBody", "the guardrail request must be a JSON object")
    _check_fields(payload)
    if payload.get("input_type", "request") != "request":
        return ALLOW  # responses are not prompts: nothing to observe
    item = _item_to_observe(payload, service, received_at)
    if item is None:
        return ALLOW
    outcome = (await service.observe([item], reserved=True))[0]
    return _decide(outcome, service)


def _check_fields(payload: dict[str, Any]) -> None:
    """The fields the route reads have the request document's types, or a 422 names the field:
    a malformed request is the caller's error to see, never a silent NONE."""

    def wrong(field: str, expected: str) -> RequestError:
        got = payload[field]
        return RequestError(
            422, "InvalidBody", f"{field} must be {expected}; got {type(got).__name__} {str(got)[:40]!r}", field=field
        )

    if "input_type" in payload and not isinstance(payload["input_type"], str):
        raise wrong("input_type", "a string ('request' or 'response')")
    texts = payload.get("texts")
    if texts is not None and not (isinstance(texts, list) and all(isinstance(t, str) for t in texts)):
        raise wrong("texts", "a list of strings")
    messages = payload.get("structured_messages")
    if messages is not None and not (isinstance(messages, list) and all(isinstance(m, dict) for m in messages)):
        raise wrong("structured_messages", "a list of message objects")
    headers = payload.get("request_headers")
    if headers is not None and not isinstance(headers, dict):
        raise wrong("request_headers", "an object")


def _item_to_observe(payload: dict[str, Any], service: ObservationService, received_at: float) -> Item | None:
    """The request's prompt under its account id; None when either is missing or invalid."""
    request_data = payload.get("request_data") or {}
    if not isinstance(request_data, dict):
        raise RequestError(422, "InvalidBody", "request_data must be an object", field="request_data")
    config = service.config
    account = request_data.get(config.guardrail_account_field)
    prompt = prompt_from_guardrail_request(payload, config.guardrail_prompt_source)
    if not account or prompt is None:
        return None  # nothing to attribute or nothing to read: never block on missing metadata
    meta = meta_from_guardrail_request(payload) if config.guardrail_request_meta else None
    try:
        return service.prepare_item(str(account), prompt, None, received_at, meta)
    except ProbewatchError as exc:
        log.debug("guardrail item not observed: %s", exc)
        return None


def _decide(outcome: Outcome, service: ObservationService) -> dict[str, str]:
    verdict = outcome.verdict
    if verdict is None:
        return ALLOW
    service.metrics.verdicts.labels(verdict["level"]).inc()
    config = service.config
    if outcome.fallback is not None:
        if config.failure_policy == "closed":
            return _blocked(f"probewatch unavailable ({outcome.fallback}); failing closed")
        return ALLOW
    actions = {"flag": config.guardrail_action_on_flag, "watch": config.guardrail_action_on_watch}
    if actions.get(verdict["level"], "NONE") == "BLOCKED":
        return _blocked(f"probewatch: this account's traffic looks like model extraction (level {verdict['level']})")
    return ALLOW


def _blocked(reason: str) -> dict[str, str]:
    return {"action": "BLOCKED", "blocked_reason": reason}
