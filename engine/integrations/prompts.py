"""Reading the prompt and the account out of OpenAI-style and LiteLLM requests (shared by the
integrations and the sidecar's LiteLLM guardrail route).

>>> last_user_text([{"role": "user", "content": "first"}, {"role": "user", "content": "second"}])
'second'
>>> prompt_from_guardrail_request({"texts": ["You are helpful.", "Hi"]}, source="joined")
'You are helpful.\\nHi'
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal, get_args

from ..errors import ConfigError

GuardrailPromptSource = Literal["last_user", "joined"]
GUARDRAIL_PROMPT_SOURCES: tuple[str, ...] = get_args(GuardrailPromptSource)


def _nonblank_texts(parts: Any) -> list[str]:
    """The strings of ``parts`` that hold more than whitespace ([] unless ``parts`` is a list)."""
    return [p for p in parts if isinstance(p, str) and p.strip()] if isinstance(parts, list) else []


def _joined_text(parts: Any) -> str | None:
    texts = _nonblank_texts(parts)
    return "\n".join(texts) if texts else None


def _content_text(content: Any) -> str | None:
    if isinstance(content, str):
        return content if content.strip() else None
    if isinstance(content, list):  # multimodal parts: keep the text parts
        parts = [p.get("text") for p in content if isinstance(p, Mapping) and isinstance(p.get("text"), str)]
        text = "\n".join(parts)
        return text if text.strip() else None
    return None


def last_user_text(messages: Any) -> str | None:
    """The newest user message's text: the part of a chat that is this request's prompt
    (earlier turns were observed when they were sent)."""
    if not isinstance(messages, list):
        return None
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            text = _content_text(message.get("content"))
            if text:
                return text
    return None


def prompt_from_openai_body(path: str, body: Any) -> str | None:
    """The prompt of a /v1/chat/completions, /v1/completions or /v1/responses JSON body (None
    if absent)."""
    if not isinstance(body, Mapping):
        return None
    if path.endswith("/chat/completions"):
        return last_user_text(body.get("messages"))
    if path.endswith("/responses"):
        return responses_input_text(body.get("input"))
    return completion_prompt_text(body.get("prompt"))


def completion_prompt_text(prompt: Any) -> str | None:
    """A completions ``prompt``: a string, or a list of strings (joined; token ids are not text)."""
    if isinstance(prompt, list):
        return _joined_text(prompt)
    return prompt if isinstance(prompt, str) and prompt.strip() else None


def responses_input_text(items: Any) -> str | None:
    """The Responses API's ``input``: a string, or a list of items whose newest user message
    (string content, or ``input_text`` parts) is this request's prompt."""
    if isinstance(items, str):
        return items if items.strip() else None
    return last_user_text(items)


def prompt_from_guardrail_request(payload: Mapping[str, Any], source: str = "last_user") -> str | None:
    """The prompt of a LiteLLM Generic Guardrail API request (None if it carries no text).

    ``source="last_user"``: the newest user message of ``structured_messages``, else the last
    of ``texts``. ``source="joined"``: every text of ``texts``, joined by newlines.
    """
    if source not in GUARDRAIL_PROMPT_SOURCES:
        raise ConfigError(f"the guardrail prompt source must be one of {GUARDRAIL_PROMPT_SOURCES}; got {source!r}")
    if source == "joined":
        return _joined_text(payload.get("texts"))
    newest_user = last_user_text(payload.get("structured_messages"))
    if newest_user is not None:
        return newest_user
    texts = _nonblank_texts(payload.get("texts"))
    return texts[-1] if texts else None


AccountField = Literal[
    "user_api_key_hash",
    "user_api_key_team_id",
    "user_api_key_end_user_id",
    "user_api_key_user_id",
    "user_api_key_org_id",
    "user_api_key_alias",
]
ACCOUNT_FIELDS: tuple[str, ...] = get_args(AccountField)

# Which attribute of LiteLLM's UserAPIKeyAuth holds each id the Generic Guardrail API names.
_AUTH_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "user_api_key_hash": ("token", "api_key"),
    "user_api_key_team_id": ("team_id",),
    "user_api_key_end_user_id": ("end_user_id",),
    "user_api_key_user_id": ("user_id",),
    "user_api_key_org_id": ("org_id",),
    "user_api_key_alias": ("key_alias",),
}


def account_from_metadata(field: str, auth: Any = None, data: Mapping[str, Any] | None = None) -> str | None:
    """The account id named ``field`` from LiteLLM's auth object, else the request metadata."""
    if field not in _AUTH_ATTRIBUTES:
        raise ConfigError(f"the account field must be one of {ACCOUNT_FIELDS}; got {field!r}")
    for attribute in _AUTH_ATTRIBUTES[field]:
        value = getattr(auth, attribute, None) if auth is not None else None
        if value:
            return str(value)
    for key in ("litellm_metadata", "metadata"):
        meta = (data or {}).get(key)
        if isinstance(meta, Mapping):
            value = meta.get(field) or (meta.get("user_api_key_token") if field == "user_api_key_hash" else None)
            if value:
                return str(value)
    if field == "user_api_key_end_user_id" and data and isinstance(data.get("user"), str):
        return data["user"]  # the OpenAI `user` field is LiteLLM's end-user id
    return None
