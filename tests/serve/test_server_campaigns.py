"""Campaigns over real HTTP: request metadata on /v1/observe, the campaign routes, their
metrics, the client's campaign calls, and campaign state across restarts.

A campaign here is cheap to make: a dozen accounts that each send five prompts wrapped in
one long chain-of-thought template, with one payment fingerprint in ``meta``; every account
gets its own questions, so no account is unusual on its own.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest

from probewatch.client import AsyncClient, Client, SidecarError
from probewatch.serve.journal import Journal
from tests.support import TOKEN, SidecarProcess, httpx, parse_prometheus

pytestmark = pytest.mark.timeout(300)

QUESTIONS = (
    "How many distinct ways can you arrange the letters of the word BALLOON?",
    "A train leaves Chicago at 3pm traveling 60 mph; when does it reach a city 270 miles away?",
    "Why does ice float on liquid water even though it is a solid?",
    "What is the derivative of x squared times the natural log of x?",
    "If a shirt costs 40 dollars after a 20 percent discount, what was the original price?",
    "Which is larger, the square root of 50 or 7.2, and by how much?",
    "How does a binary search tree keep its elements ordered after an insertion?",
    "What causes the seasons on Earth if not the distance to the Sun?",
    "Prove that the sum of the first n odd numbers equals n squared.",
    "How many prime numbers are there between 50 and 100?",
    "What is the probability of rolling two sixes with two fair dice?",
    "Why did the Roman Republic turn into an empire under Augustus?",
    "How would you compute the median of a stream of numbers efficiently?",
    "What is the time complexity of merge sort and why?",
    "A rectangle has a perimeter of 36 and an area of 80; what are its sides?",
    "Why is the sky blue during the day but red at sunset?",
    "How does compound interest differ from simple interest over ten years?",
    "What is the chemical equation for photosynthesis and what does it mean?",
    "Explain whether 1001 is a prime number.",
    "How do vaccines train the immune system to recognise a virus?",
    "What is the expected number of coin flips to get two heads in a row?",
    "How many edges does a cube have, and how many faces meet at each vertex?",
    "Why does a heavier object not fall faster than a lighter one in vacuum?",
    "What is the greatest common divisor of 462 and 1071?",
    "How can a hash table give constant time lookups on average?",
    "What would happen to global trade if the Suez Canal closed for a year?",
    "How many handshakes happen if 20 people each shake hands once with everyone?",
    "Why do we have leap years and how are they decided?",
    "What is the integral of one over x from 1 to e?",
    "How does a transistor act as a switch in a digital circuit?",
    "If the average of five numbers is 12 and one is removed leaving average 10, what was removed?",
    "Why does salt lower the freezing point of water?",
    "What is the difference between a stack and a queue in practice?",
    "How long does light from the Sun take to reach Earth?",
    "What are the roots of x squared minus 5x plus 6?",
    "Why did the dinosaurs go extinct about 66 million years ago?",
    "How do you detect a cycle in a linked list using constant memory?",
    "What fraction of a pizza remains after three people each eat a quarter?",
    "How does inflation affect the real value of savings?",
    "Why is the number zero considered even?",
    "What is the sum of the interior angles of a hexagon?",
    "How does the electoral college decide a US presidential election?",
    "What is 15 percent of 240 plus 30 percent of 80?",
    "Why does a boomerang return to the thrower?",
    "How many bits are needed to represent the number 1000 in binary?",
    "What is the Pythagorean theorem and how can it be proved with areas?",
    "Why do cats purr, according to current research?",
    "How fast must a satellite travel to stay in low Earth orbit?",
    "What is the last digit of 7 raised to the power 100?",
    "How does garbage collection work in a language like Java?",
    "Why are there more possible chess games than atoms in the universe?",
    "If a car depreciates 15 percent a year, what is it worth after 3 years from 20000?",
    "How does the heart keep blood flowing in one direction?",
    "What is the volume of a sphere with radius 3?",
    "Why do some metals rust while others do not?",
    "How can you tell whether a number is divisible by 9?",
    "What is the most efficient way to sort a list of nearly sorted numbers?",
    "How do tides depend on the positions of the Moon and Sun?",
    "What is the least common multiple of 12, 15 and 20?",
    "Why did the Berlin Wall fall in 1989?",
)
COT = "Think step by step and write out your complete reasoning before the final answer. Question: {q}"
EXPLAIN = "{q} Explain your thought process in detail, step by step, and only then state the final answer clearly."
MEMBERS = 12
ROUNDS = 5
# Loose thresholds (benign groups flagged at 1 %, watched at 10 %: campaign_fpr_share 1): this
# tests the plumbing, not detection. At the shipped group rates a campaign this small and plain
# stays at ok, because the shipped calibration's benign crowds include tutoring apps whose
# users all ask for step-by-step explanations; the hydra benchmark measures detection.
SETTINGS = {
    "engine_target_fpr": 0.01,
    "engine_watch_fpr": 0.1,
    "engine_campaign_fpr_share": 1.0,
    "request_deadline_ms": 60000,
}
SUMMARY_KEYS = {
    "id", "level", "risk", "score", "size", "queries", "indicator_kinds", "reasons", "first_ts", "last_ts",
    "flagged_at_queries",
}  # fmt: skip


def campaign_rounds(name: str, template: str, payment: str, offset: int = 0) -> list[list[dict]]:
    """``ROUNDS`` requests, each with one prompt of every member (own questions per member)."""
    return [
        [
            {
                "account": f"{name}-{m}",
                "prompt": template.format(q=QUESTIONS[(offset + m * ROUNDS + r) % len(QUESTIONS)]),
                "meta": {"payment": payment},
            }
            for m in range(MEMBERS)
        ]
        for r in range(ROUNDS)
    ]


def feed(http: httpx.Client, rounds: list[list[dict]]) -> list[dict]:
    results = []
    for items in rounds:
        r = http.post("/v1/observe", json={"items": items})
        assert r.status_code == 200, r.text
        assert r.json()["errors"] == 0, r.text
        results.extend(r.json()["results"])
    return results


def journal_records(data: Path) -> list[dict]:
    """Every record, as the journal's own reader reads it (each line carries a checksum)."""
    return list(Journal(data / "journal").replay(0))


