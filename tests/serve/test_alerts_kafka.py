"""The Kafka-topic alert sink: a real sidecar process producing to a real tansu broker on
127.0.0.1 (tests/stream/conftest.py), read back by a consumer in the test; and the sink's settings.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from unittest import mock

import pytest

from probewatch.errors import ConfigError
from probewatch.serve.config import load_config
from tests.serve.test_alerts import LENIENT, ORDINARY, metrics, observe, transitions_in
from tests.support import SidecarProcess, random_word_prompts

confluent_kafka = pytest.importorskip("confluent_kafka", reason="needs the kafka extra: pip install -e '.[kafka]'")
from tests.stream import conftest as stream_support  # noqa: E402 - after the skip: it needs the kafka extra

pytestmark = pytest.mark.timeout(300)

SINK_LABELS = (("kind", "account"), ("sink", "bus"))


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    started = stream_support.Broker(tmp_path_factory.mktemp("broker") / "tansu.log")
    yield started
    started.stop()


def kafka_sink(bootstrap: str, topic: str, **settings) -> dict:
    sink = {
        "name": "bus",
        "kind": "kafka",
        "bootstrap_servers": bootstrap,
        "topic": topic,
        "timeout_s": 2.0,
        "retry_initial_s": 0.2,
        "retry_max_s": 1.0,
    }
    return {**sink, **settings}


def create_topic(bootstrap: str, topic: str, partitions: int = 3) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=20).values():
        future.result(20)


def read_alerts(bootstrap: str, topic: str, expect: int, timeout: float = 60.0) -> list[tuple[bytes, dict, dict]]:
    """(key, headers, event) of every record on ``topic``, in partition and offset order; reads until
    ``expect`` came, then one quiet second more so that a record too many is seen too."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"reader-{uuid.uuid4().hex[:8]}"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        records, deadline, quiet_until = [], time.monotonic() + timeout, None
        while time.monotonic() < deadline and (quiet_until is None or time.monotonic() < quiet_until):
            for message in consumer.consume(100, 0.2):
                assert message.error() is None, message.error()
                records.append((message.partition(), message.offset(), message))
            if quiet_until is None and len(records) >= expect:
                quiet_until = time.monotonic() + 1.0
        records.sort(key=lambda r: r[:2])
        return [(m.key(), dict(m.headers() or []), json.loads(m.value())) for _, _, m in records]
    finally:
        consumer.close()


class FlaggedSidecar(SidecarProcess):
    """A sidecar process with extra ``probewatch serve`` command-line flags."""

    def __init__(self, data_dir, log_path, flags: list[str], **settings):
        popen = subprocess.Popen
        with mock.patch.object(subprocess, "Popen", lambda command, **kw: popen([*command, *flags], **kw)):
            super().__init__(data_dir, log_path, **settings)


# -- settings -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("sink", "needle"),
    [
        (
            {"topic": "alerts"},
            "alert_sinks[bus]: a kafka sink needs bootstrap_servers and topic; ['bootstrap_servers']",
        ),
        ({"bootstrap_servers": "127.0.0.1:9"}, "['topic'] not set"),
        ({"bootstrap_servers": "h:9", "topic": "a", "secret": "s" * 20}, "['secret'] are settings of kind webhook"),
        ({"bootstrap_servers": "h:9", "topic": "a b"}, "alert_sinks.0.topic"),
        ({"bootstrap_servers": "h:9", "topic": "a", "kafka": {"acks": "1"}}, "sets ['acks'], which the sink sets"),
        (
            {"bootstrap_servers": "h:9", "topic": "a", "kafka": "sasl.password=x"},
            "alert_sinks.0.kafka: Input should be",
        ),
    ],
)
def test_bad_kafka_sink_settings_are_refused_naming_the_setting(sink, needle):
    with pytest.raises(ConfigError) as caught:
        load_config(env={"PROBEWATCH_ALERT_SINKS": json.dumps([{"name": "bus", "kind": "kafka", **sink}])})
    assert needle in str(caught.value)
    assert "sasl.password" not in str(caught.value)  # librdkafka properties may hold credentials: never echoed


