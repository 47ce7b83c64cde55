"""The LiteLLM Generic Guardrail API (``POST /beta/litellm_basic_guardrail_api``).

LiteLLM sends each request's texts and metadata; the sidecar observes the prompt under the
account id named by ``guardrail_account_field`` (with ``guardrail_observe_context``, default
on, also the system messages and earlier user turns of ``structured_messages`` the account
has not sent before: :mod:`probewatch.integrations.context`) and answers ``{"action": "NONE"}`` or
``{"action": "BLOCKED", "blocked_reason": ...}``. Missing metadata never blocks; a
failure-policy fallback blocks only with ``failure_policy: closed``. With
``guardrail_request_meta`` (default on) the request's ``User-Agent`` (from
``request_headers``) and ``request_data.user_api_key_org_id`` go with the prompt as ``meta``
for the campaign layer. An answer for a prompt that was not observed (no account id, no
prompt, queue full, deadline, ...) adds ``observed: false`` and ``reason`` (LiteLLM reads
only ``action`` and ``blocked_reason``), and is counted in ``probewatch_unobserved_items``.
A body that breaks the request schema is a 422; a client over
``guardrail_rate_limit_per_s`` gets 429 with ``Retry-After``.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..errors import ProbewatchError
from ..integrations.context import SentTexts, texts_to_observe
from ..integrations.meta import meta_from_guardrail_request
from ..integrations.prompts import RequestTexts, guardrail_request_texts
from .http import RequestError, Service, read_json, require_rate
from .logs import account_fields
from .service import Item, ObservationService, Outcome

log = logging.getLogger("probewatch.serve")

router = APIRouter(tags=["litellm"])

GUARDRAIL_PATH = "/beta/litellm_basic_guardrail_api"
ALLOW = {"action": "NONE"}


class GuardrailRequest(BaseModel):
    """What LiteLLM sends; the body is checked against it (strictly: no type coercion), and
    other keys LiteLLM adds (``litellm_trace_id``, ``images``, ``tools`` ...) pass."""

    model_config = ConfigDict(extra="allow", strict=True)

    input_type: Literal["request", "response"] = Field(description="'request' (observed) or 'response' (never).")
    texts: list[str] | None = None
    structured_messages: list[dict[str, Any]] | None = None
    request_data: dict[str, Any] = Field(description="user_api_key_hash, user_api_key_team_id, ...")
    request_headers: dict[str, str] | None = Field(
        default=None, description="The inbound request's headers as LiteLLM forwards them (user-agent, ...)."
    )
    litellm_call_id: str | None = None
    model: str | None = None


class GuardrailResponse(BaseModel):
    action: Literal["NONE", "BLOCKED"]
    blocked_reason: str | None = Field(None, description="Why, when BLOCKED.")
    observed: bool | None = Field(
        None, description="false when the prompt was not observed (and will not be); absent when it was."
    )
    reason: str | None = Field(None, description="Why it was not observed: no_account, no_prompt, overloaded, ...")


_REQUEST_BODY = {"required": True, "content": {"application/json": {"schema": GuardrailRequest.model_json_schema()}}}


@router.post(
    GUARDRAIL_PATH,
    openapi_extra={"requestBody": _REQUEST_BODY},
    response_model=GuardrailResponse,
    response_model_exclude_none=True,
)
async def litellm_guardrail(request: Request, service: Service) -> dict[str, Any]:
    """LiteLLM Generic Guardrail API: observe the request's prompt under the configured
    account id and answer NONE or BLOCKED; an answer for a prompt that was not observed
    says so (``observed: false`` and the ``reason``)."""
    received_at = time.time()
    payload = await read_json(request)
    _check_fields(payload)
    if payload["input_type"] != "request":
        return ALLOW  # responses are not prompts: nothing to observe
    sent: SentTexts | None = request.app.state.sent_texts
    found = _texts_to_observe(payload, service)
    if isinstance(found, str):
        return _unobserved(service, found, await _standing_answer(service, payload))
    account, texts = found
    require_rate(request, request.app.state.rate_limits.guardrail, 1, GUARDRAIL_PATH)
    picked = sent.pick(account, texts, None) if sent is not None else None
    to_observe = picked.texts if picked is not None else tuple(texts_to_observe(None, account, texts))
    if not to_observe:  # no user message, and its other texts were all sent before (or not read)
        return _unobserved(service, "no_prompt", await _standing_answer(service, payload))
    items = _items(service, account, to_observe, payload, received_at)
    if items is None:
        return _unobserved(service, "invalid_item", await _standing_answer(service, payload))
    # the prompt is the last item: its verdict has seen the texts before it
    outcome = (await service.observe(items, reserved=True))[-1]
    if picked is not None and outcome.error is None and (outcome.fallback is None or outcome.queued):
        # marked as sent only once observed (or queued to be): a 429, a full queue or a
        # refused prompt must not make a request's hidden turns "already sent"
        sent.remember(picked)
        service.metrics.context_texts.labels("observed").inc(picked.n_context)
        service.metrics.context_texts.labels("past_limit").inc(picked.skipped)
    if outcome.error is not None:  # refused by the engine, not observed
        return _unobserved(service, "invalid_item", await _standing_answer(service, payload))
    answer = _decide(outcome, service)
    if outcome.fallback is not None and answer == ALLOW:
        # overloaded or past the deadline (failure policy open): an account already at a
        # blocked level stays blocked; a flood must not open the door for it
        answer = await _standing_answer(service, payload)
    if outcome.fallback is not None and not outcome.queued:
        return _unobserved(service, outcome.fallback, answer)
    return answer


def _check_fields(payload: Any) -> None:
    """The body matches :class:`GuardrailRequest`, or a 422 names the field: a malformed
    request is the caller's error to see (LiteLLM then applies its own failure policy),
    never a silent NONE."""
    if not isinstance(payload, dict):
        raise RequestError(
            422, "InvalidBody", f"the guardrail request must be a JSON object; got a JSON {type(payload).__name__}"
        )
    try:
        GuardrailRequest.model_validate(payload)
    except ValidationError as exc:
        error = exc.errors()[0]
        field = str(error["loc"][0]) if error["loc"] else None
        where = ".".join(str(part) for part in error["loc"])
        got = (
            "missing"
            if error["type"] == "missing"
            else f"got {type(error['input']).__name__} {str(error['input'])[:40]!r}"
        )
        more = f" (and {exc.error_count() - 1} more problems)" if exc.error_count() > 1 else ""
        raise RequestError(422, "InvalidBody", f"{where}: {error['msg']}; {got}{more}", field=field) from None


def _texts_to_observe(payload: dict[str, Any], service: ObservationService) -> tuple[str, RequestTexts] | str:
    """The request's account id and texts, or why there is nothing to observe."""
    config = service.config
    account = payload["request_data"].get(config.guardrail_account_field)
    if not account:
        return "no_account"  # nothing to attribute: never block on missing metadata
    if isinstance(account, bool) or not isinstance(account, str | int):
        return "invalid_item"  # a list or an object is no id: str() of it would make one up
    texts = guardrail_request_texts(payload, config.guardrail_prompt_source)
    if texts.empty:
        return "no_prompt"
    return str(account), texts