def campaign_state(http: httpx.Client) -> dict[str, dict]:
    """Every listed campaign's full report, by id."""
    listed = http.get("/v1/campaigns").json()
    assert listed["next_after"] is None
    return {c["id"]: http.get(f"/v1/campaigns/{c['id']}").json() for c in listed["campaigns"]}


def assert_same_campaigns(before: dict[str, dict], after: dict[str, dict]) -> None:
    assert sorted(after) == sorted(before)
    for cid, report in before.items():
        again = after[cid]
        for key in ("level", "size", "queries", "members", "reasons", "flagged_at_queries", "first_ts", "last_ts"):
            assert again[key] == report[key], (cid, key)
        # replay batches items differently from the original micro-batches, which moves the
        # embeddings by float rounding only
        assert math.isclose(again["score"], report["score"], rel_tol=1e-3), cid
        assert [i["kind"] for i in again["indicators"]] == [i["kind"] for i in report["indicators"]]


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory):
    root = tmp_path_factory.mktemp("campaigns")
    server = SidecarProcess(root / "data", root / "server.log", **SETTINGS)
    try:
        server.wait_ready()
        yield server
    finally:
        server.terminate()


@pytest.fixture(scope="module")
def http(sidecar):
    with sidecar.client() as client:
        yield client


@pytest.fixture(scope="module")
def campaigns(http):
    """Two campaigns (different templates and payment values, no shared member) fed once per
    module, round by round; returns the verdicts of every item."""
    a_rounds = campaign_rounds("hydra-a", COT, "card-4242")
    b_rounds = campaign_rounds("hydra-b", EXPLAIN, "card-1111", 7)
    rounds = zip(a_rounds, b_rounds, strict=True)
    return feed(http, [items for pair in rounds for items in pair])


def test_bad_meta_refuses_the_request_naming_item_and_key(sidecar, http):
    good = [
        {"account": "meta-ok", "prompt": "How do I repot a cactus?", "meta": {"ip": "203.0.113.7", "org": "acme"}},
        {"account": "meta-ok", "prompt": "Why are its spines turning brown?"},
        {"account": "meta-ok", "prompt": "Should I fertilise it?", "meta": {"network": None, "key_created": 17}},
    ]
    for bad_meta, words in (
        ({"colour": "red"}, "'colour'"),
        ({"ip": ["203.0.113.7"]}, "meta['ip']"),
        ("203.0.113.7", "meta must be"),
        ({"payment": True}, "meta['payment']"),
        ({"key_created": 1e300}, "meta['key_created']"),
    ):
        items = [*good, {"account": "meta-ok", "prompt": "And how often should I water it?", "meta": bad_meta}]
        r = http.post("/v1/observe", json={"items": items})
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["type"] == "InvalidItem" and error["field"] == "items[3].meta", error
        assert words in error["message"] and "none was observed" in error["message"], error
    assert http.get("/v1/accounts/meta-ok").status_code == 404  # nothing of those requests was observed

    r = http.post("/v1/observe", json={"items": good})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [results[i]["n_queries"] for i in (0, 1, 2)] == [1, 2, 3]
    assert all(result["campaign"] is None for result in results)  # the key is always there
    assert http.get("/v1/accounts/meta-ok").json()["n_queries"] == 3

    # the journal holds what the engine was given, meta included, so a restart replays it
    logged = [rec for rec in journal_records(sidecar.log_path.parent / "data") if rec.get("account") == "meta-ok"]
    assert [rec.get("meta") for rec in logged] == [{"ip": "203.0.113.7", "org": "acme"}, None, {"key_created": "17"}]
    assert "meta" not in logged[1]  # no meta: the line reads as lines always did
    assert logged[0]["prompt"] == "How do I repot a cactus?"


