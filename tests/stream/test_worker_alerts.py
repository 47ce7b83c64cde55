"""Alerts from the Kafka worker: real worker processes, a real tansu broker on 127.0.0.1
(tests/stream/conftest.py) with an alerts topic read back by the test, and a webhook receiver
on 127.0.0.1 that checks every signature (tests/serve/test_alerts.py).

What the alerts must say is read from the worker's own verdicts topic: one verdict per
observation in offset order, so an account's level changes there are exactly the transitions
it must be alerted for. The scattering (extraction-like) accounts rise to flag within their 40
queries; topical ones mostly stay at ok (the small test calibration lets one rise now and then,
and then its alerts must match its verdicts like any other account's).
"""

from __future__ import annotations

import itertools
import json
import time
import uuid

import pytest

from tests.serve.test_alerts import SECRET, Receiver
from tests.serve.test_alerts_kafka import read_alerts
from tests.stream.conftest import WorkerProcess, read_topic, unique, wait_for
from tests.stream.test_worker import publish, setup_topics, traffic
from tests.support import parse_prometheus

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

BUS = (("kind", "account"), ("sink", "bus"))
HOOK = (("kind", "account"), ("sink", "ops"))


def create_topic(broker, topic: str, partitions: int = 3) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": broker.bootstrap})
    for future in admin.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=20).values():
        future.result(20)


def alert_sinks(broker, topic: str, receiver: Receiver | None = None) -> str:
    sinks = [
        {
            "name": "bus",
            "kind": "kafka",
            "bootstrap_servers": broker.bootstrap,
            "topic": topic,
            "timeout_s": 2.0,
            "retry_initial_s": 0.2,
            "retry_max_s": 1.0,
            "rate_per_s": 100,
            "burst": 100,
        }
    ]
    if receiver is not None:
        sinks.append(
            {
                "name": "ops",
                "url": receiver.url,
                "secret_env": "TEST_ALERT_SECRET",
                "retry_initial_s": 0.2,
                "retry_max_s": 1.0,
                "rate_per_s": 100,
                "burst": 100,
            }
        )
    return json.dumps(sinks)


def expected_transitions(broker, verdicts_topic: str, n: int) -> dict[str, list[tuple[str, str]]]:
    """{account: [(from, to), ...]} from the level of each of its verdicts, in offset order."""
    messages = wait_for(
        lambda: (v := read_topic(broker, verdicts_topic, expect=n, timeout=3)) and len(v) >= n and v,
        120,
        f"{n} verdicts",
    )
    levels: dict[str, list[str]] = {}
    for _, _, _, value in sorted(messages, key=lambda m: (m[0], m[1])):
        body = json.loads(value)
        levels.setdefault(body["account"], ["ok"]).append(body["verdict"]["level"])
    return {a: [(x, y) for x, y in itertools.pairwise(seq) if x != y] for a, seq in levels.items()}


def by_account(records) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list[tuple[str, str]]] = {}
    for key, _, event in records:
        assert key.decode() == event["id"] and event["kind"] == "account"
        out.setdefault(event["id"], []).append((event["from_level"], event["to_level"]))
    return out