def test_a_webhook_sink_refuses_kafka_settings_and_a_kafka_sink_hides_secret_properties():
    with pytest.raises(ConfigError, match=r"\['topic'\] are settings of kind kafka; this sink is a webhook"):
        load_config(
            env={}, alert_sinks=[{"name": "ops", "url": "http://127.0.0.1:9/h", "secret": "s" * 20, "topic": "t"}]
        )
    config = load_config(
        env={},
        alert_sinks=[kafka_sink("127.0.0.1:9", "alerts", kafka={"sasl.password": "hunter2-hunter2", "linger.ms": 5})],
    )
    (sink,) = config.alert_sinks
    assert sink.kafka == {"sasl.password": "hunter2-hunter2", "linger.ms": "5"}  # as librdkafka takes them
    shown = json.dumps(config.public_dict())
    assert "hunter2" not in shown and '"linger.ms": "5"' in shown


def test_a_kafka_sink_without_the_kafka_extra_is_refused_at_load(monkeypatch):
    monkeypatch.setitem(sys.modules, "confluent_kafka", None)  # what an install without the extra has
    with pytest.raises(ConfigError, match=r"alert_sinks\[bus\] is a kafka sink, which needs the kafka extra"):
        load_config(env={}, alert_sinks=[kafka_sink("127.0.0.1:9", "alerts")])


# -- a real sidecar and a real broker -------------------------------------------------------------------
def test_the_topic_gets_exactly_the_transitions_keyed_by_account(broker, tmp_path):
    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    create_topic(broker.bootstrap, topic)
    flag = ["--alert-sink", json.dumps(kafka_sink(broker.bootstrap, topic))]  # the sink from the command line
    server = FlaggedSidecar(tmp_path / "data", tmp_path / "sidecar.log", flag, **LENIENT)
    try:
        server.wait_ready()
        benign = observe(server, "baker", ORDINARY)
        attacker = observe(server, "extractor", random_word_prompts(64, seed=3))
        expected = transitions_in(attacker)
        assert expected[-1][1] == "flag" and transitions_in(benign) == [], (expected, transitions_in(benign))
        records = read_alerts(broker.bootstrap, topic, len(expected))
        assert [(e["from_level"], e["to_level"]) for _, _, e in records] == expected
        assert {key for key, _, _ in records} == {b"extractor"}  # one key: one partition, in order
        assert [headers["event_id"].decode() for _, headers, _ in records] == [e["event_id"] for _, _, e in records]
        assert len({e["event_id"] for _, _, e in records}) == len(expected)
        assert records[-1][2]["risk"] > 0.9 and "*flag*" in records[-1][2]["text"]
        samples = metrics(server)
        assert samples[("probewatch_alerts_delivered_total", SINK_LABELS)] == len(expected)
        assert samples[("probewatch_alert_outbox_depth", SINK_LABELS)] == 0
    finally:
        server.terminate()


def test_broker_down_then_up_gets_the_alerts_after_retries(tmp_path, monkeypatch):
    down = stream_support.Broker(tmp_path / "tansu-1.log")  # a broker of this test's own: it is killed
    topic = f"alerts-{uuid.uuid4().hex[:8]}"
    create_topic(down.bootstrap, topic)
    sinks = json.dumps([kafka_sink(down.bootstrap, topic)])
    server = SidecarProcess(tmp_path / "data", tmp_path / "sidecar.log", alert_sinks=sinks, **LENIENT)
    up = None
    try:
        server.wait_ready()
        down.stop()
        expected = transitions_in(observe(server, "extractor", random_word_prompts(64, seed=5)))
        assert expected[-1][1] == "flag", expected
        deadline = time.monotonic() + 60
        while metrics(server).get(("probewatch_alert_delivery_failures_total", SINK_LABELS), 0) < 2:
            assert time.monotonic() < deadline, server.log_tail()
            time.sleep(0.2)
        assert metrics(server)[("probewatch_alert_outbox_depth", SINK_LABELS)] == len(expected)

        monkeypatch.setattr(stream_support, "free_port", lambda: down.port)  # the same address again
        up = stream_support.Broker(tmp_path / "tansu-2.log")  # memory storage: the topic is made again
        create_topic(up.bootstrap, topic)
        records = read_alerts(up.bootstrap, topic, len(expected), timeout=90)
        assert [(e["from_level"], e["to_level"]) for _, _, e in records] == expected
        assert metrics(server)[("probewatch_alert_outbox_depth", SINK_LABELS)] == 0
        assert "delivering alert evt-" in server.log_tail(200_000)
    finally:
        server.terminate()
        for broker in (down, up):
            if broker is not None and broker.proc.poll() is None:
                broker.stop()