def test_unknown_campaign_is_a_404_in_the_error_shape(http):
    for path in ("/v1/campaigns/nope", "/v1/campaigns/cmp-000000000000", "/v1/campaigns/a%2Fb"):
        r = http.get(path)
        assert r.status_code == 404, r.text
        assert r.json() == {
            "error": {"type": "UnknownCampaignError", "message": r.json()["error"]["message"], "field": "campaign"}
        }
    invalid = http.get("/v1/campaigns", params={"level": "purple"})
    assert invalid.status_code == 422 and invalid.json()["error"]["field"] == "level"
    assert http.get("/v1/campaigns", params={"limit": 0}).status_code == 422


def test_a_campaign_appears_end_to_end(http, campaigns):
    members = {f"hydra-{c}-{m}" for c in "ab" for m in range(MEMBERS)}
    last_round = campaigns[-2 * MEMBERS :]  # the final round of both campaigns
    carried = {v["campaign"]["id"] for v in last_round if v["campaign"] is not None}
    listed = http.get("/v1/campaigns").json()
    ids = [c["id"] for c in listed["campaigns"]]
    assert len(ids) == 2 and ids == sorted(ids) and set(ids) == carried, listed
    assert listed["next_after"] is None and listed["level"] is None
    for summary in listed["campaigns"]:
        assert set(summary) == SUMMARY_KEYS  # members are counted, never listed
        assert summary["level"] in ("watch", "flag") and summary["size"] >= 4
        assert "meta:payment" in summary["indicator_kinds"] and summary["reasons"]
        assert summary["first_ts"] <= summary["last_ts"]
        report = http.get(f"/v1/campaigns/{summary['id']}").json()
        assert set(report) == SUMMARY_KEYS - {"indicator_kinds"} | {"members", "indicators"}
        assert len(report["members"]) == report["size"] == summary["size"] and set(report["members"]) <= members
        prefixes = {account.rsplit("-", 1)[0] for account in report["members"]}
        assert len(prefixes) == 1  # two campaigns that share nothing are never merged
        assert {i["kind"] for i in report["indicators"]} == set(summary["indicator_kinds"])
        for indicator in report["indicators"]:
            assert {"kind", "label", "level", "score", "features"} <= set(indicator)
            assert "card-" not in json.dumps(indicator)  # metadata values never come back
        # a member's verdicts carry the campaign, and its level is at least the campaign's
        verdict = next(v for v in last_round if v["account"] == report["members"][0])
        # the verdict's campaign is as of its item: members later in the same round may join after
        assert verdict["campaign"]["id"] == summary["id"] and 4 <= verdict["campaign"]["size"] <= summary["size"]
        rank = {"ok": 0, "watch": 1, "flag": 2}
        assert rank[verdict["level"]] >= rank[verdict["campaign"]["level"]]
        assert rank[verdict["campaign"]["level"]] <= rank[summary["level"]]  # campaign levels only rise

    by_level = {
        level: http.get("/v1/campaigns", params={"level": level}).json()["campaigns"]
        for level in ("ok", "watch", "flag")
    }
    assert by_level["ok"] == []
    assert sorted(c["id"] for c in by_level["watch"] + by_level["flag"]) == ids

    first = http.get("/v1/campaigns", params={"limit": 1}).json()
    assert [c["id"] for c in first["campaigns"]] == ids[:1] and first["next_after"] == ids[0]
    second = http.get("/v1/campaigns", params={"limit": 1, "after": first["next_after"]}).json()
    assert [c["id"] for c in second["campaigns"]] == ids[1:] and second["next_after"] is None


