"""The sidecar over real HTTP: a `probewatch serve` subprocess on 127.0.0.1 shared by this module."""

from __future__ import annotations

import contextlib
import gzip
import http.client as http_client
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import AUTH, TOKEN, SidecarProcess, free_port, httpx, parse_prometheus, random_word_prompts

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    root = tmp_path_factory.mktemp("sidecar")
    # A lenient flag threshold (benign FPR 20 %) makes word-salad accounts flag within ~20 queries.
    server = SidecarProcess(
        root / "data",
        root / "server.log",
        engine_target_fpr=0.2,
        engine_watch_fpr=0.4,
        request_deadline_ms=30000,
        guardrail_account_field="user_api_key_end_user_id",
        max_body_bytes=256 * 1024,
        max_prompt_chars=2000,
    )
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def http(sidecar):
    with sidecar.client() as client:
        yield client


def test_health_and_metrics_are_open_everything_else_needs_the_token(sidecar):
    assert httpx.get(sidecar.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(sidecar.url + "/readyz").status_code == 200
    assert httpx.get(sidecar.url + "/metrics").status_code == 200
    for method, path in (
        ("POST", "/v1/observe"),
        ("GET", "/v1/accounts"),
        ("GET", "/v1/accounts/a"),
        ("DELETE", "/v1/accounts/a"),
        ("GET", "/v1/campaigns"),
        ("GET", "/v1/campaigns/cmp-1"),
        ("POST", "/beta/litellm_basic_guardrail_api"),
        ("GET", "/openapi.json"),
    ):
        r = httpx.request(method, sidecar.url + path, json={"account": "a", "prompt": "hi"})
        assert r.status_code == 401, (path, r.text)
        assert "token" in r.json()["error"]["message"]
        wrong = httpx.request(method, sidecar.url + path, headers={"Authorization": "Bearer wrong-token-xxxxxxxx"})
        assert wrong.status_code == 401
    # LiteLLM's generic guardrail sends its api_key as x-api-key.
    r = httpx.post(
        sidecar.url + "/beta/litellm_basic_guardrail_api",
        headers={"x-api-key": TOKEN},
        json={"input_type": "response", "texts": ["x"], "request_data": {}},
    )
    assert r.json() == {"action": "NONE"}


def test_observe_returns_verdicts_in_order_with_per_item_errors(http):
    r = http.post(
        "/v1/observe",
        json={
            "items": [
                {"account": "alice", "prompt": "How do I bake sourdough bread?"},
                {"account": "alice", "prompt": "   "},
                {"account": "bob", "prompt": "What is the capital of France?", "ts": 1700000000.0},
                {"account": "bob", "prompt": "nul\x00byte"},
            ]
        },
    )
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["index"] for x in results] == [0, 1, 2, 3]
    assert results[0]["account"] == "alice" and results[0]["level"] in ("ok", "watch", "flag")
    assert results[0]["action"] in ("NONE", "BLOCKED") and results[0]["n_queries"] == 1
    assert results[0]["campaign"] is None  # a verdict always carries the key
    assert "non-whitespace" in results[1]["error"]["message"]  # a prompt that cannot be observed: that item only
    assert results[2]["account"] == "bob"
    assert "NUL" in results[3]["error"]["message"]
    assert r.json()["errors"] == 2
    single = http.post("/v1/observe", json={"account": "alice", "prompt": "And with rye flour?"})
    assert single.status_code == 200 and single.json()["results"][0]["n_queries"] == 2


