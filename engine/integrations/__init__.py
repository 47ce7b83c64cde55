"""probewatch.integrations: plug the engine into serving stacks.

* :mod:`probewatch.integrations.litellm`: a LiteLLM ``CustomGuardrail`` (in-process engine).
* :mod:`probewatch.integrations.asgi`: ASGI middleware for vLLM's OpenAI server or any ASGI app.
* :mod:`probewatch.integrations.meta`: the request metadata (client address, user agent,
  org) each of them passes to the campaign layer.

Both take ``failure_policy="open"|"closed"`` (:mod:`probewatch.integrations.policy`), the
sidecar's ``failure_policy`` setting under the same name. Each module imports its framework
lazily, so importing this package needs neither.
"""

from .meta import clean_meta, meta_from_asgi_scope, meta_from_guardrail_request, meta_from_litellm
from .prompts import account_from_metadata, last_user_text, prompt_from_guardrail_request, prompt_from_openai_body

__all__ = [
    "account_from_metadata",
    "clean_meta",
    "last_user_text",
    "meta_from_asgi_scope",
    "meta_from_guardrail_request",
    "meta_from_litellm",
    "prompt_from_guardrail_request",
    "prompt_from_openai_body",
]
