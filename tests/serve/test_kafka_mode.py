"""``probewatch serve --kafka`` against a real broker (tansu on 127.0.0.1), a real worker process and a
real sidecar process: observe through the sidecar, the worker's verdict comes back in its answer;
past the wait the answer is the account's cached verdict marked pending; the guardrail route answers
from the cached level; no broker, or missing topics, keeps the sidecar unready with the reason.
"""

from __future__ import annotations

import json
import signal
import time

import httpx
import pytest

import probewatch as pw
from probewatch.stream import Publisher, WorkerConfig
from probewatch.stream.admin import create_topics
from tests.stream.conftest import (
    Broker,
    WorkerProcess,
    read_topic,
    unique,
    wait_for,
    worker_settings,
)
from tests.support import SidecarProcess, free_port, parse_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
GUARDRAIL = "/beta/litellm_basic_guardrail_api"
STOPPED = (0, -signal.SIGTERM)  # uvicorn exits by re-raising the SIGTERM it handled (a kill is -9)
T0 = 1_767_225_600.0
PROMPTS = [
    "Summarise the causes of the French revolution in three sentences.",
    "What were the main economic problems of France in the 1780s?",
    "Explain the role of the Estates-General in 1789.",
    "Who was Maximilien Robespierre?",
]


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    """A tansu broker on loopback for this module (tests/stream/conftest.py's)."""
    b = Broker(tmp_path_factory.mktemp("broker") / "tansu.log")
    yield b
    b.stop()


def sidecar_settings(settings: dict[str, str], **extra) -> dict[str, str]:
    """The sidecar's Kafka-mode settings for the worker's topics."""
    return {
        "kafka_mode": "true",
        "bootstrap_servers": settings["bootstrap_servers"],
        "observations_topic": settings["observations_topic"],
        "verdicts_topic": settings["verdicts_topic"],
        **extra,
    }


def verdict_of(result: dict) -> dict:
    """The ``Verdict.to_dict()`` part of an observe result (without index, action, truncated, pending)."""
    return {k: v for k, v in result.items() if k not in ("index", "action", "truncated", "pending")}


def guardrail_body(account: str, prompt: str) -> dict:
    return {"input_type": "request", "texts": [prompt], "request_data": {"user_api_key_hash": account}}