def test_an_item_breaking_the_schema_refuses_the_whole_request(http):
    before = http.get("/v1/accounts/alice").json()["n_queries"]
    r = http.post(
        "/v1/observe",
        json={
            "items": [
                {"account": "alice", "prompt": "Is this one observed?"},
                {"account": 7, "prompt": "typed wrong"},
                {"account": "carol"},
                {"account": "a\u202eb", "prompt": "direction override"},
            ]
        },
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["type"] == "InvalidItem" and error["field"] == "items[1].account"
    assert "3 of 4 items are invalid, so none was observed" in error["message"]
    assert "must be a str" in error["message"] and "missing ['prompt']" in error["message"]
    assert "U+202E" in error["message"]
    assert http.get("/v1/accounts/alice").json()["n_queries"] == before  # nothing of it was observed


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b"", 400, "empty"),
        (b'"a string"', 422, "got a JSON str"),
        (b'{"items": "abc"}', 422, "must be a list"),
        (b'{"items": []}', 422, "no items"),
        (b'{"items": [{"account": "a", "prompt": "x"}], "extra": 1}', 422, "unexpected keys"),
        (b'[{"account": 1, "prompt": 2}]', 422, "must be a str"),
    ],
)
def test_malformed_bodies_get_a_4xx_with_a_clear_message(http, body, status, words):
    r = http.post("/v1/observe", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert words in r.text


def test_body_limit_413_before_reading_and_for_chunked_bodies(http):
    big = b'{"account": "a", "prompt": "' + b"x" * (300 * 1024) + b'"}'
    r = http.post("/v1/observe", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]

    def chunks():
        for _ in range(40):
            yield b"y" * 8192

    r = http.post("/v1/observe", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_long_prompts_are_cut_in_their_middle_and_marked(http):
    opening = "Tell me about whales. " * 200  # past max_prompt_chars (2,000) on its own
    results = []
    for ending in ("Which whale is the largest?", "How deep do sperm whales dive?"):
        r = http.post("/v1/observe", json={"account": "dave", "prompt": opening + ending})
        assert r.status_code == 200
        results.append(r.json()["results"][0])
    assert [r["truncated"] for r in results] == [True, True]
    # Cut at its end, the second prompt would be the first sent again: a repeat, not judged.
    assert results[1]["repeat"] is False and results[1]["n_queries"] == results[0]["n_queries"] + 1


def test_report_accounts_pagination_and_forget(http):
    report = http.get("/v1/accounts/alice").json()
    assert report["account"] == "alice" and report["n_queries"] == 2 and "features" in report
    assert http.get("/v1/accounts/nobody").status_code == 404
    first = http.get("/v1/accounts", params={"limit": 1}).json()
    assert len(first["accounts"]) == 1 and first["next_after"] == first["accounts"][0]
    second = http.get("/v1/accounts", params={"limit": 1, "after": first["next_after"]}).json()
    assert second["accounts"][0] > first["accounts"][0]
    assert http.get("/v1/accounts", params={"level": "purple"}).status_code == 422
    assert http.delete("/v1/accounts/dave").json() == {"account": "dave", "forgotten": True}
    assert http.get("/v1/accounts/dave").status_code == 404
    assert http.delete("/v1/accounts/dave").json()["forgotten"] is False


def _raw(sidecar, method: str, path: str, body: bytes | None = None, auth: bool = True) -> tuple[int, dict, bytes]:
    """One request with ``path`` sent byte for byte (httpx would re-encode it)."""
    connection = http_client.HTTPConnection("127.0.0.1", sidecar.port, timeout=30)
    try:
        headers = {"content-type": "application/json", **(AUTH if auth else {})}
        connection.request(method, path, body=body, headers=headers)
        answer = connection.getresponse()
        return answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read()
    finally:
        connection.close()


def test_a_path_that_cannot_name_an_id_acts_on_no_account(sidecar, http):
    """A route's pattern ends at a final newline: /v1/accounts/victim%0A used to forget 'victim'.
    A bad percent-escape used to become U+FFFD, another id."""
    http.post("/v1/observe", json={"items": [{"account": "victim", "prompt": "What is a good first houseplant?"}]})
    http.post("/v1/observe", json={"items": [{"account": "\ufffd", "prompt": "What soil do ferns like?"}]})
    for method in ("DELETE", "GET"):
        for path, status, error_type, says in (
            ("/v1/accounts/victim%0A", 404, "NotFound", "holds a newline"),
            ("/v1/accounts/victim%0D%0A", 404, "NotFound", "holds a newline"),
            ("/v1/accounts/vic%0Atim", 404, "NotFound", "holds a newline"),
            ("/v1/campaigns/c%0A", 404, "NotFound", "holds a newline"),
            ("/v1/accounts/%FF", 400, "InvalidPath", "not percent-encoded UTF-8"),
        ):
            if method == "DELETE" and path.startswith("/v1/campaigns"):
                continue
            answer_status, _, body = _raw(sidecar, method, path)
            error = json.loads(body)["error"]
            assert (answer_status, error["type"]) == (status, error_type), (method, path, body)
            assert says in error["message"]
    assert http.get("/v1/accounts/victim").json()["n_queries"] == 1
    assert http.get("/v1/accounts/%EF%BF%BD").json()["n_queries"] == 1  # U+FFFD itself, spelt right


def test_head_is_get_without_a_body_and_405_names_the_methods(sidecar, http):
    http.post("/v1/observe", json={"items": [{"account": "header", "prompt": "How deep do tulip bulbs go?"}]})
    for path in ("/healthz", "/readyz", "/metrics", "/v1/accounts", "/v1/accounts/header"):
        status, headers, body = _raw(sidecar, "HEAD", path)
        get = http.get(path)
        assert (status, body) == (get.status_code, b""), path
        assert headers["content-type"] == get.headers["content-type"], path
    status, headers, body = _raw(sidecar, "PUT", "/v1/accounts/header")
    assert status == 405
    assert {m.strip() for m in headers["allow"].split(",")} == {"DELETE", "GET", "HEAD"}
    assert json.loads(body)["error"]["message"] == "method PUT is not allowed on this path; allowed: DELETE, GET, HEAD"


def test_a_trailing_slash_is_a_404_not_a_redirect_to_the_client_s_host(sidecar):
    connection = http_client.HTTPConnection("127.0.0.1", sidecar.port, timeout=30)
    try:
        for method, path in (("GET", "/readyz/"), ("POST", "/v1/observe/")):
            connection.request(method, path, body=b"{}", headers={"host": "elsewhere.example", **AUTH})
            answer = connection.getresponse()
            assert answer.status == 404 and answer.getheader("location") is None, (method, path)
            assert json.loads(answer.read())["error"]["type"] == "NotFound"
    finally:
        connection.close()


def test_meta_text_that_is_not_unicode_is_dropped_and_the_batch_is_observed(sidecar, http):
    """JSON can escape a lone surrogate; it once failed the journal line of the whole micro-batch,
    left a seq gap, and the next start refused to load."""
    body = (
        b'{"items": [{"account": "meta-ok", "prompt": "Which roses are easiest to grow?"},'
        b' {"account": "meta-odd", "prompt": "When do roses bloom?", "meta": {"user_agent": "agent\\ud800", "ip": "\\udc80"}}]}'
    )
    status, _, answer = _raw(sidecar, "POST", "/v1/observe", body)
    assert status == 200, answer
    results = json.loads(answer)["results"]
    assert [r.get("n_queries") for r in results] == [1, 1] and not any("fallback" in r for r in results)
    assert http.get("/v1/accounts/meta-odd").json()["n_queries"] == 1
    assert httpx.get(sidecar.url + "/readyz").status_code == 200


def test_a_guardrail_account_id_that_is_not_text_is_not_made_up(http):
    for value in (["a", "b"], {"x": 1}, True):
        body = {"input_type": "request", "texts": ["hi"], "request_data": {"user_api_key_end_user_id": value}}
        answer = http.post("/beta/litellm_basic_guardrail_api", json=body)
        assert answer.json() == {"action": "NONE", "observed": False, "reason": "invalid_item"}, value
    assert not {"['a', 'b']", "{'x': 1}", "True"} & set(
        http.get("/v1/accounts", params={"limit": 1000}).json()["accounts"]
    )


def assert_error_shape(response: httpx.Response, status: int, error_type: str, field: str | None = None) -> None:
    """The one error body of the sidecar: {"error": {"type", "message", "field"?}} and nothing else."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert {"type", "message"} <= set(error) <= {"type", "message", "field"}, body
    assert error["type"] == error_type and isinstance(error["message"], str) and error["message"], body
    assert error.get("field") == field, body


def test_every_error_status_has_one_error_shape(sidecar, http):
    unauthorized = httpx.get(sidecar.url + "/v1/accounts")
    assert_error_shape(unauthorized, 401, "Unauthorized")
    assert unauthorized.headers["www-authenticate"] == "Bearer"
    json_body = {"content-type": "application/json"}
    assert_error_shape(http.post("/v1/observe", content=b"{not json", headers=json_body), 400, "InvalidJSON")
    assert_error_shape(http.get("/v1/accounts/nobody"), 404, "UnknownAccountError", "account")
    assert_error_shape(http.get("/v1/campaigns/nope"), 404, "UnknownCampaignError", "campaign")
    assert_error_shape(http.get("/v1/no-such-route"), 404, "NotFound")
    assert_error_shape(http.put("/v1/observe", json={}), 405, "MethodNotAllowed")
    big = b'{"account": "a", "prompt": "' + b"x" * (300 * 1024) + b'"}'
    assert_error_shape(http.post("/v1/observe", content=big, headers=json_body), 413, "PayloadTooLarge")
    too_many = {"items": [{"account": "a", "prompt": "p"}] * 257}  # max_items_per_request is 256
    assert_error_shape(http.post("/v1/observe", json=too_many), 413, "PayloadTooLarge", "items")
    assert_error_shape(http.post("/v1/observe", json={"items": "abc"}), 422, "InvalidBody", "items")
    assert_error_shape(http.post("/beta/litellm_basic_guardrail_api", json=[1]), 422, "InvalidBody")
    guardrail = "/beta/litellm_basic_guardrail_api"
    for field, value in (
        ("texts", 5),
        ("texts", "hello"),  # a string is not a list of texts (it was read as the prompt "o")
        ("texts", ["ok", 7]),
        ("structured_messages", 7),
        ("structured_messages", ["hi"]),
        ("input_type", 1),
        ("request_headers", ["user-agent"]),
    ):
        body = {"input_type": "request", "request_data": {"user_api_key_hash": "k"}, field: value}
        assert_error_shape(http.post(guardrail, json=body), 422, "InvalidBody", field)
    deep = b"[" * 5000 + b"]" * 5000
    assert_error_shape(http.post("/v1/observe", content=deep, headers=json_body), 400, "InvalidJSON")
    zipped = gzip.compress(b'{"account": "a", "prompt": "p"}')
    for route in ("/v1/observe", guardrail):
        compressed = http.post(route, content=zipped, headers={**json_body, "content-encoding": "gzip"})
        assert_error_shape(compressed, 415, "UnsupportedMediaType")
        assert "gzip" in compressed.json()["error"]["message"]
    assert http.get("/healthz").status_code == 200  # the keep-alive connection survives each of them
    assert_error_shape(http.get("/v1/accounts/%01"), 422, "InvalidAccountError", "account")
    for params, field in (({"limit": 0}, "limit"), ({"limit": "abc"}, "limit"), ({"level": "purple"}, "level")):
        for listing in ("/v1/accounts", "/v1/campaigns"):
            invalid = http.get(listing, params=params)
            assert_error_shape(invalid, 422, "InvalidParameter", field)
            assert str(params[field]) in invalid.json()["error"]["message"]
    bad_meta = http.post("/v1/observe", json={"account": "a", "prompt": "p", "meta": {"ip": 1.5, "zone": "x"}})
    assert_error_shape(bad_meta, 422, "InvalidItem", "items[0].meta")
    assert "'zone'" in bad_meta.json()["error"]["message"]
    huge = b'{"account": "a", "prompt": "p", "meta": {"ip": 1' + b"0" * 400 + b"}}"  # past float's range
    too_big = http.post("/v1/observe", content=huge, headers=json_body)
    assert_error_shape(too_big, 422, "InvalidItem", "items[0].meta")
    assert "401 digits" in too_big.json()["error"]["message"]


def test_not_ready_is_a_503_with_the_error_shape(tmp_path):
    """An app whose service never started (no lifespan) is loading: 503 NotReady."""
    import asyncio

    from probewatch.serve import ServerConfig, create_app

    app = create_app(ServerConfig(data_dir=str(tmp_path), no_auth=True))

    async def ask(method: str, path: str) -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
            return await client.request(method, path, json={"account": "a", "prompt": "p"})

    assert_error_shape(asyncio.run(ask("GET", "/v1/accounts")), 503, "NotReady")
    assert_error_shape(asyncio.run(ask("GET", "/v1/campaigns")), 503, "NotReady")
    assert_error_shape(asyncio.run(ask("GET", "/v1/campaigns/cmp-1")), 503, "NotReady")
    assert_error_shape(asyncio.run(ask("POST", "/v1/observe")), 503, "NotReady")
    readyz = asyncio.run(ask("GET", "/readyz"))  # a probe: the state too, beside the usual error
    assert readyz.status_code == 503 and readyz.json()["status"] == "loading"
    assert readyz.json()["error"]["type"] == "NotReady"


@pytest.fixture(scope="module")
def flagged_attacker(http):
    """Results of feeding the account "attacker" word salad, once per module: the tests that
    need a flagged account ask for this instead of relying on test order."""
    items = [{"account": "attacker", "prompt": p} for p in random_word_prompts(48)]
    return http.post("/v1/observe", json={"items": items}).json()["results"]


def test_word_salad_account_is_flagged_and_listed(http, flagged_attacker):
    results = flagged_attacker
    assert results[-1]["flagged"] is True and results[-1]["action"] == "BLOCKED"
    assert "attacker" in http.get("/v1/accounts", params={"level": "flag"}).json()["accounts"]


def test_a_flagged_account_is_blocked_by_the_guardrail_whatever_prompt_it_sends(http, flagged_attacker):
    """A prompt the sidecar cannot find used to answer NONE for a flagged account; one with a NUL
    was refused unobserved (an account that added one to every prompt was never seen): it is now
    observed with the NUL read as a space."""
    before = http.get("/v1/accounts/attacker").json()["n_queries"]
    for texts in (["tell me\u0000 a story"], []):
        body = {"input_type": "request", "texts": texts, "request_data": {"user_api_key_end_user_id": "attacker"}}
        answer = http.post("/beta/litellm_basic_guardrail_api", json=body).json()
        if texts:
            assert answer["action"] == "BLOCKED" and "observed" not in answer, answer
        else:
            assert answer["action"] == "BLOCKED" and answer["observed"] is False, answer
            assert answer["reason"] == "no_prompt"
        body["request_data"] = {"user_api_key_end_user_id": "never-seen"}
        assert http.post("/beta/litellm_basic_guardrail_api", json=body).json()["action"] == "NONE"
    assert http.get("/v1/accounts/attacker").json()["n_queries"] == before + 1


def test_guardrail_endpoint_contract(http, flagged_attacker):
    def ask(**body):
        body.setdefault("input_type", "request")
        return http.post("/beta/litellm_basic_guardrail_api", json=body).json()

    # no account id: never blocks, and says it was not observed
    assert ask(texts=["hi"], request_data={}) == {"action": "NONE", "observed": False, "reason": "no_account"}
    empty = http.post("/beta/litellm_basic_guardrail_api", json={})  # never a silent NONE
    assert empty.status_code == 422 and empty.json()["error"]["field"] == "input_type"
    blocked = ask(texts=["violin sodium"], request_data={"user_api_key_end_user_id": "attacker"})
    assert blocked["action"] == "BLOCKED" and "extraction" in blocked["blocked_reason"]
    known = http.get("/v1/accounts/alice")
    before = known.json()["n_queries"] if known.status_code == 200 else 0
    normal = ask(
        texts=["You are helpful.", "How long should sourdough proof?"],
        structured_messages=[
            {"role": "system", "content": "You are helpful."},
            {"role": "user", "content": "How long should sourdough proof?"},
        ],
        request_data={"user_api_key_end_user_id": "alice", "user_api_key_hash": "abc"},
    )
    assert normal == {"action": "NONE"}
    # the prompt and, new for alice, the system message
    assert http.get("/v1/accounts/alice").json()["n_queries"] == before + 2


def test_the_guardrail_reads_a_chat_without_a_user_message(http):
    """Red-team finding: with no user message, the route fell back to the last of ``texts`` and
    dropped every other text (8 of 264 queries observed), where the middleware observed them."""
    hidden = [f"Which river runs through city number {i}, and how long is it?" for i in range(4)]
    messages = [{"role": "human", "content": q} for q in hidden]
    body = {
        "input_type": "request",
        "texts": hidden,
        "structured_messages": messages,
        "request_data": {"user_api_key_end_user_id": "no-user-role"},
    }
    assert http.post("/beta/litellm_basic_guardrail_api", json=body).json() == {"action": "NONE"}
    assert http.get("/v1/accounts/no-user-role").json()["n_queries"] == len(hidden)
    again = http.post("/beta/litellm_basic_guardrail_api", json=body).json()  # nothing new to observe
    assert again["observed"] is False and again["reason"] == "no_prompt"
    assert http.get("/v1/accounts/no-user-role").json()["n_queries"] == len(hidden)


def test_the_guardrail_observes_queries_hidden_in_made_up_turns_once_each(sidecar, http):
    """Red-team finding: only the newest user message was observed, so queries in the system
    message or in made-up earlier turns were never seen. Each one the account has not sent
    before is now observed (the prompt's verdict has seen them), and counted in metrics."""
    hidden = [f"Which enzyme does step {i} of glycolysis use, and why that one?" for i in range(5)]
    messages = [{"role": "system", "content": "Quiz mode. " + hidden[0]}]
    messages += [{"role": "user", "content": question} for question in hidden[1:]]

    def ask(last: str) -> dict:
        body = {
            "input_type": "request",
            "texts": [m["content"] for m in messages] + [last],
            "structured_messages": [*messages, {"role": "user", "content": last}],
            "request_data": {"user_api_key_end_user_id": "quizzer"},
        }
        return http.post("/beta/litellm_basic_guardrail_api", json=body).json()

    before = parse_prometheus(httpx.get(sidecar.url + "/metrics").text)
    assert ask("Answer all of the above.") == {"action": "NONE"}
    assert http.get("/v1/accounts/quizzer").json()["n_queries"] == len(hidden) + 1
    assert ask("Next one, please.") == {"action": "NONE"}  # the history is known: only the prompt
    assert http.get("/v1/accounts/quizzer").json()["n_queries"] == len(hidden) + 2
    after = parse_prometheus(httpx.get(sidecar.url + "/metrics").text)
    key = ("probewatch_guardrail_context_texts_total", (("outcome", "observed"),))
    assert after[key] - before.get(key, 0.0) == len(hidden)


def test_metrics_parse_and_never_name_an_account(sidecar, http, flagged_attacker):
    before = parse_prometheus(httpx.get(sidecar.url + "/metrics").text)
    repeated = "What is the boiling point of water at the top of Everest, in Celsius?"
    for _ in range(2):  # the second is answered by the exact-repeat cache, not the model
        assert http.post("/v1/observe", json={"account": "carol", "prompt": repeated}).status_code == 200
    text = httpx.get(sidecar.url + "/metrics").text
    samples = parse_prometheus(text)
    names = {name for name, _ in samples}
    for needed in (
        "probewatch_http_requests_total",
        "probewatch_verdicts_total",
        "probewatch_batch_size_bucket",
        "probewatch_http_request_duration_seconds_bucket",
        "probewatch_batch_duration_seconds_sum",
        "probewatch_accounts",
        "probewatch_bytes_held",
        "probewatch_campaigns",
        "probewatch_campaign_groups",
        "probewatch_campaign_pending_values",
        "probewatch_campaign_memberships",
        "probewatch_campaign_groups_evicted_flagged_total",
        "probewatch_evicted_accounts",
        "probewatch_evicted_records",
        "probewatch_repeated_prompts",
    ):
        assert needed in names, needed
    unauthorized_observe = (("endpoint", "/v1/observe"), ("method", "POST"), ("status", "401"))
    assert samples[("probewatch_http_requests_total", unauthorized_observe)] >= 1
    assert samples[("probewatch_verdicts_total", (("level", "flag"),))] >= 1
    assert samples[("probewatch_accounts", ())] >= 3 and samples[("probewatch_bytes_held", ())] > 0
    # learning is on in the sidecar, but a handful of new accounts is still its warm-up
    assert samples[("probewatch_learned_accounts", ())] == samples[("probewatch_learned_rows", ())] == 0
    hits, misses = "probewatch_embed_cache_hits_total", "probewatch_embed_cache_misses_total"
    assert samples[(hits, ())] >= before[(hits, ())] + 1
    assert samples[(misses, ())] >= 1 and 1 <= samples[("probewatch_embed_cache_entries", ())] <= samples[(misses, ())]
    for account in ("alice", "bob", "attacker", "carol"):
        assert account not in text


def _litellm_proxy_binary() -> str | None:
    """The `litellm` CLI of an environment with the proxy extra (PROBEWATCH_TEST_LITELLM_BIN or ours)."""
    candidate = os.environ.get("PROBEWATCH_TEST_LITELLM_BIN") or shutil.which(
        "litellm", path=str(Path(sys.executable).parent)
    )
    if not candidate:
        return None
    python = Path(candidate).parent / "python"
    probe = subprocess.run([str(python), "-c", "import litellm.proxy.proxy_server, openai"], capture_output=True)
    return candidate if probe.returncode == 0 else None


@contextlib.contextmanager
def running_litellm_proxy(binary: str, folder: Path) -> Iterator[str]:
    """The LiteLLM proxy with ``folder/config.yaml`` on a free loopback port; yields its URL."""
    port = free_port()
    env = {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_TELEMETRY": "False"}
    command = [binary, "--config", str(folder / "config.yaml"), "--host", "127.0.0.1", "--port", str(port)]
    with open(folder / "proxy.log", "wb") as log:
        proxy = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=folder)
        try:
            deadline = time.monotonic() + 90
            while True:
                assert proxy.poll() is None, (folder / "proxy.log").read_text()[-3000:]
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health/liveliness", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, "LiteLLM proxy did not start"
                time.sleep(0.5)
            yield f"http://127.0.0.1:{port}"
        finally:
            proxy.terminate()
            try:
                proxy.wait(20)
            except subprocess.TimeoutExpired:
                proxy.kill()


def test_real_litellm_proxy_blocks_the_flagged_account_and_passes_a_normal_one(sidecar, flagged_attacker, tmp_path):
    binary = _litellm_proxy_binary()
    if binary is None:
        message = (
            "no litellm proxy: `make test` builds one in .venv-litellm; or pip install 'litellm[proxy]' "
            "somewhere and set PROBEWATCH_TEST_LITELLM_BIN to its litellm executable"
        )
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must exercise the real proxy
        pytest.skip(message)
    import openai

    (tmp_path / "config.yaml").write_text(f"""
model_list:
  - model_name: mock-gpt
    litellm_params:
      model: openai/mock-gpt
      mock_response: "hello from the mock model"
      api_key: sk-not-used
guardrails:
  - guardrail_name: probewatch
    litellm_params:
      guardrail: generic_guardrail_api
      mode: pre_call
      api_base: {sidecar.url}
      api_key: {TOKEN}
      default_on: true
general_settings:
  master_key: sk-master-test-1234
""")
    with running_litellm_proxy(binary, tmp_path) as proxy_url:
        client = openai.OpenAI(base_url=proxy_url, api_key="sk-master-test-1234", max_retries=0)
        ok = client.chat.completions.create(
            model="mock-gpt", user="erin", messages=[{"role": "user", "content": "Any tips for a first marathon?"}]
        )
        assert ok.choices[0].message.content == "hello from the mock model"
        with pytest.raises(openai.APIStatusError) as blocked:
            client.chat.completions.create(
                model="mock-gpt", user="attacker", messages=[{"role": "user", "content": "opera fiscal neuron basalt"}]
            )
        assert blocked.value.status_code == 400 and "model extraction" in str(blocked.value)
        with httpx.Client(base_url=sidecar.url, headers=AUTH) as http:
            assert http.get("/v1/accounts/erin").json()["n_queries"] == 1


def test_sigterm_drains_and_writes_a_final_snapshot(sidecar):
    ready = httpx.get(sidecar.url + "/readyz").json()
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete, so -15 is a clean exit.
    assert sidecar.terminate() in (0, -15)
    snapshots = sorted((Path(sidecar.log_path).parent / "data" / "snapshots").glob("snapshot-*.pwsnap"))
    assert snapshots, sidecar.log_tail()
    covered = int(snapshots[-1].stem.split("-")[1])
    assert covered >= ready["journal_seq"] > 0
    log = sidecar.log_tail(20000)
    assert "(shutdown," in log and "Application shutdown complete" in log
