"""Reading the prompt and the account out of OpenAI-style and LiteLLM requests (shared by the
integrations and the sidecar's LiteLLM guardrail route).

A request's *prompt* is its newest user message (or the completion prompt). The rest of what
the client wrote for the model is read too, because a query can hide there (made-up earlier
turns, a question list in the system message, then "answer everything above"):

* *context*: the earlier user turns that no answer follows (messages of roles the reader does
  not know count as user turns: a server may still render them), and every instruction past
  the first two;
* *answered*: the earlier user turns an answer follows: an honest chat's history, an app's
  few-shot examples;
* *instructions*: the first two system and developer messages (the Responses API's
  ``instructions`` first).

:class:`~probewatch.integrations.context.SentTexts` picks those an account has not sent before,
to observe with the prompt. Messages of the answer roles (assistant, tool, function, ...) are
not read: they are the model's answers and tool output, which an honest client resends, new,
with every turn.

Roles are compared after trimming and case-folding (servers render `"User"` as a user turn);
the text of a message is its string content, or the text of its parts (strings, and the
``text``, ``input_text``, ``output_text``, ``refusal`` and ``thinking`` fields of part
objects). Texts are made observable as read: a NUL becomes a space and a lone surrogate
U+FFFD (the model reads past both; refusing them let an account pass unobserved by adding one).

>>> last_user_text([{"role": "user", "content": "first"}, {"role": "user", "content": "second"}])
'second'
>>> chat_texts([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
RequestTexts(prompt='Hi', context=(), instructions=('Be brief.',), answered=())
>>> prompt_from_guardrail_request({"texts": ["You are helpful.", "Hi"]}, source="joined")
'You are helpful.\\nHi'
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, get_args

from ..errors import ConfigError

GuardrailPromptSource = Literal["last_user", "joined"]
GUARDRAIL_PROMPT_SOURCES: tuple[str, ...] = get_args(GuardrailPromptSource)
# Roles whose messages are the model's answers or tool output, which the client resends.
ANSWER_ROLES = frozenset({"assistant", "tool", "function", "ipython", "model"})
# Roles whose messages instruct the model rather than ask it.
INSTRUCTION_ROLES = frozenset({"system", "developer"})
# An app sends one system prompt, sometimes a developer message beside it: instructions past
# these are read as turns (one system message per hidden query must not share one budget).
INSTRUCTION_MESSAGES = 2
# Fields of a content part object that hold text the model reads.
PART_TEXT_FIELDS = ("text", "input_text", "output_text", "refusal", "thinking")


@dataclass(frozen=True)
class RequestTexts:
    """What one request gives the model to read, oldest first: ``prompt``, its newest user
    message (None when it has none); ``context``, its earlier user turns that no answer follows
    (what "answer everything above" asks about) and any instruction past the first
    ``INSTRUCTION_MESSAGES``; ``instructions``, its first system and developer texts;
    ``answered``, its earlier user turns an answer follows (an honest history, few-shot examples)."""

    prompt: str | None
    context: tuple[str, ...] = ()
    instructions: tuple[str, ...] = ()
    answered: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """Whether the request gives the model no text at all."""
        return self.prompt is None and not (self.context or self.instructions or self.answered)


def readable(text: Any) -> str | None:
    """``text`` as the engine takes it (a NUL becomes a space, a lone surrogate U+FFFD), or None
    when it is no string or holds only whitespace."""
    if not isinstance(text, str):
        return None
    if "\x00" in text:
        text = text.replace("\x00", " ")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        text = text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return text if text.strip() else None


def _nonblank_texts(parts: Any) -> list[str]:
    """The readable strings of ``parts`` ([] unless ``parts`` is a list)."""
    if not isinstance(parts, list):
        return []
    return [t for t in map(readable, parts) if t is not None]


def _joined_text(parts: Any) -> str | None:
    texts = _nonblank_texts(parts)
    return "\n".join(texts) if texts else None


def _part_text(part: Any) -> str | None:
    if isinstance(part, str):
        return part
    if isinstance(part, Mapping):
        for field in PART_TEXT_FIELDS:
            value = part.get(field)
            if isinstance(value, Mapping):  # {"text": {"value": ...}} (the Assistants API's shape)
                value = value.get("value")
            if isinstance(value, str):
                return value
    return None


def _content_text(content: Any) -> str | None:
    if isinstance(content, Mapping):  # one part object on its own
        content = [content]
    if isinstance(content, list):  # multimodal parts: keep the text parts
        return readable("\n".join(t for t in map(_part_text, content) if t is not None))
    return readable(content)


def _role(message: Any) -> str | None:
    role = message.get("role") if isinstance(message, Mapping) else None
    return role.strip().casefold() if isinstance(role, str) else None


def last_user_text(messages: Any) -> str | None:
    """The newest user message's text: the part of a chat that is this request's prompt."""
    return chat_texts(messages).prompt


def chat_texts(messages: Any, instructions: Any = None) -> RequestTexts:
    """A chat read as :class:`RequestTexts`: the newest user message is the prompt; a user turn
    (or a message of a role the reader does not know) is *answered* when the next message is of
    an answer role; ``instructions`` (the Responses API's) come first among the instructions. A
    message whose role is not a string is not read."""
    told = _content_text(instructions)
    turns: list[list] = [["instruction", told, False]] if told is not None else []  # [kind, text, answered]
    if isinstance(messages, list):
        for message in messages:
            role = _role(message)
            if role is None:
                continue
            if role in ANSWER_ROLES:
                if turns and turns[-1][0] != "instruction":
                    turns[-1][2] = True  # an answer answers the message right before it
                continue
            text = _content_text(message.get("content"))
            if text is not None:
                turns.append(["instruction" if role in INSTRUCTION_ROLES else role, text, False])
    newest = max((i for i, (kind, _, _) in enumerate(turns) if kind == "user"), default=None)
    told_texts, context, answered = [], [], []
    for i, (kind, text, was_answered) in enumerate(turns):
        if i == newest:
            continue
        if kind == "instruction" and len(told_texts) < INSTRUCTION_MESSAGES:
            told_texts.append(text)
        elif was_answered:
            answered.append(text)
        else:
            context.append(text)
    prompt = turns[newest][1] if newest is not None else None
    return RequestTexts(prompt, tuple(context), tuple(told_texts), tuple(answered))


def openai_body_texts(path: str, body: Any) -> RequestTexts:
    """The prompt, context and instructions of a /v1/chat/completions, /v1/completions or
    /v1/responses JSON body."""
    if not isinstance(body, Mapping):
        return RequestTexts(None)
    if path.endswith("/chat/completions"):
        return chat_texts(body.get("messages"))
    if path.endswith("/responses"):
        return responses_texts(body.get("input"), body.get("instructions"))
    return RequestTexts(completion_prompt_text(body.get("prompt")))


def litellm_data_texts(data: Mapping[str, Any]) -> RequestTexts:
    """The prompt, context and instructions of the request LiteLLM hands its in-process
    guardrails: chat ``messages``, a completions ``prompt``, or Responses API ``input``."""
    chat = chat_texts(data.get("messages"))
    if chat.prompt is not None:
        return chat
    prompt = completion_prompt_text(data.get("prompt"))
    if prompt is not None:
        return RequestTexts(prompt, chat.context, chat.instructions, chat.answered)
    responses = responses_texts(data.get("input"), data.get("instructions"))
    if responses.prompt is not None:
        return responses
    return RequestTexts(
        None,
        chat.context + responses.context,
        chat.instructions + responses.instructions,
        chat.answered + responses.answered,
    )


def prompt_from_openai_body(path: str, body: Any) -> str | None:
    """The prompt of a /v1/chat/completions, /v1/completions or /v1/responses JSON body (None
    if absent)."""
    return openai_body_texts(path, body).prompt


def completion_prompt_text(prompt: Any) -> str | None:
    """A completions ``prompt``: a string, or a list of strings (joined; token ids are not text)."""
    if isinstance(prompt, list):
        return _joined_text(prompt)
    return readable(prompt)


def responses_input_text(items: Any) -> str | None:
    """The Responses API's ``input``: a string, or a list of items whose newest user message
    (string content, or ``input_text`` parts) is this request's prompt."""
    return responses_texts(items).prompt


def responses_texts(items: Any, instructions: Any = None) -> RequestTexts:
    """The Responses API's ``input`` (a string, or a list of message items) and its
    ``instructions``, as a prompt and context."""
    if isinstance(items, str):
        told = _content_text(instructions)
        return RequestTexts(readable(items), (), (told,) if told is not None else ())
    return chat_texts(items, instructions)


def prompt_from_guardrail_request(payload: Mapping[str, Any], source: str = "last_user") -> str | None:
    """The prompt of a LiteLLM Generic Guardrail API request (None if it carries no text).

    ``source="last_user"``: the newest user message of ``structured_messages``, else the last
    of ``texts``. ``source="joined"``: every text of ``texts``, joined by newlines.
    """
    return guardrail_request_texts(payload, source).prompt


def guardrail_request_texts(payload: Mapping[str, Any], source: str = "last_user") -> RequestTexts:
    """The prompt (as :func:`prompt_from_guardrail_request`) and, from ``structured_messages``,
    the context and instructions of a LiteLLM Generic Guardrail API request. ``texts`` alone
    name no roles, so they give neither (``source="joined"`` observes them all as one prompt)."""
    if source not in GUARDRAIL_PROMPT_SOURCES:
        raise ConfigError(f"the guardrail prompt source must be one of {GUARDRAIL_PROMPT_SOURCES}; got {source!r}")
    if source == "joined":
        return RequestTexts(_joined_text(payload.get("texts")))
    chat = chat_texts(payload.get("structured_messages"))
    if not chat.empty:
        return chat  # with no user message, what the model answers is in its other texts
    texts = _nonblank_texts(payload.get("texts"))
    return RequestTexts(texts[-1] if texts else None)


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