def test_observe_goes_through_the_worker_and_the_guardrail_answers_from_the_cache(
    broker,
    tmp_path,
    embedder,
):
    tag = unique("kafka-mode")
    settings = worker_settings(broker, tmp_path / "state", tag)
    config = WorkerConfig(**settings)
    create_topics(config, 2)
    worker = WorkerProcess(tmp_path / "worker.log", settings)
    sidecar = SidecarProcess(
        tmp_path / "data",
        tmp_path / "sidecar.log",
        # records past 30 KB refused by the producer (librdkafka's default is 1 MB)
        **sidecar_settings(
            settings, kafka_verdict_wait_ms=15000, request_deadline_ms=20000, kafka='{"message.max.bytes": "30000"}'
        ),
    )
    try:
        # the worker loads the embedding model on its first prompt: warm it up outside the sidecar
        with Publisher(broker.bootstrap, config.observations_topic) as pub:
            pub.publish("warm-up", T0, prompt="warm-up", request_id="warm-up")
        wait_for(lambda: read_topic(broker, config.verdicts_topic, timeout=2), 180, "the warm-up verdict", worker)
        sidecar.wait_ready(60)
        ready = httpx.get(sidecar.url + "/readyz", timeout=5).json()
        assert ready["mode"] == "kafka" and ready["verdict_partitions"] == 2

        with sidecar.client() as http:
            answers = []
            for i, prompt in enumerate(PROMPTS):
                response = http.post("/v1/observe", json={"account": "alice", "prompt": prompt, "ts": T0 + i})
                assert response.status_code == 200, response.text
                answers.append(response.json()["results"][0])
            # each answer is the worker's verdict of that very request, in order
            assert [a["pending"] for a in answers] == [False] * len(PROMPTS)
            assert [a["n_queries"] for a in answers] == list(range(1, len(PROMPTS) + 1))
            reference = pw.Engine(WorkerConfig().engine.replace(device="cpu"), embedder=embedder)
            want = reference.observe_batch(["alice"] * len(PROMPTS), PROMPTS, [T0 + i for i in range(len(PROMPTS))])
            for got, expected in zip(answers, want, strict=True):
                assert got["account"] == "alice" and got["level"] == expected.level
                assert got["score"] == pytest.approx(expected.score, abs=1e-3)
                assert got["action"] == "NONE" and "fallback" not in got

            # the guardrail answers at once (kafka_guardrail_wait_ms 0) from the cached level
            assert http.post(GUARDRAIL, json=guardrail_body("alice", "And Danton?")).json() == {"action": "NONE"}
            assert http.post(GUARDRAIL, json=guardrail_body("newcomer", "Hello")).json() == {"action": "NONE"}
            # an account whose latest verdict is at flag is blocked, with the usual answer shape
            from confluent_kafka import Producer

            # without an observation's partition and offset the cache orders it by n_queries (4):
            # the worker's own verdicts of mallory's guardrail prompts (n_queries 1; "one more"
            # sent again is a repeat) cannot replace it while the test waits for it, however
            # slowly the sidecar reads the topic on a loaded machine
            flagged = {
                "schema_version": 1,
                "account": "mallory",
                "request_id": None,
                "ts": T0,
                "verdict": {**verdict_of(answers[-1]), "account": "mallory", "level": "flag", "flagged": True},
            }
            producer = Producer({"bootstrap.servers": broker.bootstrap})
            producer.produce(config.verdicts_topic, key=b"mallory", value=json.dumps(flagged).encode())
            assert producer.flush(10) == 0
            blocked = wait_for(
                lambda: (
                    (a := http.post(GUARDRAIL, json=guardrail_body("mallory", "one more"))).json()["action"]
                    == "BLOCKED"
                    and a.json()
                ),
                30,
                "the flag verdict in the sidecar's cache",
                worker,
            )
            assert set(blocked) == {"action", "blocked_reason"} and "level flag" in blocked["blocked_reason"]
            # a prompt it cannot observe (none, blank) is judged by the account's cached level; a NUL
            # is read as a space (refusing it let an account pass unobserved)
            for texts in ([], ["   "], ["one\x00more"]):
                body = {**guardrail_body("mallory", ""), "texts": texts}
                unread = http.post(GUARDRAIL, json=body)
                assert unread.status_code == 200, unread.text
                assert unread.json()["action"] == "BLOCKED", texts
                assert unread.json().get("observed", True) is (texts == ["one\x00more"]), unread.json()
                stranger = http.post(GUARDRAIL, json={**body, "request_data": {"user_api_key_hash": "stranger"}})
                assert stranger.status_code == 200 and stranger.json()["action"] == "NONE", stranger.text

            # a record past message.max.bytes (6,000 CJK characters: 36 KB of JSON escapes) is that
            # item's error; the batch's other item is published and answered
            mixed = http.post(
                "/v1/observe",
                json={
                    "items": [{"account": "alice", "prompt": "And Marat?"}, {"account": "bob", "prompt": "中" * 6000}]
                },
            )
            assert mixed.status_code == 200, mixed.text
            fine, big = mixed.json()["results"]
            assert fine["account"] == "alice" and fine["n_queries"] == len(PROMPTS) + 2  # and "And Danton?"
            assert big["error"]["type"] == "InputError" and "message.max.bytes" in big["error"]["message"], big

            # the worker stops: the sidecar still publishes, and answers with the cached verdict, pending
            assert worker.terminate() == 0, worker.log_text()[-3000:]
            started = time.monotonic()
            late = http.post("/v1/observe", json={"account": "alice", "prompt": "And Napoleon?", "ts": T0 + 99})
            waited = time.monotonic() - started
            result = late.json()["results"][0]
            assert late.status_code == 200 and result["pending"] is True and "fallback" not in result
            assert result["n_queries"] >= len(PROMPTS) and result["level"] == answers[-1]["level"]
            assert 15 <= waited < 20, f"answered after {waited:.1f}s; kafka_verdict_wait_ms is 15 s"
            unseen = http.post("/v1/observe", json={"account": "nobody-yet", "prompt": "Hi", "ts": T0}).json()
            assert unseen["results"][0]["pending"] is True and unseen["results"][0]["level"] == "unknown"

            # what has no local state here says so
            listing = http.get("/v1/accounts")
            assert listing.status_code == 501 and listing.json()["error"]["type"] == "NotInKafkaMode"
            metrics = parse_prometheus(http.get("/metrics").text)
        published = [json.loads(v) for _, _, _, v in read_topic(broker, config.observations_topic)]
        alice = [*PROMPTS, "And Danton?", "And Marat?", "And Napoleon?"]
        assert [b["prompt"] for b in published if b["account"] == "alice"] == alice
        assert not [b for b in published if b["account"] == "bob"]
        assert all(b["request_id"] for b in published)
        assert metrics[("probewatch_sidecar_mode", (("mode", "kafka"),))] == 1
        assert metrics[("probewatch_kafka_answers_total", (("source", "this_request"),))] == len(PROMPTS) + 1  # Marat
        assert metrics[("probewatch_kafka_answers_total", (("source", "none"),))] >= 2  # newcomer, nobody-yet
        assert metrics[("probewatch_kafka_connected", ())] == 1
        assert metrics[("probewatch_kafka_cached_accounts", ())] >= 3
    finally:
        assert sidecar.terminate() in STOPPED, sidecar.log_tail()
        if worker.proc.poll() is None:
            worker.kill()


