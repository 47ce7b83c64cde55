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
