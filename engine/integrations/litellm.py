"""A LiteLLM ``CustomGuardrail`` that runs the probewatch engine inside the LiteLLM proxy.

Proxy configuration (``config.yaml``)::

    guardrails:
      - guardrail_name: probewatch
        litellm_params:
          guardrail: probewatch.integrations.litellm.ProbewatchGuardrail
          mode: pre_call          # or during_call
          default_on: true

The prompt is the newest user message (or the completions prompt, or the Responses input);
the texts its account has not sent before (earlier user turns; system messages, sampled) are
observed with it (``observe_context``, or ``PROBEWATCH_GUARDRAIL_OBSERVE_CONTEXT``; see
:mod:`probewatch.integrations.context`). ``pre_call`` observes the prompt before the model
is called and blocks the request when the account is flagged; ``during_call`` observes in
parallel with the model call (no added latency) and fails the request when the account is
flagged. Use one mode per guardrail
so each prompt is observed once. Settings come from the constructor or, when LiteLLM
builds the guardrail from config, from ``PROBEWATCH_*`` variables (``PROBEWATCH_ENGINE_DEVICE``,
``PROBEWATCH_GUARDRAIL_ACCOUNT_FIELD``, ``PROBEWATCH_SNAPSHOT_PATH``). When the engine fails,
``failure_policy`` decides: ``"open"`` lets the request through (default), ``"closed"`` answers 503.

With ``request_meta=True`` (default; ``PROBEWATCH_GUARDRAIL_REQUEST_META``) the request's
client address and user agent (as LiteLLM records them in the request metadata) and the
key's organisation and creation time go to the engine as ``meta``, linking accounts that
share them into campaigns (only salted hashes are kept).

The engine state lives in this process only. For several proxy workers, or to keep state
across restarts with a journal, run ``probewatch serve`` and use LiteLLM's
``generic_guardrail_api`` pointing at it instead (docs/sidecar.md).
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_guardrail import CustomGuardrail

from ..engine import Engine
from ..types import Verdict
from .context import CONTEXT_TEXTS_PER_REQUEST, SentTexts, max_prompt_chars, texts_to_observe
from .meta import meta_from_litellm
from .policy import JUDGE_THREADS, BlockedAccounts, check_failure_policy, judge_by_deadline, verdict_or_standing
from .prompts import account_from_metadata, litellm_data_texts
from .settings import engine_config_from_env, env_flag

log = logging.getLogger("probewatch.integrations.litellm")

BLOCK_STATUS = 403


class ProbewatchGuardrail(CustomGuardrail):
    """Observe each request's newest user message under its account; refuse flagged accounts."""

    # Our own hooks run in every mode (not LiteLLM's unified apply_guardrail path).
    use_native_lifecycle_hooks = True
    use_native_during_call_hook = True

    def __init__(
        self,
        engine: Engine | None = None,
        account_field: str | None = None,
        block_levels: tuple[str, ...] = ("flag",),
        failure_policy: str = "open",
        request_meta: bool | None = None,
        deadline_s: float = 2.0,
        observe_context: bool | None = None,
        context_texts_per_request: int = CONTEXT_TEXTS_PER_REQUEST,
        **kwargs: Any,
    ):
        self.account_field = account_field or os.environ.get("PROBEWATCH_GUARDRAIL_ACCOUNT_FIELD", "user_api_key_hash")
        account_from_metadata(self.account_field)  # validates the name now, not on the first request
        self.block_levels = tuple(block_levels)
        self._blocked = BlockedAccounts(self.block_levels)
        self.failure_policy = check_failure_policy(failure_policy)
        self.deadline_s = deadline_s
        # its own threads (see JUDGE_THREADS), not the host's default executor
        self._executor = concurrent.futures.ThreadPoolExecutor(JUDGE_THREADS, thread_name_prefix="probewatch")
        if request_meta is None:
            request_meta = env_flag("PROBEWATCH_GUARDRAIL_REQUEST_META", True)
        self.request_meta = bool(request_meta)
        if observe_context is None:
            observe_context = env_flag("PROBEWATCH_GUARDRAIL_OBSERVE_CONTEXT", True)
        self.sent_texts = SentTexts(per_request=context_texts_per_request) if observe_context else None
        self.engine = engine if engine is not None else _engine_from_env()  # last: loading a model is slow
        self._max_chars = max_prompt_chars(self.engine)  # texts cut to what the engine takes
        super().__init__(**kwargs)

    async def _check(self, data: dict, user_api_key_dict: Any) -> None:
        account = account_from_metadata(self.account_field, user_api_key_dict, data)
        if not account:
            return  # nothing to attribute: never block on missing metadata
        # chat messages, a completions prompt (a string or a list of them), or Responses API input
        request = litellm_data_texts(data)
        texts = texts_to_observe(self.sent_texts, account, request, self._max_chars)
        meta = meta_from_litellm(user_api_key_dict, data) if self.request_meta else None
        try:
            verdict = await judge_by_deadline(
                self._executor,
                self._verdict_of,
                (account, texts, meta),
                self.deadline_s,
                on_late=lambda late: self._blocked.note_late(account, late),
            )
        except Exception as exc:  # a timeout or an engine failure (a model that cannot load) follows the failure policy
            if isinstance(exc, TimeoutError):  # the judgement goes on: the prompt is still observed
                log.warning("probewatch did not judge this request within deadline_s (%g s)", self.deadline_s)
            else:
                log.exception("probewatch could not judge this request")
            if account in self._blocked:  # last judged at a blocked level: a flood must not let it through
                raise HTTPException(
                    status_code=BLOCK_STATUS,
                    detail={"error": "probewatch: this account's traffic looks like model extraction"},
                ) from None
            if self.failure_policy == "open":
                return
            raise HTTPException(status_code=503, detail={"error": "probewatch unavailable; failing closed"}) from None
        self._blocked.note(account, verdict)
        if verdict is None:
            return  # an account probewatch does not hold, and nothing it could observe
        if not isinstance(data.get("metadata"), dict):  # absent, or null in the request
            data["metadata"] = {}
        data["metadata"]["probewatch_level"] = verdict.level
        if verdict.level in self.block_levels:
            raise HTTPException(
                status_code=BLOCK_STATUS,
                detail={
                    "error": f"probewatch: this account's traffic looks like model extraction (level {verdict.level})",
                    "probewatch": {"level": verdict.level, "risk": verdict.risk},
                },
            )

    def _verdict_of(self, account: str, texts: list[str], meta: dict[str, str] | None) -> Verdict | None:
        return verdict_or_standing(self.engine, account, texts, meta)  # on the judging thread: self.engine too

    async def async_pre_call_hook(self, user_api_key_dict, cache, data: dict, call_type) -> dict | None:
        await self._check(data, user_api_key_dict)
        return data

    async def async_moderation_hook(self, data: dict, user_api_key_dict, call_type) -> None:
        await self._check(data, user_api_key_dict)


def _engine_from_env() -> Engine:
    """An engine for a guardrail LiteLLM builds from config: a snapshot if one is named."""
    snapshot = os.environ.get("PROBEWATCH_SNAPSHOT_PATH")
    engine_config = engine_config_from_env("ProbewatchGuardrail")
    if snapshot and os.path.exists(snapshot):
        return Engine.load(snapshot, device=engine_config.device)
    return Engine(config=engine_config)
