"""Per-client rate limits, honest fail-open answers and the auth choice, over real HTTP."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from tests.support import AUTH, SidecarProcess, httpx, parse_prometheus

pytestmark = pytest.mark.timeout(300)

GUARDRAIL = "/beta/litellm_basic_guardrail_api"


@pytest.fixture(scope="module")
def limited(tmp_path_factory):
    root = tmp_path_factory.mktemp("limited")
    server = SidecarProcess(
        root / "data",
        root / "server.log",
        request_deadline_ms=30000,
        max_items_per_request=8,
        rate_limit_items_per_s=0.2,  # 8 items at once, then one every 5 s
        rate_limit_burst=8,
        guardrail_rate_limit_per_s=0.2,
        guardrail_rate_limit_burst=3,
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


def _observe(url: str, client: str, n: int) -> httpx.Response:
    items = [{"account": f"limited-{client}", "prompt": f"Question {i} about gardening?"} for i in range(n)]
    return httpx.post(url + "/v1/observe", json={"items": items}, headers={**AUTH, "x-probewatch-client": client})


def _guardrail(url: str, client: str, account: str | None = "guarded") -> httpx.Response:
    request_data = {"user_api_key_hash": account} if account else {}
    body = {"input_type": "request", "texts": ["How tall do sunflowers grow?"], "request_data": request_data}
    return httpx.post(url + GUARDRAIL, json=body, headers={**AUTH, "x-probewatch-client": client})


def test_a_client_over_its_rate_gets_429_and_others_and_the_guardrail_do_not(limited):
    url = limited.url
    assert _observe(url, "bulk-a", 8).status_code == 200  # the whole burst
    over = _observe(url, "bulk-a", 2)
    assert over.status_code == 429, over.text
    assert over.json()["error"]["type"] == "RateLimited" and "none of the 2 items was observed" in over.text
    assert 1 <= int(over.headers["retry-after"]) <= 10
    assert httpx.get(url + "/v1/accounts/limited-bulk-a", headers=AUTH).json()["n_queries"] == 8
    # another client has its own bucket; the guardrail route has its own buckets too
    assert _observe(url, "bulk-b", 8).status_code == 200
    answers = [_guardrail(url, "bulk-a") for _ in range(4)]
    assert [r.status_code for r in answers] == [200, 200, 200, 429]
    assert answers[0].json() == {"action": "NONE"}  # observed: nothing more to say
    assert "retry-after" in answers[3].headers and answers[3].json()["error"]["type"] == "RateLimited"

    samples = parse_prometheus(httpx.get(url + "/metrics").text)
    for endpoint, items in (("/v1/observe", 2), (GUARDRAIL, 1)):
        assert samples[("probewatch_rate_limited_requests_total", (("endpoint", endpoint),))] == 1
        labels = (("endpoint", endpoint), ("reason", "rate_limited"))
        assert samples[("probewatch_unobserved_items_total", labels)] == items
    text = httpx.get(url + "/metrics").text
    assert "bulk-a" not in text and "limited-" not in text and "guarded" not in text  # never a label


def test_a_rate_limited_request_leaves_its_hidden_turns_to_be_observed_when_sent_again(limited):
    """Red-team finding: the route marked a request's earlier turns as sent before its rate
    check, so a request answered 429 made its hidden turns "already sent" for the retry."""
    hidden = [f"What did trade treaty number {i} change about tariffs?" for i in range(4)]
    messages = [{"role": "user", "content": q} for q in hidden] + [{"role": "user", "content": "Answer all."}]
    body = {
        "input_type": "request",
        "texts": [m["content"] for m in messages],
        "structured_messages": messages,
        "request_data": {"user_api_key_hash": "retrier"},
    }
    headers = {**AUTH, "x-probewatch-client": "gw-retry"}
    for _ in range(3):  # the client's burst, spent on another account
        assert _guardrail(limited.url, "gw-retry").status_code == 200
    assert httpx.post(limited.url + GUARDRAIL, json=body, headers=headers).status_code == 429
    assert httpx.get(limited.url + "/v1/accounts/retrier", headers=AUTH).status_code == 404
    time.sleep(5.5)  # one token back
    assert httpx.post(limited.url + GUARDRAIL, json=body, headers=headers).json() == {"action": "NONE"}
    assert httpx.get(limited.url + "/v1/accounts/retrier", headers=AUTH).json()["n_queries"] == len(hidden) + 1


def test_unobserved_guardrail_answers_say_so_and_are_counted(limited):
    answer = _guardrail(limited.url, "gw-unobserved", account=None)
    assert answer.json() == {"action": "NONE", "observed": False, "reason": "no_account"}
    samples = parse_prometheus(httpx.get(limited.url + "/metrics").text)
    assert samples[("probewatch_unobserved_items_total", (("endpoint", GUARDRAIL), ("reason", "no_account")))] == 1
    invalid = httpx.post(limited.url + GUARDRAIL, json={"input_type": "request"}, headers=AUTH)
    assert invalid.status_code == 422 and invalid.json()["error"]["field"] == "request_data"


def test_a_prompt_that_cannot_be_observed_is_counted(limited):
    items = [{"account": "limited-prompt", "prompt": " "}]
    r = httpx.post(limited.url + "/v1/observe", json=items, headers={**AUTH, "x-probewatch-client": "prompts"})
    assert r.status_code == 200 and r.json()["errors"] == 1 and "error" in r.json()["results"][0]
    samples = parse_prometheus(httpx.get(limited.url + "/metrics").text)
    labels = (("endpoint", "/v1/observe"), ("reason", "invalid_prompt"))
    assert samples[("probewatch_unobserved_items_total", labels)] == 1


def _serve(*args: str, **env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("PROBEWATCH_")}
    return subprocess.run(
        [sys.executable, "-m", "probewatch.serve", *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_without_a_token_the_service_refuses_to_start():
    refused = _serve("--port", "1")
    assert refused.returncode == 2
    assert "set PROBEWATCH_API_TOKEN" in refused.stderr and "--no-auth" in refused.stderr
    public = _serve("--no-auth", "--host", "0.0.0.0", "--port", "1")
    assert public.returncode == 2 and "loopback" in public.stderr


def test_a_wrong_method_lists_every_method_of_the_path(limited):
    r = httpx.options(limited.url + "/v1/accounts/someone", headers=AUTH)
    assert r.status_code == 405 and r.json()["error"]["type"] == "MethodNotAllowed"
    assert {"GET", "DELETE"} <= {m.strip() for m in r.headers["allow"].split(",")}


def test_the_published_account_rule_is_the_one_the_sidecar_checks():
    import random
    import re
    import sys

    from probewatch.errors import InvalidAccountError
    from probewatch.io.validation import check_account
    from probewatch.serve.http import ACCOUNT_SCHEMA

    pattern = re.compile(ACCOUNT_SCHEMA["pattern"])
    rng = random.Random(11)
    edges = ["a", " ", " a ", "\u3000", "a\u2028", "a\u200b", "\u202e", "x\U000e0001", "p/q?x#1%", "\u00a0b"]
    randoms = ["".join(chr(rng.randrange(sys.maxunicode)) for _ in range(rng.randrange(1, 4))) for _ in range(20000)]
    checked = 0
    for text in edges + [t for t in randoms if not any(0xD800 <= ord(c) <= 0xDFFF for c in t)]:
        try:
            check_account(text)
            accepted = True
        except InvalidAccountError:
            accepted = False
        published = bool(pattern.search(text)) and len(text) <= ACCOUNT_SCHEMA["maxLength"]
        assert published == accepted, (text, published, accepted)
        checked += 1
    assert checked > 10000


def test_requests_past_max_connections_get_the_json_503_before_any_work(tmp_path):
    """Past max_connections requests in flight, the Gatekeeper answers the one error body with
    Retry-After (uvicorn's own cap, twice as high, would answer plain text)."""
    import asyncio
    import json

    from probewatch.serve import ServerConfig
    from probewatch.serve.app import Gatekeeper
    from probewatch.serve.metrics import ServerMetrics

    release = asyncio.Event()
    served: list[str] = []

    async def slow_app(scope, receive, send):
        served.append(scope["path"])
        await release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"ok"})

    config = ServerConfig(data_dir=str(tmp_path), max_connections=2, no_auth=True, host="127.0.0.1")
    gate = Gatekeeper(slow_app, config, ServerMetrics(lambda: None, lambda: 0), routes=[])

    async def request(path: str) -> list[dict]:
        sent: list[dict] = []

        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message):
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(), "headers": []}
        await gate(scope, receive, send)
        return sent

    async def scenario():
        held = [asyncio.create_task(request(f"/held-{i}")) for i in range(2)]
        await asyncio.sleep(0.05)
        refused = await request("/third")
        release.set()
        return refused, await asyncio.gather(*held)

    refused, held = asyncio.run(scenario())
    start, body = refused
    headers = dict(start["headers"])
    assert start["status"] == 503 and headers[b"retry-after"] == b"1"
    assert headers[b"content-type"] == b"application/json"
    error = json.loads(body["body"])["error"]
    assert error["type"] == "Overloaded" and "max_connections" in error["message"]
    assert served == ["/held-0", "/held-1"]  # the third never reached the app
    assert [messages[0]["status"] for messages in held] == [200, 200] and gate.in_flight == 0
