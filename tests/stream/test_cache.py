"""VerdictCache: a front end's local view of the verdicts topics, against a real worker and broker."""

from __future__ import annotations

import json

import numpy as np
import pytest

from probewatch.stream import Publisher, WorkerConfig
from probewatch.stream.admin import create_topics
from probewatch.stream.cache import VerdictCache
from tests.stream.conftest import WorkerProcess, unique, worker_settings
from tests.support import topical_stream

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]
T0 = 1_767_225_600.0


def test_the_cache_answers_a_request_and_keeps_each_accounts_latest_verdict(broker, calibration, topics_dim, tmp_path):
    from confluent_kafka import Producer

    cal_path, topics = calibration
    tag = unique("cache")
    settings = worker_settings(
        broker, tmp_path / "state", tag, calibration_path=cal_path, campaign_verdicts_topic=f"campaigns-{tag}"
    )
    config = WorkerConfig(**settings)
    create_topics(config, 2)
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})  # held until the topic exists
    admin.create_topics([NewTopic(config.campaign_verdicts_topic, 1, 1)])[config.campaign_verdicts_topic].result(10)
    # three benign accounts of ten queries each (each near one topic), interleaved
    _, rows = topical_stream(np.random.default_rng(5), 3, topics_dim, q_range=(10, 10), topics=topics)
    vectors = rows.reshape(3, 10, topics_dim).transpose(1, 0, 2).reshape(30, topics_dim)
    worker = WorkerProcess(tmp_path / "w.log", settings)
    cache = VerdictCache(broker.bootstrap, config.verdicts_topic, config.campaign_verdicts_topic).start()
    try:
        with Publisher(broker.bootstrap, config.observations_topic, dim=topics_dim) as pub:
            for i in range(30):
                pub.publish(f"acct-{i % 3}", T0 + i, embedding=vectors[i], request_id=f"req-{i}")
        answer = cache.wait_for("req-29", timeout=90)
        assert answer is not None, worker.log_text()[-3000:]
        assert answer["account"] == "acct-2" and answer["verdict"]["n_queries"] == 10
        assert cache.wait_for("no-such-request", timeout=0.5) is None
        for account in ("acct-0", "acct-1"):
            assert cache.wait_for(f"req-{27 + int(account[-1])}", timeout=30) is not None
            assert cache.get(account)["verdict"]["n_queries"] == 10
        assert cache.get("never-seen") is None
        # a campaign verdict at flag raises the account's answer (the worker's own level stays its own)
        assert cache.get("acct-1")["verdict"]["level"] == "ok"
        producer = Producer({"bootstrap.servers": broker.bootstrap})
        body = {"schema_version": 1, "account": "acct-1", "level": "flag", "campaign": {"id": "c-1"}}
        producer.produce(config.campaign_verdicts_topic, key=b"acct-1", value=json.dumps(body).encode())
        producer.flush(10)
        for _ in range(100):
            if cache.get("acct-1")["verdict"]["level"] == "flag":
                break
            cache.wait_for("nothing", timeout=0.1)
        merged = cache.get("acct-1")
        assert merged["verdict"]["level"] == "flag" and merged["campaign"] == {"id": "c-1"}
        assert cache.get("acct-0")["verdict"]["level"] == "ok" and "campaign" not in cache.get("acct-0")
    finally:
        cache.close()
        assert worker.terminate() == 0


def _verdict_record(account: str, level: str, n: int, offset: int | None, request_id: str | None = None) -> bytes:
    """A verdicts-topic record as the worker writes it (``partition``/``offset``: the observation's)."""
    body = {
        "schema_version": 1,
        "account": account,
        "request_id": request_id,
        "verdict": {"account": account, "level": level, "flagged": level == "flag", "n_queries": n},
    }
    if offset is not None:
        body |= {"partition": 0, "offset": offset}
    return json.dumps(body).encode()


def test_the_cache_orders_by_observation_skips_what_is_no_verdict_and_keeps_no_unclaimed_bodies(broker):
    """An account the worker evicted (or that was forgotten) starts again at n_queries 1: its new
    verdicts are later observations and replace the old one (the guardrail answered from the
    stale one); a replayed verdict of an earlier observation does not. Records that are not
    verdicts are counted and skipped without stopping the reader (a restart reads them again).
    A cache that keeps no unclaimed bodies answers only subscribers."""
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"verdicts-{unique('cache-order')}"
    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": broker.bootstrap})

    def send(*values: bytes) -> None:
        for value in values:
            producer.produce(topic, key=b"k", value=value)
        producer.flush(10)

    def settled(cache: VerdictCache, account: str, check) -> dict:
        for _ in range(200):
            body = cache.get(account)
            if body is not None and check(body):
                return body
            cache.wait_for("nothing", timeout=0.05)
        raise AssertionError(f"{account}: {cache.get(account)}")

    cache = VerdictCache(broker.bootstrap, topic).start()
    lean = VerdictCache(broker.bootstrap, topic, keep_unclaimed_s=0).start()
    try:
        send(_verdict_record("evicted", "ok", 100, offset=500))
        settled(cache, "evicted", lambda b: b["verdict"]["n_queries"] == 100)
        # evicted at ok, back and probing: n_queries restarts, the observations are later
        send(_verdict_record("evicted", "flag", 26, offset=1_900))
        assert settled(cache, "evicted", lambda b: b["verdict"]["n_queries"] == 26)["verdict"]["level"] == "flag"
        # a worker's replay after a crash: verdicts of earlier observations come again
        send(_verdict_record("evicted", "ok", 99, offset=499), _verdict_record("evicted", "flag", 27, offset=1_901))
        assert settled(cache, "evicted", lambda b: b["verdict"]["n_queries"] == 27)["verdict"]["level"] == "flag"
        # records without offsets (hand-written, older producers) are ordered by n_queries
        send(_verdict_record("plain", "watch", 40, None), _verdict_record("plain", "ok", 3, None))
        send(_verdict_record("plain", "watch", 41, None))
        assert settled(cache, "plain", lambda b: b["verdict"]["n_queries"] == 41)["verdict"]["level"] == "watch"
        # no verdicts: each is skipped and counted, and the reader goes on
        poison = [b"null", b"[]", b"{not json", b"[" * 5000, json.dumps({"account": "x"}).encode()]
        poison.append(json.dumps({"account": "x", "verdict": {"level": "purple", "n_queries": 1}}).encode())
        poison.append(json.dumps({"account": "x", "verdict": {"level": "ok", "n_queries": "1"}}).encode())
        poison.append(_verdict_record("x", "ok", 1, 1).replace(b'"request_id": null', b'"request_id": 5'))
        before = cache.errors
        send(*poison, _verdict_record("after-poison", "watch", 5, offset=2_000, request_id="req-after"))
        settled(cache, "after-poison", lambda b: True)
        assert cache.alive and lean.alive and cache.errors - before == len(poison)
        assert cache.get("x") is None
        # the default cache keeps an unclaimed body for a later wait_for; the lean one keeps none
        settled(lean, "after-poison", lambda b: True)
        assert cache.wait_for("req-after", timeout=1)["account"] == "after-poison"
        assert lean.wait_for("req-after", timeout=0.2) is None
        got = []
        assert lean.subscribe("req-subscribed", got.append) is None
        send(_verdict_record("subscriber", "ok", 1, offset=2_001, request_id="req-subscribed"))
        settled(lean, "subscriber", lambda b: True)
        assert [b["account"] for b in got] == ["subscriber"]
    finally:
        cache.close()
        lean.close()