def _items(
    service: ObservationService,
    account: str,
    texts: tuple[str, ...],
    payload: dict[str, Any],
    received_at: float,
) -> list[Item] | None:
    """``texts`` (the prompt last, when there is one) as items under ``account``; None when the
    last is refused. Another text the sidecar refuses is left out."""
    meta = meta_from_guardrail_request(payload) if service.config.guardrail_request_meta else None
    items = []
    for n, text in enumerate(texts, start=1 - len(texts)):  # n == 0: the last
        try:
            items.append(service.prepare_item(account, text, None, received_at, meta))
        except ProbewatchError as exc:
            # the error's text may quote the account id: log its kind and the account's hash only
            log.debug("guardrail item not observed: %s", type(exc).__name__, extra=account_fields(account))
            if n == 0:
                return None
    return items


async def _standing_answer(service: ObservationService, payload: dict[str, Any]) -> dict[str, str]:
    """The answer for a request whose prompt was not observed, or not judged in time: what
    the account's standing level calls for, so an account already at flag does not reach the
    model by sending a prompt probewatch refuses or cannot read, or by flooding it. NONE for an
    account it does not hold (or while it is not ready)."""
    account = payload["request_data"].get(service.config.guardrail_account_field)
    if not isinstance(account, str) or not account or not service.ready:
        return ALLOW
    level = await service.standing_level(account)  # the verdict cache's, in Kafka mode
    if level is None:
        return ALLOW
    actions = {"flag": service.config.guardrail_action_on_flag, "watch": service.config.guardrail_action_on_watch}
    if actions.get(level, "NONE") == "BLOCKED":
        return _blocked(f"probewatch: this account's traffic looks like model extraction (level {level})")
    return ALLOW


def _unobserved(service: ObservationService, reason: str, answer: dict[str, str]) -> dict[str, Any]:
    service.metrics.unobserved.labels(GUARDRAIL_PATH, reason).inc()
    return {**answer, "observed": False, "reason": reason}


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