def test_campaign_metrics(sidecar, http, campaigns):
    text = httpx.get(sidecar.url + "/metrics").text
    samples = parse_prometheus(text)
    listed = http.get("/v1/campaigns").json()["campaigns"]
    for level in ("watch", "flag"):
        assert samples[("probewatch_campaigns", (("level", level),))] == sum(c["level"] == level for c in listed)
    assert samples[("probewatch_campaign_groups", ())] >= 2
    assert samples[("probewatch_campaign_memberships", ())] >= 2 * MEMBERS
    assert samples[("probewatch_campaign_pending_values", ())] >= 0
    assert samples[("probewatch_campaign_groups_evicted_flagged_total", ())] == 0
    for campaign in listed:
        assert campaign["id"] not in text
    assert "hydra-" not in text and "card-" not in text


def test_openapi_documents_the_campaign_routes(http):
    spec = http.get("/openapi.json").json()
    schemas = spec["components"]["schemas"]
    listed = spec["paths"]["/v1/campaigns"]["get"]
    assert {p["name"] for p in listed["parameters"]} == {"level", "limit", "after"}
    assert listed["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CampaignPage"
    }
    one = spec["paths"]["/v1/campaigns/{campaign}"]["get"]
    assert one["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/CampaignReport"
    }
    assert {"members", "indicators"} <= set(schemas["CampaignReport"]["properties"])
    body = spec["paths"]["/v1/observe"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    wrapped, bare_item, item_list = body["anyOf"]  # {"items": [...]}, one item, or a list of items
    assert bare_item == item_list["items"] == wrapped["properties"]["items"]["items"]
    meta = bare_item["properties"]["meta"]["anyOf"][0]
    assert set(meta["properties"]) == {"ip", "network", "user_agent", "org", "payment", "key_created"}
    assert "cut" in meta["properties"]["ip"]["anyOf"][0]["description"]  # cleaned, never refused
    assert "#/$defs/" not in json.dumps(spec)  # every reference resolves inside the document


def test_guardrail_passes_user_agent_and_org_as_meta(sidecar, http):
    body = {
        "input_type": "request",
        "texts": ["How should I store fresh basil?"],
        "request_data": {"user_api_key_hash": "guardrail-meta", "user_api_key_org_id": "org-7"},
        "request_headers": {"User-Agent": "relaykit/1.2", "authorization": "[present]"},
    }
    assert http.post("/beta/litellm_basic_guardrail_api", json=body).json() == {"action": "NONE"}
    logged = [r for r in journal_records(sidecar.log_path.parent / "data") if r.get("account") == "guardrail-meta"]
    assert [r["meta"] for r in logged] == [{"user_agent": "relaykit/1.2", "org": "org-7"}]


def test_client_campaign_calls_and_meta(sidecar, campaigns):
    with Client(sidecar.url, token=TOKEN) as client:
        page = client.campaigns()
        assert len(page["campaigns"]) == 2
        cid = page["campaigns"][0]["id"]
        assert client.campaigns(limit=1)["next_after"] == cid
        assert client.campaigns(limit=1, after=cid)["campaigns"] == page["campaigns"][1:]
        assert client.campaign(cid)["id"] == cid
        with pytest.raises(SidecarError) as unknown:
            client.campaign("nope?level=flag")
        assert (unknown.value.status, unknown.value.error_type, unknown.value.field) == (
            404,
            "UnknownCampaignError",
            "campaign",
        )
        assert "'nope?level=flag'" in unknown.value.message  # the whole id reached the sidecar
        verdict = client.observe("client-meta", "What is a good first houseplant?", meta={"ip": "198.51.100.9"})
        assert verdict["n_queries"] == 1 and verdict["campaign"] is None
        with pytest.raises(SidecarError) as rejected:
            client.observe("client-meta", "And a second one?", meta={"mac": "00:11"})
        assert rejected.value.error_type == "InvalidItem" and "'mac'" in rejected.value.message
        assert rejected.value.status == 422 and rejected.value.field == "items[0].meta"
        # an end user's blank or huge header costs neither its item nor the batch: it is cleaned
        odd = client.observe_many(
            [
                ("client-meta", "Is a snake plant hard to kill?", None, {"user_agent": "   ", "org": "acme"}),
                ("client-meta", "How often to water it?", None, {"user_agent": "x" * 5000}),
            ]
        )
        assert [r["n_queries"] for r in odd] == [2, 3]
        results = client.observe_many(
            [
                ("client-meta", "Which one needs least light?", None, {"org": "acme"}),
                {"account": "client-meta", "prompt": "Any that clean the air?", "meta": {"org": "acme"}},
            ]
        )
        assert [r["n_queries"] for r in results] == [4, 5]

    async def use_async_client() -> None:
        async with AsyncClient(sidecar.url, token=TOKEN) as client:
            page = await client.campaigns(level="flag")
            assert all(c["level"] == "flag" for c in page["campaigns"])
            first = (await client.campaigns())["campaigns"][0]
            assert (await client.campaign(first["id"]))["size"] == first["size"]
            verdict = await client.observe("client-meta", "Do succulents need misting?", meta={"ip": "198.51.100.9"})
            assert verdict["n_queries"] == 6
            assert (await client.accounts(limit=1))["accounts"]
            with pytest.raises(SidecarError) as unknown:
                await client.campaign("nope")
            assert unknown.value.status == 404

    asyncio.run(use_async_client())


def test_client_percent_encodes_ids_in_paths(sidecar):
    awkward = ["pct", "pct?x=1", "pct#frag", "dir/..", "..", ".", "50%", "a b", "ünïcode"]
    with Client(sidecar.url, token=TOKEN) as client:
        results = client.observe_many([(account, f"What does {i} plus {i} make?") for i, account in enumerate(awkward)])
        assert all("error" not in r for r in results), results
        for account in awkward:
            assert client.report(account)["account"] == account
        # once `forget("pct?x=1")` sent DELETE /v1/accounts/pct?x=1 and forgot "pct"
        assert client.forget("pct?x=1") is True
        assert client.report("pct")["n_queries"] == 1
        with pytest.raises(SidecarError) as gone:
            client.report("pct?x=1")
        assert gone.value.status == 404
        assert client.forget("..") is True and client.report(".")["account"] == "."

    async def use_async_client() -> None:
        async with AsyncClient(sidecar.url, token=TOKEN) as client:
            assert await client.forget("pct#frag") is True
            assert (await client.report("pct"))["account"] == "pct"

    asyncio.run(use_async_client())


def test_campaign_state_survives_restarts_from_journal_and_snapshot(tmp_path):
    data = tmp_path / "data"
    # A journal written before request metadata existed: replayed as it always was.
    (data / "journal").mkdir(parents=True)
    legacy = [
        {"op": "observe", "account": "legacy", "prompt": "How do I descale a kettle?", "ts": 1700000000.0, "seq": 1},
        {"op": "observe", "account": "legacy", "prompt": "Is vinegar safe for that?", "ts": 1700000060.0, "seq": 2},
    ]
    (data / "journal" / "journal-000000000000001.jsonl").write_text("".join(json.dumps(r) + "\n" for r in legacy))
    first = SidecarProcess(data, tmp_path / "first.log", **SETTINGS)
    try:
        first.wait_ready()
        with first.client() as http:
            assert http.get("/v1/campaigns").json() == {"campaigns": [], "level": None, "next_after": None}
            assert http.get("/v1/campaigns/nope").status_code == 404
            assert http.get("/v1/accounts/legacy").json()["n_queries"] == 2
            feed(http, campaign_rounds("hydra-a", COT, "card-4242"))
            before = campaign_state(http)
            assert len(before) == 1
        first.kill()  # no shutdown snapshot: the restart replays the journal
    finally:
        if first.proc.poll() is None:
            first.kill()
    assert any(r.get("meta") == {"payment": "card-4242"} for r in journal_records(data))

    second = SidecarProcess(data, tmp_path / "second.log", **SETTINGS)
    try:
        second.wait_ready()
        with second.client() as http:
            assert_same_campaigns(before, campaign_state(http))
            assert http.get("/v1/accounts/legacy").json()["n_queries"] == 2
        assert second.terminate() in (0, -15)  # writes the shutdown snapshot
    finally:
        second.terminate()
    newest = max(data.glob("snapshots/snapshot-*.pwsnap"))
    assert int(newest.stem.split("-")[1]) > 2

    third = SidecarProcess(data, tmp_path / "third.log", **SETTINGS)
    try:
        third.wait_ready()
        assert "replayed 0 journal records" in third.log_tail(20000)
        with third.client() as http:
            assert_same_campaigns(before, campaign_state(http))
    finally:
        third.terminate()


def test_openapi_declares_the_bearer_scheme_and_every_error_status(http):
    spec = http.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    observe = spec["paths"]["/v1/observe"]["post"]
    assert observe["security"] == [{"bearer": []}]
    assert {"200", "400", "401", "413", "422", "429", "503"} <= set(observe["responses"])
    error = {"$ref": "#/components/schemas/ErrorDocument"}
    assert observe["responses"]["429"]["content"]["application/json"]["schema"] == error
    assert "404" in spec["paths"]["/v1/accounts/{account}"]["delete"]["responses"]
    assert "security" not in spec["paths"]["/healthz"]["get"]  # open
    assert "503" in spec["paths"]["/readyz"]["get"]["responses"]
