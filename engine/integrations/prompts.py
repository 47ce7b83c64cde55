"""Reading the prompt and the account out of OpenAI-style requests (shared by integrations)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


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
    """The prompt of a /v1/chat/completions or /v1/completions JSON body (None if absent)."""
    if not isinstance(body, Mapping):
        return None
    if path.endswith("/chat/completions"):
        return last_user_text(body.get("messages"))
    prompt = body.get("prompt")
    if isinstance(prompt, list):  # a batch of prompts, or token ids (not text: skipped)
        texts = [p for p in prompt if isinstance(p, str) and p.strip()]
        return "\n".join(texts) if texts else None
    return prompt if isinstance(prompt, str) and prompt.strip() else None


# Which attribute of LiteLLM's UserAPIKeyAuth holds each id the Generic Guardrail API names.
_AUTH_ATTRIBUTES = {
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
        raise ValueError(f"account field must be one of {sorted(_AUTH_ATTRIBUTES)}; got {field!r}")
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
