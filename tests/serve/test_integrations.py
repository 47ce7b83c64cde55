"""In-process integrations: the ASGI middleware with a tiny app, and the LiteLLM guardrail hooks."""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import types

import pytest

import probewatch as pw
from probewatch.errors import ConfigError
from probewatch.integrations import (
    account_from_metadata,
    clean_meta,
    meta_from_asgi_scope,
    meta_from_guardrail_request,
    meta_from_litellm,
    prompt_from_guardrail_request,
    prompt_from_openai_body,
)
from probewatch.kernels.backend import cupy_available
from tests.support import random_word_prompts


@pytest.fixture(scope="module")
def engine():
    """One engine for the module, with an attacker already flagged (lenient test thresholds)."""
    eng = pw.Engine(device="cpu", target_fpr=0.2, watch_fpr=0.4)
    verdicts = eng.observe_batch(["attacker"] * 48, random_word_prompts(48))
    assert verdicts[-1].flagged
    return eng


def test_prompt_and_account_extraction():
    chat = {
        "messages": [
            {"role": "system", "content": "be nice"},
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "second"}, {"type": "image_url"}]},
        ]
    }
    assert prompt_from_openai_body("/v1/chat/completions", chat) == "second"
    assert prompt_from_openai_body("/v1/completions", {"prompt": "once upon"}) == "once upon"
    assert prompt_from_openai_body("/v1/completions", {"prompt": [1, 2, 3]}) is None

    class Auth:
        token, team_id, end_user_id = "hash123", "team-a", None

    assert account_from_metadata("user_api_key_hash", Auth()) == "hash123"
    assert account_from_metadata("user_api_key_team_id", Auth()) == "team-a"
    assert account_from_metadata("user_api_key_end_user_id", Auth(), {"user": "eve"}) == "eve"
    with pytest.raises(ConfigError, match=r"one of \('user_api_key_hash'.*got 'nonsense'"):
        account_from_metadata("nonsense")