def test_the_alerts_topic_and_the_webhook_get_exactly_each_accounts_transitions(
    broker, calibration, topics_dim, tmp_path, monkeypatch
):
    monkeypatch.setenv("TEST_ALERT_SECRET", SECRET)  # the worker inherits it; secret_env names it
    cal_path, topics = calibration
    tag = unique("alerts")
    alerts_topic = f"alerts-{uuid.uuid4().hex[:8]}"
    create_topic(broker, alerts_topic)
    receiver = Receiver().start()
    settings = setup_topics(broker, tmp_path, tag, calibration_path=cal_path)
    settings.update(alert_sinks=alert_sinks(broker, alerts_topic, receiver), alert_outbox_dir=str(tmp_path / "outbox"))
    accounts, vectors, ts = traffic(topics, seed=21, n_benign=12, n_scatter=3)
    n = publish(broker, settings["observations_topic"], topics_dim, accounts, vectors, ts)
    worker = WorkerProcess(tmp_path / "worker.log", settings)
    try:
        expected = expected_transitions(broker, settings["verdicts_topic"], n)
        rising = {a: t for a, t in expected.items() if t}
        flagged = [a for a, t in rising.items() if "scatter" in a and t[-1][1] == "flag"]
        assert flagged, f"no extracting account reached flag: {expected}"
        quiet = [a for a, t in expected.items() if "scatter" not in a and not t]
        assert len(quiet) >= 6, f"most topical accounts stay at ok: {expected}"
        count = sum(len(t) for t in rising.values())

        records = read_alerts(broker.bootstrap, alerts_topic, count)
        assert len(records) == count, records
        alerted = by_account(records)
        assert alerted == rising  # each account's transitions, in order
        assert not set(alerted) & set(quiet)  # nothing for an account that stayed at ok
        ids = [event["event_id"] for _, _, event in records]
        assert [headers["event_id"].decode() for _, headers, _ in records] == ids
        assert len(set(ids)) == count
        assert all(e["journal_seq"] >= 1 and e["observed_ts"] in ts for _, _, e in records)
        flags = [e for _, _, e in records if e["to_level"] == "flag"]
        assert flags and all(e["risk"] > 0.9 and "*flag*" in e["text"] for e in flags)

        hooked = receiver.wait_for(count)
        assert sorted(e["event_id"] for e in hooked) == sorted(ids)  # the same events, signed, to the webhook
        assert all(d["valid"] for d in receiver.deliveries)

        samples = wait_for(
            lambda: (
                (m := parse_prometheus(worker.get("/metrics").text))
                and m.get(("probewatch_worker_alerts_delivered_total", HOOK)) == count
                and m.get(("probewatch_worker_alerts_delivered_total", BUS)) == count
                and m
            ),
            30,
            "the delivery counters",
            worker,
        )
        assert samples[("probewatch_worker_alerts_created_total", (("kind", "account"),))] == count
        assert samples[("probewatch_worker_alert_outbox_depth", BUS)] == 0
        assert samples[("probewatch_worker_alert_outbox_depth", HOOK)] == 0
        labels = {dict(labels).get("sink") for name, labels in samples if "alert" in name}
        assert labels <= {None, "bus", "ops"}  # sinks and kinds only: no account id as a label
    finally:
        code = worker.terminate()
        receiver.stop()
    assert code == 0, worker.log_text()[-3000:]


def test_a_new_owner_replaying_after_a_kill_sends_the_same_event_ids(broker, calibration, topics_dim, tmp_path):
    """Worker A is killed before any checkpoint; B (another host: its own outbox folder) replays the
    partitions from the start and alerts again, with the ids A used: a receiver that drops repeated
    ids gets each transition once (at least once, never a different event for the same transition)."""
    cal_path, topics = calibration
    tag = unique("replay")
    alerts_topic = f"alerts-{uuid.uuid4().hex[:8]}"
    create_topic(broker, alerts_topic)
    settings = setup_topics(broker, tmp_path, tag, calibration_path=cal_path, checkpoint_interval_s=3600)
    settings.update(alert_sinks=alert_sinks(broker, alerts_topic))
    accounts, vectors, ts = traffic(topics, seed=22, n_benign=8, n_scatter=2)
    n = publish(broker, settings["observations_topic"], topics_dim, accounts, vectors, ts)
    first = WorkerProcess(tmp_path / "a.log", {**settings, "alert_outbox_dir": str(tmp_path / "outbox-a")})
    try:
        expected = {a: t for a, t in expected_transitions(broker, settings["verdicts_topic"], n).items() if t}
        count = sum(len(t) for t in expected.values())
        assert count >= 2, expected
        before = read_alerts(broker.bootstrap, alerts_topic, count)
        assert by_account(before) == expected
    finally:
        first.kill()  # no checkpoint was written (interval 1 h): the next owner starts at offset 0
    second = WorkerProcess(tmp_path / "b.log", {**settings, "alert_outbox_dir": str(tmp_path / "outbox-b")})
    try:
        records = read_alerts(broker.bootstrap, alerts_topic, 2 * count)
    finally:
        code = second.terminate()
    assert code == 0, second.log_text()[-3000:]
    first_ids = [e["event_id"] for _, _, e in before]
    again = [(e["id"], e["to_level"], e["event_id"]) for _, _, e in records if e["event_id"] not in set(first_ids)]
    assert again == [], f"the replay made events with new ids: {again}"
    assert sorted(e["event_id"] for _, _, e in records) == sorted(first_ids * 2)
    deduplicated = {e["event_id"]: e for _, _, e in records}
    assert by_account([(e["id"].encode(), {}, e) for e in deduplicated.values()]) == expected