def test_no_broker_or_missing_topics_keep_the_sidecar_unready_with_the_reason(broker, tmp_path):
    nobody = f"127.0.0.1:{free_port()}"  # nothing listens there
    down = SidecarProcess(
        tmp_path / "d1",
        tmp_path / "down.log",
        kafka_mode="true",
        bootstrap_servers=nobody,
        kafka_connect_timeout_s=1,
    )
    tag = unique("missing")
    missing = SidecarProcess(
        tmp_path / "d2",
        tmp_path / "missing.log",
        kafka_mode="true",
        bootstrap_servers=broker.bootstrap,
        observations_topic=f"obs-{tag}",
        verdicts_topic=f"verdicts-{tag}",
    )
    try:

        def reason(sidecar: SidecarProcess) -> dict | None:
            try:
                response = httpx.get(sidecar.url + "/readyz", timeout=5)
            except httpx.TransportError:
                return None
            assert response.status_code == 503, response.text
            body = response.json()
            return body if body["status"] == "failed" else None

        body = wait_for(lambda: reason(down), 60, "the broker-down reason")
        assert body["mode"] == "kafka" and body["error"]["type"] == "NotReady"
        assert f"cannot reach the Kafka brokers at {nobody} (bootstrap_servers)" in body["error"]["message"]
        assert "retrying" in body["error"]["message"]
        with down.client() as http:
            refused = http.post("/v1/observe", json={"account": "a", "prompt": "hi"})
            assert refused.status_code == 503 and nobody in refused.json()["error"]["message"]
            metrics = parse_prometheus(http.get("/metrics").text)
        assert metrics[("probewatch_ready", ())] == 0 and metrics[("probewatch_kafka_connected", ())] == 0
        assert metrics[("probewatch_sidecar_mode", (("mode", "kafka"),))] == 1

        body = wait_for(lambda: reason(missing), 60, "the missing-topics reason")
        assert f"obs-{tag}" in body["error"]["message"] and "do not exist" in body["error"]["message"]
        # the topics appear (a worker's --create-topics): the sidecar becomes ready by itself
        create_topics(WorkerConfig(bootstrap_servers=broker.bootstrap, **_topics(tag)), 1)
        missing.wait_ready(30)
        # the observations topic is deleted under a ready sidecar: it is no longer ready (it
        # would publish what no worker reads), and says which topic went
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # held until the topic is gone
        admin.delete_topics([f"obs-{tag}"], operation_timeout=10)[f"obs-{tag}"].result(15)

        def unready() -> dict | None:
            response = httpx.get(missing.url + "/readyz", timeout=5)
            return response.json() if response.status_code == 503 else None

        body = wait_for(unready, 30, "the deleted-topic reason")
        assert body["status"] == "failed" and body["error"]["type"] == "NotReady"
        assert f"obs-{tag}" in body["error"]["message"] and "no longer exist" in body["error"]["message"]
    finally:
        assert down.terminate() in STOPPED, down.log_tail()
        assert missing.terminate() in STOPPED, missing.log_tail()


def _topics(tag: str) -> dict[str, str]:
    return {"observations_topic": f"obs-{tag}", "verdicts_topic": f"verdicts-{tag}", "dead_letter_topic": f"dead-{tag}"}


def test_kafka_mode_settings_are_checked():
    from probewatch.errors import ConfigError
    from probewatch.serve.config import load_config

    config = load_config(env={"PROBEWATCH_KAFKA_MODE": "true", "PROBEWATCH_KAFKA": '{"sasl.password": "hunter2"}'})
    assert config.kafka_mode and config.public_dict()["kafka"] == {"sasl.password": "<set>"}
    with pytest.raises(ConfigError, match="kafka_verdict_wait_ms must be < request_deadline_ms"):
        load_config(env={"PROBEWATCH_KAFKA_VERDICT_WAIT_MS": "3000", "PROBEWATCH_REQUEST_DEADLINE_MS": "2000"})
    with pytest.raises(ConfigError, match="observations_topic"):
        load_config(env={"PROBEWATCH_OBSERVATIONS_TOPIC": "no spaces allowed"})
    for same in (
        {"PROBEWATCH_VERDICTS_TOPIC": "probewatch.observations"},
        {"PROBEWATCH_CAMPAIGN_VERDICTS_TOPIC": "probewatch.verdicts"},
    ):
        with pytest.raises(ConfigError, match="must differ"):
            load_config(env={"PROBEWATCH_KAFKA_MODE": "true", **same})