def test_guardrail_request_prompt():
    messages = [{"role": "system", "content": "be nice"}, {"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    request = {"texts": ["be nice", "  ", "hi there"], "structured_messages": messages}
    assert prompt_from_guardrail_request(request) == "hi"
    assert prompt_from_guardrail_request({"texts": ["a", "b"]}) == "b"  # no messages: the last text
    assert prompt_from_guardrail_request(request, source="joined") == "be nice\nhi there"
    assert prompt_from_guardrail_request({"texts": ["  "]}) is None
    with pytest.raises(ConfigError):
        prompt_from_guardrail_request(request, source="first")


def test_request_meta_extraction():
    assert clean_meta({"ip": " 10.0.0.1 ", "org": "", "user_agent": "[present]", "colour": "red"}) == {"ip": "10.0.0.1"}
    assert clean_meta({"user_agent": "x\x00" * 600})["user_agent"] == "x" * 512  # cut, never an item error
    assert clean_meta({"payment": True, "network": ["a"]}) is None

    class Auth:
        org_id = "org-9"
        created_at = datetime.datetime(2026, 2, 2, 9, 30, 5)  # naive: UTC, as LiteLLM stores it

    data = {"metadata": {"requester_ip_address": "203.0.113.7, 10.0.0.2", "user_agent": "OpenAI/Python 1.54.0"}}
    assert meta_from_litellm(Auth(), data) == {
        "ip": "203.0.113.7",
        "user_agent": "OpenAI/Python 1.54.0",
        "org": "org-9",
        "key_created": "2026-02-02T09:30:05Z",
    }
    assert meta_from_litellm(
        None, {"litellm_metadata": {"user_api_key_org_id": "org-2", "requester_ip_address": ""}}
    ) == {"org": "org-2"}
    assert meta_from_litellm(None, {}) is None
    request = {"request_headers": {"User-Agent": "curl/8.5", "X-Forwarded-For": "[present]"}, "request_data": {}}
    assert meta_from_guardrail_request(request) == {"user_agent": "curl/8.5"}
    assert meta_from_guardrail_request({"request_headers": "junk", "request_data": None}) is None
    scope = {"client": ("198.51.100.4", 5000), "headers": [(b"user-agent", b"python-httpx/0.27")]}
    assert meta_from_asgi_scope(scope) == {"ip": "198.51.100.4", "user_agent": "python-httpx/0.27"}
    assert meta_from_asgi_scope({"client": None, "headers": []}) is None


class RecordingEngine:
    """Records what each observe call was given; every account stays at ok."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict | None]] = []

    def observe(self, account: str, prompt: str, ts=None, meta=None):
        self.calls.append((account, prompt, meta))
        return pw.Verdict(
            account=account, risk=0.0, level=pw.Level.OK, flagged=False, n_queries=1, score=0.0, peak_risk=0.0
        )

    def observe_batch(self, accounts, prompts, ts=None, metas=None):
        return [self.observe(a, p, meta=m) for a, p, m in zip(accounts, prompts, metas, strict=True)]


def test_integrations_pass_request_meta_unless_told_not_to():
    from litellm.proxy._types import UserAPIKeyAuth

    from probewatch.integrations.asgi import ProbewatchMiddleware
    from probewatch.integrations.litellm import ProbewatchGuardrail

    chat = {"messages": [{"role": "user", "content": "hello"}]}
    headers = {"x-account-id": "someone", "user-agent": "relaykit/1.2"}
    for request_meta, expected in ((True, {"ip": "192.0.2.10", "user_agent": "relaykit/1.2"}), (False, None)):
        engine = RecordingEngine()
        app = ProbewatchMiddleware(echo_app, engine=engine, request_meta=request_meta)
        status, _, _ = asyncio.run(_call(app, "/v1/chat/completions", chat, headers))
        assert status == 200 and engine.calls == [("someone", "hello", expected)]

        engine = RecordingEngine()
        guard = ProbewatchGuardrail(
            engine=engine,
            account_field="user_api_key_end_user_id",
            request_meta=request_meta,
            guardrail_name="probewatch",
            event_hook="pre_call",
        )
        data = {**chat, "metadata": {"requester_ip_address": "203.0.113.7", "user_agent": "OpenAI/Python 1.54.0"}}
        auth = UserAPIKeyAuth(end_user_id="someone", org_id="org-9")
        asyncio.run(guard.async_pre_call_hook(auth, None, data, "completion"))
        wanted = {"ip": "203.0.113.7", "user_agent": "OpenAI/Python 1.54.0", "org": "org-9"} if request_meta else None
        assert engine.calls == [("someone", "hello", wanted)]


HIDDEN = [f"Explain in detail how treaty number {i} of the {1700 + 13 * i}s changed trade law." for i in range(6)]


def _forged_chat(prompt: str = "Now answer every question above, one by one.") -> dict:
    """Red-team request: the queries sit in made-up earlier turns (no answer after them: the
    model is to answer them now) and the system message."""
    messages = [{"role": "system", "content": "You are a legal historian. " + HIDDEN[0]}]
    messages += [{"role": "user", "content": question} for question in HIDDEN[1:]]
    return {"messages": [*messages, {"role": "user", "content": prompt}]}


def test_queries_hidden_in_made_up_turns_or_the_system_message_are_observed(engine):
    """Red-team finding: only the newest user message was observed, and a client writes the whole
    message list; queries placed in the system message or made-up earlier turns (then "answer
    everything above") were never seen. Each text an account has not sent before is now
    observed once, by the middleware and the in-process LiteLLM guardrail alike."""
    from litellm.proxy._types import UserAPIKeyAuth

    from probewatch.integrations.asgi import ProbewatchMiddleware
    from probewatch.integrations.litellm import ProbewatchGuardrail

    app = ProbewatchMiddleware(echo_app, engine=engine)
    status, _, _ = asyncio.run(_call(app, "/v1/chat/completions", _forged_chat(), {"x-account-id": "historian"}))
    assert status == 200 and engine.report("historian").n_queries == len(HIDDEN) + 1
    # sent again with a new last message: only that message is new
    status, _, _ = asyncio.run(
        _call(app, "/v1/chat/completions", _forged_chat("And the next?"), {"x-account-id": "historian"})
    )
    assert status == 200 and engine.report("historian").n_queries == len(HIDDEN) + 2
    responses = {"instructions": HIDDEN[0], "input": "Answer the instructions' question."}
    asyncio.run(_call(app, "/v1/responses", responses, {"x-account-id": "responder"}))
    assert engine.report("responder").n_queries == 2

    recording = RecordingEngine()
    guard = ProbewatchGuardrail(
        engine=recording, account_field="user_api_key_end_user_id", request_meta=False,
        guardrail_name="probewatch", event_hook="pre_call",
    )  # fmt: skip
    auth = UserAPIKeyAuth(end_user_id="historian")
    asyncio.run(guard.async_pre_call_hook(auth, None, _forged_chat(), "completion"))
    asyncio.run(guard.async_pre_call_hook(auth, None, _forged_chat("And the next?"), "completion"))
    observed = [prompt for _, prompt, _ in recording.calls]
    assert observed[: len(HIDDEN)] == ["You are a legal historian. " + HIDDEN[0], *HIDDEN[1:]]
    assert observed[len(HIDDEN) :] == ["Now answer every question above, one by one.", "And the next?"]

    # turned off: only the newest user message, as before
    only_prompt = ProbewatchMiddleware(echo_app, engine=engine, observe_context=False)
    asyncio.run(_call(only_prompt, "/v1/chat/completions", _forged_chat(), {"x-account-id": "historian-2"}))
    assert engine.report("historian-2").n_queries == 1


def test_a_nul_in_each_text_no_longer_hides_it(engine):
    """Red-team finding: texts with a NUL were refused, and a refused context text still used
    the request's room for new turns, so NUL-laced fillers kept the hidden queries unobserved."""
    from probewatch.integrations.asgi import ProbewatchMiddleware

    app = ProbewatchMiddleware(echo_app, engine=engine)
    chat = {"messages": [*_forged_chat()["messages"][:1], {"role": "user", "content": "nul\x00 inside"}]}
    chat["messages"].append({"role": "user", "content": "What was the first treaty about?\x00"})
    status, _, _ = asyncio.run(_call(app, "/v1/chat/completions", chat, {"x-account-id": "nul-sender"}))
    assert status == 200 and engine.report("nul-sender").n_queries == 3


class RefusingEngine(RecordingEngine):
    """Refuses every text holding "refuse me", as an engine with stricter rules would."""

    def observe_batch(self, accounts, prompts, ts=None, metas=None):
        verdicts = [
            None if "refuse me" in p else self.observe(a, p, meta=m)
            for a, p, m in zip(accounts, prompts, metas, strict=True)
        ]
        errors = {i: pw.InvalidPromptError("refused") for i, v in enumerate(verdicts) if v is None}
        if errors:
            raise pw.BatchError(errors, verdicts)
        return verdicts


def test_a_refused_context_text_does_not_stop_the_others_or_the_prompt():
    from probewatch.integrations.asgi import ProbewatchMiddleware

    engine = RefusingEngine()
    app = ProbewatchMiddleware(echo_app, engine=engine)
    chat = {"messages": [{"role": "user", "content": "refuse me"}, {"role": "user", "content": "an earlier turn"}]}
    chat["messages"].append({"role": "user", "content": "the prompt"})
    status, headers, _ = asyncio.run(_call(app, "/v1/chat/completions", chat, {"x-account-id": "partly-refused"}))
    assert status == 200 and headers[b"x-probewatch-level"] == b"ok"
    assert [prompt for _, prompt, _ in engine.calls] == ["an earlier turn", "the prompt"]


def test_integration_request_meta_settings_from_the_environment(monkeypatch):
    from probewatch.integrations.asgi import ProbewatchMiddleware

    monkeypatch.setenv("PROBEWATCH_MIDDLEWARE_REQUEST_META", "off")
    assert ProbewatchMiddleware(echo_app, engine=BrokenEngine()).request_meta is False
    monkeypatch.setenv("PROBEWATCH_MIDDLEWARE_REQUEST_META", "maybe")
    with pytest.raises(ConfigError, match="PROBEWATCH_MIDDLEWARE_REQUEST_META"):
        ProbewatchMiddleware(echo_app, engine=BrokenEngine())
    monkeypatch.delenv("PROBEWATCH_MIDDLEWARE_REQUEST_META")
    assert ProbewatchMiddleware(echo_app, engine=BrokenEngine()).sent_texts is not None
    monkeypatch.setenv("PROBEWATCH_MIDDLEWARE_OBSERVE_CONTEXT", "off")
    assert ProbewatchMiddleware(echo_app, engine=BrokenEngine()).sent_texts is None


async def _call(app, path: str, body: dict, headers: dict[str, str]):
    """Drive an ASGI app by hand (the client at 192.0.2.10); returns (status, headers, body)."""
    return await _call_raw(app, path, json.dumps(body).encode(), headers)


async def _call_raw(app, path: str, raw: bytes, headers: dict[str, str]):
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "client": ("192.0.2.10", 41000),
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    sent = []
    parts = [
        {"type": "http.request", "body": raw[:10], "more_body": True},
        {"type": "http.request", "body": raw[10:], "more_body": False},
    ]

    async def receive():
        return parts.pop(0) if parts else {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_bytes = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], dict(start["headers"]), body_bytes


async def echo_app(scope, receive, send):
    """A tiny OpenAI-ish app that echoes the body it received (proves the body is passed on intact)."""
    body, more = b"", True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def test_asgi_middleware_blocks_flagged_annotates_others_and_passes_bodies_intact(engine):
    from probewatch.integrations.asgi import ProbewatchMiddleware

    app = ProbewatchMiddleware(echo_app, engine=engine, account_header="X-Account-Id")
    chat = {"model": "m", "messages": [{"role": "user", "content": "How do rainbows form?"}]}
    status, headers, body = asyncio.run(_call(app, "/v1/chat/completions", chat, {"x-account-id": "normal-user"}))
    assert status == 200 and json.loads(body) == chat
    assert headers[b"x-probewatch-level"] in (b"ok", b"watch")

    status, _, body = asyncio.run(
        _call(app, "/v1/completions", {"prompt": "tax violin opera"}, {"x-account-id": "attacker"})
    )
    assert status == 403 and json.loads(body)["error"]["type"] == "probewatch_blocked"

    n_before = engine.report("normal-user").n_queries
    status, headers, _ = asyncio.run(_call(app, "/v1/chat/completions", chat, {}))  # no account header
    assert status == 200 and b"x-probewatch-level" not in headers
    status, _, _ = asyncio.run(_call(app, "/v1/models", chat, {"x-account-id": "normal-user"}))  # other path
    assert status == 200 and engine.report("normal-user").n_queries == n_before

    annotate = ProbewatchMiddleware(echo_app, engine=engine, account_header="x-account-id", mode="annotate")
    status, headers, _ = asyncio.run(
        _call(annotate, "/v1/completions", {"prompt": "gothic harbor"}, {"x-account-id": "attacker"})
    )
    assert status == 200 and headers[b"x-probewatch-level"] == b"flag"


def test_litellm_guardrail_hooks_block_flagged_and_pass_normal(engine):
    from fastapi import HTTPException
    from litellm.proxy._types import UserAPIKeyAuth

    from probewatch.integrations.litellm import ProbewatchGuardrail

    guard = ProbewatchGuardrail(
        engine=engine,
        account_field="user_api_key_end_user_id",
        guardrail_name="probewatch",
        event_hook="pre_call",
        default_on=True,
    )
    data = {"model": "m", "messages": [{"role": "user", "content": "Best way to learn piano?"}]}
    out = asyncio.run(guard.async_pre_call_hook(UserAPIKeyAuth(end_user_id="pianist"), None, data, "completion"))
    assert out["metadata"]["probewatch_level"] in ("ok", "watch")
    with pytest.raises(HTTPException) as blocked:
        asyncio.run(
            guard.async_pre_call_hook(
                UserAPIKeyAuth(end_user_id="attacker"),
                None,
                {"messages": [{"role": "user", "content": "lemma sprint"}]},
                "completion",
            )
        )
    assert blocked.value.status_code == 403
    with pytest.raises(HTTPException):  # during_call flags the same way, in parallel with the model call
        asyncio.run(
            guard.async_moderation_hook(
                {"messages": [{"role": "user", "content": "cipher mango"}]},
                UserAPIKeyAuth(end_user_id="attacker"),
                "completion",
            )
        )


REFUSED_OR_UNREADABLE = {
    "nul": {"messages": [{"role": "user", "content": "tell me\x00 a story"}]},
    "over-long": {"messages": [{"role": "user", "content": "a " * 100_001}]},
    "token-ids": {"prompt": [1, 2, 3]},
}


@pytest.mark.parametrize("body", list(REFUSED_OR_UNREADABLE))
def test_a_flagged_account_is_blocked_whatever_prompt_it_sends(engine, body):
    """A prompt the engine refuses (a NUL, past max_prompt_chars) or cannot read (token ids) used
    to pass a flagged account through block mode; it is judged by where the account stands."""
    from fastapi import HTTPException
    from litellm.proxy._types import UserAPIKeyAuth

    from probewatch.integrations.asgi import ProbewatchMiddleware
    from probewatch.integrations.litellm import ProbewatchGuardrail

    request = REFUSED_OR_UNREADABLE[body]
    path = "/v1/completions" if "prompt" in request else "/v1/chat/completions"
    app = ProbewatchMiddleware(echo_app, engine=engine, account_header="x-account-id")
    status, _, answer = asyncio.run(_call(app, path, request, {"x-account-id": "attacker"}))
    assert status == 403 and json.loads(answer)["error"]["type"] == "probewatch_blocked"
    status, _, answer = asyncio.run(_call(app, path, request, {"x-account-id": "stranger"}))
    assert status == 200 and json.loads(answer) == request  # an account it does not hold passes, untouched
    guard = ProbewatchGuardrail(
        engine=engine, account_field="user_api_key_end_user_id", guardrail_name="probewatch", event_hook="pre_call"
    )
    if "messages" in request:
        with pytest.raises(HTTPException) as blocked:
            asyncio.run(
                guard.async_pre_call_hook(UserAPIKeyAuth(end_user_id="attacker"), None, dict(request), "completion")
            )
        assert blocked.value.status_code == 403
        passed = asyncio.run(
            guard.async_pre_call_hook(UserAPIKeyAuth(end_user_id="stranger"), None, dict(request), "completion")
        )
        assert passed is not None


class UnloadableEngine:
    """An engine whose model cannot load: a ProbewatchError that is no fault of the request."""

    def observe(self, account: str, prompt: str, ts=None, meta=None):
        raise pw.BackendUnavailableError("the embedding model cannot be loaded")


def test_an_engine_that_cannot_load_follows_the_failure_policy_and_bad_bodies_pass():
    """BackendUnavailableError is a ProbewatchError; it used to pass requests even when closed."""
    from fastapi import HTTPException
    from litellm.proxy._types import UserAPIKeyAuth

    from probewatch.integrations.asgi import ProbewatchMiddleware
    from probewatch.integrations.litellm import ProbewatchGuardrail

    chat = {"messages": [{"role": "user", "content": "hello"}]}
    closed = ProbewatchMiddleware(echo_app, engine=UnloadableEngine(), failure_policy="closed")
    status, _, body = asyncio.run(_call(closed, "/v1/chat/completions", chat, {"x-account-id": "someone"}))
    assert status == 503 and json.loads(body)["error"]["type"] == "probewatch_unavailable"
    guard = ProbewatchGuardrail(
        engine=UnloadableEngine(), account_field="user_api_key_end_user_id", failure_policy="closed",
        guardrail_name="probewatch", event_hook="pre_call",
    )  # fmt: skip
    with pytest.raises(HTTPException) as refused:
        asyncio.run(guard.async_pre_call_hook(UserAPIKeyAuth(end_user_id="someone"), None, dict(chat), "completion"))
    assert refused.value.status_code == 503
    # a body nested past json's recursion is no JSON the middleware can read: the app gets it as sent
    deep = b"[" * 100_000 + b"]" * 100_000
    passing = ProbewatchMiddleware(echo_app, engine=UnloadableEngine())
    status, _, body = asyncio.run(_call_raw(passing, "/v1/completions", deep, {"x-account-id": "someone"}))
    assert status == 200 and body == deep


def test_a_null_metadata_in_the_request_is_replaced_not_a_crash(engine):
    from litellm.proxy._types import UserAPIKeyAuth

    from probewatch.integrations.litellm import ProbewatchGuardrail

    guard = ProbewatchGuardrail(
        engine=engine, account_field="user_api_key_end_user_id", guardrail_name="probewatch", event_hook="pre_call"
    )
    data = {"messages": [{"role": "user", "content": "How long do tulips last?"}], "metadata": None}
    out = asyncio.run(guard.async_pre_call_hook(UserAPIKeyAuth(end_user_id="gardener"), None, data, "completion"))
    assert out["metadata"]["probewatch_level"] in ("ok", "watch")


class BrokenEngine:
    """An engine whose every observation fails, as a crashed or overloaded one would."""

    def observe(self, account: str, prompt: str, ts=None, meta=None):
        raise RuntimeError("engine down")


def test_failure_policy_decides_when_the_engine_fails():
    from probewatch.integrations.asgi import ProbewatchMiddleware

    chat = {"messages": [{"role": "user", "content": "hello"}]}
    request = ("/v1/chat/completions", chat, {"x-account-id": "someone"})
    status, _, _ = asyncio.run(_call(ProbewatchMiddleware(echo_app, engine=BrokenEngine()), *request))
    assert status == 200  # open, the default: the request passes
    closed = ProbewatchMiddleware(echo_app, engine=BrokenEngine(), failure_policy="closed")
    status, _, body = asyncio.run(_call(closed, *request))
    assert status == 503 and json.loads(body)["error"]["type"] == "probewatch_unavailable"


def test_litellm_guardrail_fails_closed_when_asked():
    from fastapi import HTTPException
    from litellm.proxy._types import UserAPIKeyAuth

    from probewatch.integrations.litellm import ProbewatchGuardrail

    data = {"messages": [{"role": "user", "content": "hello"}]}
    auth = UserAPIKeyAuth(end_user_id="someone")
    for policy in ("open", "closed"):
        guard = ProbewatchGuardrail(
            engine=BrokenEngine(),
            account_field="user_api_key_end_user_id",
            failure_policy=policy,
            guardrail_name="probewatch",
            event_hook="pre_call",
        )
        if policy == "open":
            assert asyncio.run(guard.async_pre_call_hook(auth, None, dict(data), "completion")) is not None
        else:
            with pytest.raises(HTTPException) as refused:
                asyncio.run(guard.async_pre_call_hook(auth, None, dict(data), "completion"))
            assert refused.value.status_code == 503


def test_integrations_reject_bad_settings_with_config_errors():
    from probewatch.integrations.asgi import ProbewatchMiddleware
    from probewatch.integrations.litellm import ProbewatchGuardrail

    with pytest.raises(ConfigError, match=r"mode must be one of \('block', 'annotate'\); got 'shout'"):
        ProbewatchMiddleware(echo_app, engine=BrokenEngine(), mode="shout")
    with pytest.raises(ConfigError, match=r"failure_policy must be one of \('open', 'closed'\); got True"):
        ProbewatchMiddleware(echo_app, engine=BrokenEngine(), failure_policy=True)
    with pytest.raises(ConfigError, match="failure_policy"):
        ProbewatchGuardrail(engine=BrokenEngine(), failure_policy="ajar", guardrail_name="probewatch")


def test_middleware_without_an_engine_reads_its_settings_when_built(monkeypatch):
    from probewatch.integrations.asgi import ProbewatchMiddleware

    monkeypatch.setenv("PROBEWATCH_ENGINE_K_NEIGHBORS", "99")  # out of range: refused at start-up
    with pytest.raises(pw.ConfigError, match="k_neighbors"):
        ProbewatchMiddleware(echo_app)
    monkeypatch.setenv("PROBEWATCH_ENGINE_K_NEIGHBORS", "4")
    middleware = ProbewatchMiddleware(echo_app)  # settings fine: the model is not loaded yet
    assert middleware._engine is None


class HungEngine:
    """An engine that takes far longer than any deadline."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def observe(self, account: str, prompt: str, ts=None, meta=None):
        time.sleep(self.seconds)
        raise RuntimeError("too late")


def test_a_hung_engine_holds_the_integrations_threads_never_the_host_s(caplog):
    """Judgements abandoned at the deadline used to hold the host's default executor (6 threads
    on 2 cores): the host's own asyncio.to_thread then waited for the hung engine. A deadline
    passed is one log line each, not a traceback."""
    import logging

    from probewatch.integrations.asgi import ProbewatchMiddleware

    chat = {"messages": [{"role": "user", "content": "hello"}]}

    async def run() -> float:
        app = ProbewatchMiddleware(echo_app, engine=HungEngine(3.0), deadline_s=0.2)
        answers = await asyncio.gather(
            *(_call(app, "/v1/chat/completions", chat, {"x-account-id": f"a{i}"}) for i in range(8))
        )
        assert [status for status, _, _ in answers] == [200] * 8  # open: each passed at its deadline
        started = time.monotonic()
        await asyncio.to_thread(lambda: None)
        return time.monotonic() - started

    with caplog.at_level(logging.WARNING, logger="probewatch"):
        assert asyncio.run(run()) < 1.0
    late = [r for r in caplog.records if "within deadline_s" in r.getMessage()]
    assert len(late) == 8 and not any(r.exc_info for r in late)


def test_the_litellm_guardrail_keeps_its_deadline():
    from fastapi import HTTPException
    from litellm.proxy._types import UserAPIKeyAuth

    from probewatch.integrations.litellm import ProbewatchGuardrail

    data = {"messages": [{"role": "user", "content": "hello"}]}
    auth = UserAPIKeyAuth(end_user_id="someone")
    for policy in ("open", "closed"):
        guard = ProbewatchGuardrail(
            engine=HungEngine(3.0), account_field="user_api_key_end_user_id", failure_policy=policy,
            deadline_s=0.2, guardrail_name="probewatch", event_hook="pre_call",
        )  # fmt: skip
        started = time.monotonic()
        if policy == "open":
            assert asyncio.run(guard.async_pre_call_hook(auth, None, dict(data), "completion")) is not None
        else:
            with pytest.raises(HTTPException) as refused:
                asyncio.run(guard.async_pre_call_hook(auth, None, dict(data), "completion"))
            assert refused.value.status_code == 503
        assert time.monotonic() - started < 1.5, policy


@pytest.mark.skipif(cupy_available(), reason="needs a machine without CUDA, where a cuda engine cannot be built")
def test_a_middleware_whose_engine_cannot_be_built_follows_the_failure_policy(monkeypatch):
    """Built without an engine (as vLLM builds it), the middleware makes one on first use; on a
    machine without CUDA that fails, and every request used to raise (a 500) even when open."""
    from probewatch.integrations.asgi import ProbewatchMiddleware

    monkeypatch.setenv("PROBEWATCH_ENGINE_DEVICE", "cuda")
    chat = {"messages": [{"role": "user", "content": "hello"}]}
    request = ("/v1/chat/completions", chat, {"x-account-id": "someone"})
    status, _, body = asyncio.run(_call(ProbewatchMiddleware(echo_app), *request))
    assert status == 200 and json.loads(body) == chat
    status, _, _ = asyncio.run(_call(ProbewatchMiddleware(echo_app, failure_policy="closed"), *request))
    assert status == 503


class FlaggingEngine:
    """Flags account "mallory" on every prompt, keeps others at ok; records each observation
    (after ``delay`` seconds, as a busy engine would) and answers standing reports."""

    def __init__(self):
        self.calls: list[tuple[str, str]] = []
        self.delay = 0.0

    def _verdict(self, account: str) -> pw.Verdict:
        flag = account == "mallory"
        level = pw.Level.FLAG if flag else pw.Level.OK
        n = sum(1 for a, _ in self.calls if a == account)
        return pw.Verdict(
            account=account, risk=float(flag), level=level, flagged=flag, n_queries=n, score=0.0, peak_risk=float(flag)
        )

    def observe(self, account: str, prompt: str, ts=None, meta=None):
        time.sleep(self.delay)
        self.calls.append((account, prompt))
        return self._verdict(account)

    def report(self, account: str):
        if not any(a == account for a, _ in self.calls):
            raise pw.UnknownAccountError(account)
        v = self._verdict(account)
        return types.SimpleNamespace(
            **{
                k: getattr(v, k)
                for k in ("account", "risk", "level", "flagged", "n_queries", "score", "peak_risk", "peak_one_in")
            }
        )


def test_the_middleware_reads_responses_input_and_keeps_flagged_accounts_out_of_padding_and_floods(monkeypatch):
    """Red-team findings: /v1/responses was never observed; a flagged account padded its body
    past max_body_bytes and passed; under a flood (deadline passed, policy open) a flagged
    account's requests passed, and the judgements cancelled at the deadline were never observed."""
    from probewatch.integrations.asgi import ProbewatchMiddleware

    engine = FlaggingEngine()
    app = ProbewatchMiddleware(echo_app, engine=engine, deadline_s=0.2, max_body_bytes=4096)

    async def run() -> None:
        for body in (
            {"input": "what is a tide?"},
            {"input": [{"role": "user", "content": [{"type": "input_text", "text": "and a neap tide?"}]}]},
        ):
            status, _, _ = await _call(app, "/v1/responses", body, {"x-account-id": "alice"})
            assert status == 200
        assert engine.calls == [("alice", "what is a tide?"), ("alice", "and a neap tide?")]
        chat = {"messages": [{"role": "user", "content": "probe 1"}]}
        assert (await _call(app, "/v1/chat/completions", chat, {"x-account-id": "mallory"}))[0] == 403
        padded = {"messages": [{"role": "user", "content": "probe 2"}], "pad": " " * 10_000}  # past 4 KiB: unread
        assert (await _call(app, "/v1/chat/completions", padded, {"x-account-id": "mallory"}))[0] == 403
        small = {"messages": [{"role": "user", "content": "hi"}], "pad": " " * 10_000}
        assert (await _call(app, "/v1/chat/completions", small, {"x-account-id": "alice"}))[0] == 200
        engine.delay = 0.5  # the engine falls behind: every judgement passes its deadline
        flooded = await asyncio.gather(
            _call(
                app,
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": "probe 3"}]},
                {"x-account-id": "mallory"},
            ),
            _call(
                app,
                "/v1/chat/completions",
                {"messages": [{"role": "user", "content": "hello"}]},
                {"x-account-id": "bob"},
            ),
        )
        assert [status for status, _, _ in flooded] == [403, 200]  # policy open: only the flagged one is held
        await asyncio.sleep(1.5)  # the judgements past their deadline still run
        assert ("mallory", "probe 3") in engine.calls and ("bob", "hello") in engine.calls

    asyncio.run(run())
    monkeypatch.setenv("PROBEWATCH_MIDDLEWARE_PATHS", "/invocations, /v1/chat/completions")
    assert ProbewatchMiddleware(echo_app, engine=engine).paths == {"/invocations", "/v1/chat/completions"}


def test_the_litellm_guardrail_reads_list_prompts_and_responses_input():
    from litellm.proxy._types import UserAPIKeyAuth

    from probewatch.integrations.litellm import ProbewatchGuardrail

    engine = RecordingEngine()
    guard = ProbewatchGuardrail(
        engine=engine,
        account_field="user_api_key_end_user_id",
        request_meta=False,
        guardrail_name="probewatch",
        event_hook="pre_call",
    )
    auth = UserAPIKeyAuth(end_user_id="someone")
    for data in (
        {"prompt": ["first", "second"]},
        {"input": "third"},
        {"input": [{"role": "user", "content": "fourth"}]},
    ):
        asyncio.run(guard.async_pre_call_hook(auth, None, data, "completion"))
    assert [prompt for _, prompt, _ in engine.calls] == ["first\nsecond", "third", "fourth"]


def test_a_verdict_that_comes_after_its_deadline_still_blocks_the_account():
    """Red-team finding: heavy requests kept six at a time in flight made every judgement miss
    its deadline; the engine had the account at flag from the second wave, but only a verdict
    in time blocked, so 30 of 30 requests passed. A late verdict now blocks too, on the
    middleware and the in-process LiteLLM guardrail."""
    from fastapi import HTTPException
    from litellm.proxy._types import UserAPIKeyAuth

    from probewatch.integrations.asgi import ProbewatchMiddleware
    from probewatch.integrations.litellm import ProbewatchGuardrail

    engine = FlaggingEngine()
    engine.delay = 0.4  # every judgement passes its 0.1 s deadline
    app = ProbewatchMiddleware(echo_app, engine=engine, deadline_s=0.1)
    guard = ProbewatchGuardrail(
        engine=engine, account_field="user_api_key_end_user_id", deadline_s=0.1,
        guardrail_name="probewatch", event_hook="pre_call",
    )  # fmt: skip
    chat = {"messages": [{"role": "user", "content": "probe"}]}

    async def run() -> None:
        first = await asyncio.gather(
            *(_call(app, "/v1/chat/completions", chat, {"x-account-id": who}) for who in ("mallory", "bob"))
        )
        assert [status for status, _, _ in first] == [200, 200]  # open: both late, both passed
        await guard.async_pre_call_hook(UserAPIKeyAuth(end_user_id="mallory"), None, dict(chat), "completion")
        await asyncio.sleep(1.5)  # the late judgements finish
        again = await asyncio.gather(
            *(_call(app, "/v1/chat/completions", chat, {"x-account-id": who}) for who in ("mallory", "bob"))
        )
        assert [status for status, _, _ in again] == [403, 200]  # late again, but mallory's last verdict was flag
        with pytest.raises(HTTPException) as blocked:
            await guard.async_pre_call_hook(UserAPIKeyAuth(end_user_id="mallory"), None, dict(chat), "completion")
        assert blocked.value.status_code == 403

    asyncio.run(run())