def test_events_left_undelivered_at_sigterm_are_delivered_by_the_next_start_owning_no_partition(
    broker, calibration, topics_dim, tmp_path, monkeypatch
):
    """The webhook refuses everything while the worker observes; SIGTERM checkpoints every partition
    at its end, so nobody replays those offsets again. The next start of a worker with that outbox
    folder delivers what waits there before it owns any partition (here it never joins the group):
    a partition that moved to another worker does not take its undelivered events with it."""
    from probewatch.stream.config import load_worker_config
    from probewatch.stream.worker import Worker

    monkeypatch.setenv("TEST_ALERT_SECRET", SECRET)
    cal_path, topics = calibration
    tag = unique("outbox")
    alerts_topic = f"alerts-{uuid.uuid4().hex[:8]}"
    create_topic(broker, alerts_topic)
    receiver = Receiver(status=503).start()
    settings = setup_topics(broker, tmp_path, tag, calibration_path=cal_path)
    sinks = json.loads(alert_sinks(broker, alerts_topic, receiver))
    settings.update(alert_sinks=json.dumps(sinks[1:]), alert_outbox_dir=str(tmp_path / "outbox"))  # the webhook only
    accounts, vectors, ts = traffic(topics, seed=23, n_benign=6, n_scatter=2)
    n = publish(broker, settings["observations_topic"], topics_dim, accounts, vectors, ts)
    try:
        first = WorkerProcess(tmp_path / "a.log", settings)
        try:
            expected = {a: t for a, t in expected_transitions(broker, settings["verdicts_topic"], n).items() if t}
            count = sum(len(t) for t in expected.values())
            assert count >= 2, expected
            wait_for(
                lambda: (
                    (m := parse_prometheus(first.get("/metrics").text))
                    and m.get(("probewatch_worker_alert_delivery_failures_total", HOOK), 0) >= 2
                    and m.get(("probewatch_worker_alert_outbox_depth", HOOK)) == count
                ),
                60,
                "refused deliveries and a full outbox",
                first,
            )
        finally:
            assert first.terminate() == 0, first.log_text()[-3000:]
        assert receiver.events() == []

        receiver.status = 200
        env = {f"PROBEWATCH_{k.upper()}": v for k, v in settings.items()}
        worker = Worker(load_worker_config(env={**env, "PROBEWATCH_ENGINE_DEVICE": "cpu"}))
        worker._start_alerts()  # what run() does before it subscribes
        try:
            assert worker.partitions == {}
            delivered = receiver.wait_for(count)
            deadline = time.monotonic() + 10
            while worker.alert_backlog().get(("ops", "account"), (1, 0))[0] and time.monotonic() < deadline:
                time.sleep(0.1)  # the delivery marks are written after the receiver answered
            assert worker.alert_backlog()[("ops", "account")][0] == 0
        finally:
            worker._stop_alerts()
    finally:
        receiver.stop()
    alerted: dict[str, list[tuple[str, str]]] = {}
    for event in delivered:
        alerted.setdefault(event["id"], []).append((event["from_level"], event["to_level"]))
    assert alerted == expected and all(d["valid"] for d in receiver.deliveries)
    assert len(receiver.deliveries) == count
