"""Alerts on level transitions: a real webhook receiver on 127.0.0.1 and a real sidecar process.

The receiver checks every signature itself (HMAC-SHA256 of ``timestamp.body``, written out
here, not with probewatch's helper). A lenient flag threshold (benign FPR 2 %, watch at 10 %)
makes a word-salad account rise ok -> watch -> flag within ~40 queries; a few ordinary
questions stay at ok.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from probewatch.errors import ConfigError
from probewatch.serve.alerts import AlertOutbox, backoff_delay, signature, verify_signature
from probewatch.serve.config import load_config
from tests.support import SidecarProcess, free_port, httpx, parse_prometheus, random_word_prompts

pytestmark = pytest.mark.timeout(300)

SECRET = "alert-secret-0123456789abcdef"
LENIENT = {"engine_target_fpr": 0.02, "engine_watch_fpr": 0.1, "request_deadline_ms": 60000}
RANK = {"ok": 0, "watch": 1, "flag": 2}
ORDINARY = (
    "How do I bake sourdough bread?",
    "What is a good name for a grey cat?",
    "Can you help me write a birthday note for my sister?",
    "How long should I boil an egg for a runny yolk?",
    "What's the weather usually like in Lisbon in May?",
    "Suggest a short stretching routine for desk workers.",
)


class Receiver:
    """A webhook receiver on 127.0.0.1: records each POST (verifying its signature), answers
    ``status`` (503 to refuse), and can be started late on a port chosen up front."""

    def __init__(self, port: int | None = None, status: int = 200):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/hooks/probewatch"
        self.status = status
        self.deliveries: list[dict] = []  # {"event", "at", "timestamp", "valid"}
        self.attempts = 0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                timestamp = self.headers["X-Probewatch-Timestamp"]
                expected = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
                valid = hmac.compare_digest(self.headers["X-Probewatch-Signature"], f"sha256={expected}")
                fresh = abs(time.time() - int(timestamp)) <= 300
                with receiver._lock:
                    receiver.attempts += 1
                    if receiver.status < 300:
                        event = json.loads(body)
                        assert event["event_id"] == self.headers["X-Probewatch-Event-Id"]
                        receiver.deliveries.append({"event": event, "at": time.monotonic(), "valid": valid and fresh})
                self.send_response(receiver.status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def events(self) -> list[dict]:
        with self._lock:
            return [d["event"] for d in self.deliveries]

    def wait_for(self, count: int, timeout: float = 60.0) -> list[dict]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.events()) >= count:
                return self.events()
            time.sleep(0.1)
        raise TimeoutError(f"the receiver got {len(self.events())} events, expected {count}: {self.events()}")


def sinks(url: str, **settings) -> str:
    sink = {"name": "ops", "url": url, "secret_env": "TEST_ALERT_SECRET", "retry_initial_s": 0.2, "retry_max_s": 1.0}
    return json.dumps([{**sink, **settings}])


def start_sidecar(tmp_path: Path, name: str, url: str, **sink_settings) -> SidecarProcess:
    os.environ["TEST_ALERT_SECRET"] = SECRET  # the sidecar inherits it; secret_env names it
    server = SidecarProcess(
        tmp_path / "data", tmp_path / f"{name}.log", alert_sinks=sinks(url, **sink_settings), **LENIENT
    )
    server.wait_ready()
    return server


def observe(server: SidecarProcess, account: str, prompts) -> list[dict]:
    with server.client() as http:
        items = [{"account": account, "prompt": p} for p in prompts]
        return http.post("/v1/observe", json={"items": items}).json()["results"]


def transitions_in(results: list[dict]) -> list[tuple[str, str]]:
    """(from, to) of every level change the caller saw in its verdicts, starting from ok."""
    levels = ["ok"] + [r["level"] for r in results]
    return [(a, b) for a, b in itertools.pairwise(levels) if a != b]


def metrics(server: SidecarProcess) -> dict:
    return parse_prometheus(httpx.get(server.url + "/metrics").text)


# -- in-process pieces --------------------------------------------------------------------------------
def test_signature_verifies_and_refuses_tampering_and_stale_timestamps():
    body = b'{"event_id":"evt-1"}'
    now = 1_800_000_000
    header = signature(SECRET.encode(), str(now), body)
    expected = hmac.new(SECRET.encode(), f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert header == f"sha256={expected}"
    assert verify_signature(SECRET.encode(), str(now), body, header, now=now + 10)
    assert not verify_signature(SECRET.encode(), str(now), body + b" ", header, now=now)  # body changed
    assert not verify_signature(b"another-secret-0123456789", str(now), body, header, now=now)
    assert not verify_signature(SECRET.encode(), str(now), body, header, now=now + 301)  # replayed too late
    assert not verify_signature(SECRET.encode(), "yesterday", body, header, now=now)
    # whatever a sender puts in the headers is False, never an exception (a receiver's 500)
    arabic_indic = str(now).translate(str.maketrans("0123456789", "٠١٢٣٤٥٦٧٨٩"))  # int() reads it
    assert not verify_signature(SECRET.encode(), arabic_indic, body, header, now=now)
    assert not verify_signature(SECRET.encode(), str(now), body, "sha256=" + "é" * 64, now=now)
    assert not verify_signature(SECRET.encode(), None, body, header, now=now)  # type: ignore[arg-type]


def test_the_receiver_snippet_in_the_docs_verifies_a_real_signature():
    docs = (Path(__file__).resolve().parents[2] / "docs" / "sidecar.md").read_text()
    snippet = next(block for block in docs.split("```python")[1:] if "def verify(" in block).split("```")[0]
    namespace: dict = {}
    exec(snippet, namespace)  # the documented code itself is what is tested
    verify = namespace["verify"]
    body, timestamp = b'{"event_id":"evt-2"}', str(int(time.time()))
    headers = {
        "X-Probewatch-Timestamp": timestamp,
        "X-Probewatch-Signature": signature(SECRET.encode(), timestamp, body),
    }
    assert verify(SECRET.encode(), headers, body)
    assert not verify(SECRET.encode(), headers, body.replace(b"2", b"3"))
    stale = str(int(time.time()) - 3600)
    old = {"X-Probewatch-Timestamp": stale, "X-Probewatch-Signature": signature(SECRET.encode(), stale, body)}
    assert not verify(SECRET.encode(), old, body)


def test_backoff_doubles_up_to_the_cap_with_jitter():
    import random

    rng = random.Random(7)
    for failures, ceiling in ((1, 1.0), (2, 2.0), (3, 4.0), (6, 30.0), (40, 30.0)):
        delays = [backoff_delay(failures, 1.0, 30.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays), (failures, min(delays), max(delays))
        assert len(set(delays)) > 150  # jittered, not one value


@pytest.mark.parametrize(
    ("sink", "needle"),
    [
        ({"url": "ftp://example.org/x", "secret": SECRET}, "alert_sinks[ops].url must be an http:// or https:// URL"),
        ({"url": "http://127.0.0.1:9/h"}, "needs exactly one of secret, secret_env"),
        ({"url": "http://127.0.0.1:9/h", "secret": SECRET, "secret_file": "/x"}, "got ['secret', 'secret_file']"),
        ({"url": "http://127.0.0.1:9/h", "secret_env": "PROBEWATCH_TEST_UNSET_SECRET"}, "which is unset or empty"),
        ({"url": "http://127.0.0.1:9/h", "secret_file": "/nonexistent/secret"}, "cannot be read"),
        ({"url": "http://127.0.0.1:9/h", "secret": "short"}, "at least 16 characters"),
        ({"url": "http://127.0.0.1:9/h", "secret": SECRET, "rate_per_s": 0}, "alert_sinks.0.rate_per_s"),
        ({"url": "http://127.0.0.1:9/h", "secret": SECRET, "timeout_s": -1}, "alert_sinks.0.timeout_s"),
        ({"url": "http://127.0.0.1:9/h", "secret": SECRET, "kind": "pager"}, "alert_sinks.0.kind"),
        ({"url": "http://127.0.0.1:9/h", "secret": SECRET, "sekret": SECRET}, "alert_sinks.0.sekret: not a known key"),
        # URLs every delivery would fail on, forever
        ({"url": "http://127.0.0.1:99999/PRIVATE", "secret": SECRET}, "alert_sinks[ops].url is not a usable URL"),
        ({"url": "http://127.0.0.1:abc/PRIVATE", "secret": SECRET}, "alert_sinks[ops].url is not a usable URL"),
        ({"url": "http://[::1/PRIVATE", "secret": SECRET}, "alert_sinks[ops].url is not a usable URL"),
        ({"url": "http://exa mple.com/PRIVATE", "secret": SECRET}, "holds a space or a control character"),
        # timings that would stop retries (inf backoff) or hold a sink for ever; YAML's true
        ({"url": "http://127.0.0.1:9/h", "secret": SECRET, "retry_initial_s": "inf"}, "alert_sinks.0.retry_initial_s"),
        ({"url": "http://127.0.0.1:9/h", "secret": SECRET, "timeout_s": "inf"}, "alert_sinks.0.timeout_s"),
        ({"url": "http://127.0.0.1:9/h", "secret": SECRET, "rate_per_s": True}, "alert_sinks.0.rate_per_s"),
        ({"url": "http://127.0.0.1:9/h", "secret": " " * 20}, "at least 16 characters"),
    ],
)
def test_bad_sink_settings_are_refused_naming_the_setting_never_the_secret(sink, needle):
    with pytest.raises(ConfigError) as caught:
        load_config(env={"PROBEWATCH_ALERT_SINKS": json.dumps([{"name": "ops", **sink}])})
    assert needle in str(caught.value)
    assert SECRET not in str(caught.value) and "PRIVATE" not in str(caught.value)


@pytest.mark.parametrize(
    "sinks",
    [
        [{"url": "https://hooks.example.org/PRIVATE", "secret": SECRET}],  # no name: the whole sink was echoed
        {"ops": {"url": "https://hooks.example.org/PRIVATE", "secret": SECRET}},  # a mapping, not a list
    ],
)
def test_a_malformed_sink_list_is_described_without_its_values(sinks):
    with pytest.raises(ConfigError) as caught:
        load_config(env={"PROBEWATCH_ALERT_SINKS": json.dumps(sinks)})
    message = str(caught.value)
    assert "alert_sinks" in message and SECRET not in message and "PRIVATE" not in message, message


def test_sink_settings_from_yaml_env_and_overrides_and_logs_hide_the_secret(tmp_path):
    secret_file = tmp_path / "hook.secret"
    secret_file.write_text(SECRET + "\n")
    config_file = tmp_path / "probewatch.yaml"
    config_file.write_text(
        "alert_sinks:\n"
        "  - name: chat\n"
        "    url: https://hooks.example.org/services/T000/B000/credential-in-path\n"
        f"    secret_file: {secret_file}\n"
        "    rate_per_s: 0.5\n"
    )
    config = load_config(config_file, env={})
    (sink,) = config.alert_sinks
    assert (sink.name, sink.rate_per_s, sink.timeout_s, sink.read_secret()) == ("chat", 0.5, 5.0, SECRET.encode())
    shown = json.dumps(config.public_dict(), default=str)
    assert SECRET not in shown and "credential-in-path" not in shown and "hooks.example.org" in shown
    inline = json.dumps([{"name": "ops", "url": "http://127.0.0.1:9/h", "secret": SECRET}])
    from_env = load_config(config_file, env={"PROBEWATCH_ALERT_SINKS": inline})  # the environment wins
    assert [s.name for s in from_env.alert_sinks] == ["ops"] and SECRET not in str(from_env.public_dict())
    assert load_config(env={}, alert_sinks=[]).alert_sinks == []
    with pytest.raises(ConfigError, match="every sink needs a name of its own"):
        load_config(env={"PROBEWATCH_ALERT_SINKS": json.dumps([json.loads(inline)[0]] * 2)})
    with pytest.raises(ConfigError, match="must hold a JSON list"):
        load_config(env={"PROBEWATCH_ALERT_SINKS": "http://127.0.0.1:9/h"})


def _event(seq: int, kind: str = "account") -> dict:
    return {"event_id": f"evt-{seq}", "kind": kind, "id": f"acct-{seq}", "journal_seq": seq, "ts": time.time()}


def test_outbox_keeps_what_is_undelivered_across_reopen_torn_tails_and_damage(tmp_path):
    folder = tmp_path / "alerts"
    outbox = AlertOutbox(folder, ["a", "b"])
    outbox.open()
    instance = outbox.instance
    added = outbox.add([_event(1), _event(2), _event(3, "campaign")])
    assert [e["event_id"] for e in added] == ["evt-1", "evt-2", "evt-3"]
    assert outbox.add([_event(2)]) == []  # not after alerted_through: already there
    outbox.mark_delivered("evt-1", "a")
    outbox.mark_delivered("evt-1", "b")
    outbox.mark_delivered("evt-2", "a")
    outbox.close()
    segment = max(folder.glob("journal-*.jsonl"))
    with open(segment, "ab") as fh:
        fh.write(b'{"op":"delivered","event_id":"evt-2","sink":"b","seq":99')  # torn: a kill mid-write

    again = AlertOutbox(folder, ["a", "b"])
    again.open()
    assert again.instance == instance and again.alerted_through == 3
    assert again.next_for("a")[0] == "evt-3" and again.next_for("b")[0] == "evt-2"
    assert {e["event_id"] for e in again.pending_events()} == {"evt-2", "evt-3"}
    depth = {(sink, kind): count for sink, kind, count, _ in again.backlog()}
    assert depth == {("a", "account"): 0, ("a", "campaign"): 1, ("b", "account"): 1, ("b", "campaign"): 1}
    again.close()
    assert len(list(folder.glob("journal-*.jsonl"))) == 1  # the start rewrote the outbox as one segment

    # a flipped byte in a complete line loses that line's event only; a sink no longer configured is dropped
    (segment,) = folder.glob("journal-*.jsonl")
    lines = segment.read_bytes().split(b"\n")
    flipped = next(i for i, line in enumerate(lines) if b"evt-3" in line)
    lines[flipped] = lines[flipped].replace(b"campaign", b"campaigN")
    segment.write_bytes(b"\n".join(lines))
    third = AlertOutbox(folder, ["b"])
    third.open()
    assert third.damaged_lines == 1
    assert [e["event_id"] for e in third.pending_events()] == ["evt-2"]
    third.close()
    # the damaged segment is kept as evidence (compaction deleted it), and never read again
    assert [p.name for p in folder.glob("*.damaged")] == [segment.name + ".damaged"]
    fourth = AlertOutbox(folder, ["b"])
    fourth.open()
    assert fourth.damaged_lines == 0 and [e["event_id"] for e in fourth.pending_events()] == ["evt-2"]
    fourth.close()


def test_damaged_outbox_lines_are_counted_in_metrics(tmp_path):
    """A damaged line loses its alert: the log named it, and now a counter says so too."""
    from probewatch import Engine
    from probewatch.serve.alerts import AlertPipeline
    from probewatch.serve.config import AlertSinkConfig
    from probewatch.serve.metrics import ServerMetrics

    folder = tmp_path / "outbox"
    outbox = AlertOutbox(folder, ["hook"])
    outbox.open()
    outbox.add([_event(1), _event(2)])
    outbox.close()
    (segment,) = folder.glob("journal-*.jsonl")
    segment.write_bytes(segment.read_bytes().replace(b'"evt-2"', b'"evt-2'))
    metrics = ServerMetrics(lambda: None, lambda: 0)
    sink = AlertSinkConfig(name="hook", url="http://127.0.0.1:9/hook", secret="a-secret-for-the-test")
    pipeline = AlertPipeline([sink], folder, metrics)
    pipeline.open(Engine(device="cpu"))
    pipeline.close()
    samples = parse_prometheus(metrics.render().decode())
    assert samples[("probewatch_alert_outbox_damaged_lines_total", ())] == 1


def test_outbox_compaction_drops_delivered_events_and_survives_reopen(tmp_path, monkeypatch):
    import probewatch.serve.alerts as alerts

    monkeypatch.setattr(alerts, "COMPACT_EVERY", 4)
    outbox = AlertOutbox(tmp_path / "alerts", ["a"])
    outbox.open()
    outbox.add([_event(seq) for seq in range(1, 11)])
    for seq in range(1, 9):
        outbox.mark_delivered(f"evt-{seq}", "a")
    outbox.close()
    text = b"".join(p.read_bytes() for p in (tmp_path / "alerts").glob("journal-*.jsonl"))
    assert b'evt-1"' not in text and b"evt-10" in text  # two compactions dropped the delivered
    reopened = AlertOutbox(tmp_path / "alerts", ["a"])
    reopened.open()
    assert [e["event_id"] for e in reopened.pending_events()] == ["evt-9", "evt-10"]
    assert reopened.alerted_through == 10
    reopened.close()


# -- a real sidecar and a real receiver ---------------------------------------------------------------
def test_receiver_gets_exactly_the_transitions_signed_and_none_for_a_benign_account(tmp_path):
    receiver = Receiver().start()
    server = start_sidecar(tmp_path, "exact", receiver.url)
    try:
        benign = observe(server, "baker", ORDINARY)
        attacker = observe(server, "extractor", random_word_prompts(64, seed=3))
        expected = transitions_in(attacker)
        assert expected[-1][1] == "flag" and transitions_in(benign) == [], (expected, transitions_in(benign))
        events = receiver.wait_for(len(expected))
        time.sleep(1.0)  # nothing more arrives
        events = receiver.events()
        assert [(e["from_level"], e["to_level"]) for e in events] == expected
        assert all(d["valid"] for d in receiver.deliveries), "every delivery carries a valid, fresh signature"
        assert {e["kind"] for e in events} == {"account"} and {e["id"] for e in events} == {"extractor"}
        assert len({e["event_id"] for e in events}) == len(events)
        flag = events[-1]
        assert flag["risk"] > 0.9 and flag["one_in"] >= 1 and flag["reasons"]
        assert "`extractor`" in flag["text"] and "*flag*" in flag["text"] and "1 in" in flag["text"]
        samples = metrics(server)
        assert samples[("probewatch_alerts_created_total", (("kind", "account"),))] == len(expected)
        delivered = (("kind", "account"), ("sink", "ops"))
        assert samples[("probewatch_alerts_delivered_total", delivered)] == len(expected)
        assert samples[("probewatch_alert_outbox_depth", delivered)] == 0
        assert "extractor" not in httpx.get(server.url + "/metrics").text
        assert SECRET not in server.log_tail(200_000)
    finally:
        server.terminate()
        receiver.stop()


def test_campaign_transitions_reach_the_receiver_with_the_campaign_ids(tmp_path):
    from tests.serve.test_server_campaigns import COT, SETTINGS, campaign_rounds, feed

    receiver = Receiver().start()
    os.environ["TEST_ALERT_SECRET"] = SECRET
    server = SidecarProcess(tmp_path / "data", tmp_path / "campaign.log", alert_sinks=sinks(receiver.url), **SETTINGS)
    try:
        server.wait_ready()
        with server.client() as http:
            results = feed(http, campaign_rounds("hydra", COT, "card-4242"))
            reports = {
                c["id"]: http.get(f"/v1/campaigns/{c['id']}").json()
                for c in http.get("/v1/campaigns").json()["campaigns"]
            }
        assert reports, "the campaign traffic should form a campaign"
        # what the callers saw: each account's level changes, each campaign's rises as its verdicts carry it
        expected, accounts, campaigns = [], {}, {}
        for r in results:
            if r["level"] != accounts.get(r["account"], "ok"):
                expected.append(("account", r["account"], accounts.get(r["account"], "ok"), r["level"]))
                accounts[r["account"]] = r["level"]
            c = r["campaign"]
            if c is not None and RANK[c["level"]] > RANK[campaigns.get(c["id"], "ok")]:
                expected.append(("campaign", c["id"], campaigns.get(c["id"], "ok"), c["level"]))
                campaigns[c["id"]] = c["level"]
        events = receiver.wait_for(len(expected))
        time.sleep(1.0)
        got = [(e["kind"], e["id"], e["from_level"], e["to_level"]) for e in receiver.events()]
        assert sorted(got) == sorted(expected)
        assert {cid for kind, cid, _, _ in got if kind == "campaign"} == set(reports)
        for cid, report in reports.items():  # each campaign's chain ends at the level its report has
            assert [to for kind, i, _, to in got if i == cid][-1] == report["level"]
        campaign_event = next(e for e in events if e["kind"] == "campaign")
        assert (
            campaign_event["one_in"] is None
            and campaign_event["reasons"]
            and "campaign `cmp-" in campaign_event["text"]
        )
        assert all(d["valid"] for d in receiver.deliveries)
    finally:
        server.terminate()
        receiver.stop()


def test_receiver_down_then_up_gets_the_alert_after_retries(tmp_path):
    receiver = Receiver(status=503).start()  # up but refusing: every attempt fails
    server = start_sidecar(tmp_path, "retry", receiver.url)
    try:
        results = observe(server, "extractor", random_word_prompts(64, seed=5))
        expected = transitions_in(results)
        deadline = time.monotonic() + 30
        while receiver.attempts < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.attempts >= 3 and receiver.events() == []
        failed = metrics(server)[("probewatch_alert_delivery_failures_total", (("kind", "account"), ("sink", "ops")))]
        assert failed >= 3
        receiver.stop()  # and now not even listening
        time.sleep(1.5)
        receiver.status = 200
        receiver.start()
        events = receiver.wait_for(len(expected), timeout=30)
        assert [(e["from_level"], e["to_level"]) for e in events] == expected
        samples = metrics(server)
        assert samples[("probewatch_alert_outbox_depth", (("kind", "account"), ("sink", "ops")))] == 0
        assert "delivering alert evt-" in server.log_tail(200_000)
    finally:
        server.terminate()
        receiver.stop()


def test_kill_9_with_undelivered_alerts_then_restart_delivers_them(tmp_path):
    port = free_port()
    receiver = Receiver(port=port)  # not listening yet: connections are refused
    server = start_sidecar(tmp_path, "before-kill", receiver.url)
    try:
        results = observe(server, "extractor", random_word_prompts(64, seed=11))
        expected = transitions_in(results)
        samples = metrics(server)
        assert samples[("probewatch_alert_outbox_depth", (("kind", "account"), ("sink", "ops")))] == len(expected)
        assert samples[("probewatch_alert_oldest_undelivered_age_seconds", (("kind", "account"), ("sink", "ops")))] >= 0
    finally:
        server.kill()
    outbox = b"".join(p.read_bytes() for p in (tmp_path / "data" / "alerts").glob("journal-*.jsonl"))
    assert outbox.count(b'"op":"alert"') == len(expected)

    receiver.start()
    restarted = start_sidecar(tmp_path, "after-kill", receiver.url)
    try:
        events = receiver.wait_for(len(expected))
        time.sleep(1.0)
        events = receiver.events()
        assert [(e["from_level"], e["to_level"]) for e in events] == expected  # once each: not recreated by replay
        assert all(d["valid"] for d in receiver.deliveries)
    finally:
        restarted.terminate()
    # a clean stop after delivery: the next start has nothing to send
    again = start_sidecar(tmp_path, "third", receiver.url)
    try:
        time.sleep(2.0)
        assert len(receiver.events()) == len(expected)
    finally:
        again.terminate()
        receiver.stop()


def test_alerts_a_kill_kept_out_of_the_outbox_are_recreated_from_the_journal(tmp_path):
    """A kill between the journal write and the outbox write: the restart's replay finds the
    transitions again and creates them with the same event ids (simulated by cutting the alert
    records out of the outbox after a kill -9)."""
    receiver = Receiver(port=free_port())  # down: nothing is delivered before the kill
    server = start_sidecar(tmp_path, "first", receiver.url)
    try:
        expected = transitions_in(observe(server, "extractor", random_word_prompts(64, seed=13)))
    finally:
        server.kill()
    kept_ids = []
    for segment in (tmp_path / "data" / "alerts").glob("journal-*.jsonl"):
        lines = segment.read_bytes().splitlines(keepends=True)
        kept_ids += [json.loads(line.split(b"\t")[0])["event"]["event_id"] for line in lines if b'"op":"alert"' in line]
        segment.write_bytes(b"".join(line for line in lines if b'"op":"alert"' not in line))
    assert len(kept_ids) == len(expected)

    receiver.start()
    restarted = start_sidecar(tmp_path, "second", receiver.url)
    try:
        events = receiver.wait_for(len(expected))
        assert [(e["from_level"], e["to_level"]) for e in events] == expected
        assert [e["event_id"] for e in events] == kept_ids
    finally:
        restarted.terminate()
        receiver.stop()


def test_rate_limit_holds_and_nothing_over_it_is_dropped(tmp_path):
    receiver = Receiver().start()
    server = start_sidecar(tmp_path, "rate", receiver.url, rate_per_s=2.0, burst=1)
    try:
        expected = 0
        for n in range(4):
            expected += len(transitions_in(observe(server, f"extractor-{n}", random_word_prompts(64, seed=20 + n))))
        assert expected >= 6
        waiting = metrics(server)[("probewatch_alert_outbox_depth", (("kind", "account"), ("sink", "ops")))]
        assert waiting >= 1, "events over the rate wait in the outbox"
        receiver.wait_for(expected, timeout=60)
        times = sorted(d["at"] for d in receiver.deliveries)
        for j, i in itertools.combinations(range(len(times)), 2):  # burst 1: then one send every 0.5 s at most
            assert times[i] - times[j] >= (i - j) * 0.5 - 0.3, (j, i, times[i] - times[j])
        assert times[-1] - times[0] >= (len(times) - 1) * 0.5 - 0.3
        assert len({e["event_id"] for e in receiver.events()}) == expected
    finally:
        server.terminate()
        receiver.stop()


def test_a_bad_sink_refuses_to_start_with_a_clear_message(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PROBEWATCH_")}
    env.update(
        {
            "PROBEWATCH_API_TOKEN": "test-token-0123456789abcdef",
            "PROBEWATCH_ALERT_SINKS": json.dumps(
                [{"name": "ops", "url": "http://127.0.0.1:9/hook", "secret_env": "PROBEWATCH_TEST_MISSING_SECRET"}]
            ),
        }
    )
    run = subprocess.run(
        [sys.executable, "-m", "probewatch.serve", "--data-dir", str(tmp_path / "data"), "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert "alert_sinks[ops].secret_env names 'PROBEWATCH_TEST_MISSING_SECRET', which is unset or empty" in run.stderr
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "data").exists()  # refused before touching any state


def test_alert_sink_flags_replace_the_configured_sinks_and_bad_ones_are_refused(monkeypatch, capsys):
    import probewatch.serve.runner as runner

    started = []
    monkeypatch.setattr(runner, "run", started.append)  # the settings the command line made, no server
    monkeypatch.setenv(
        "PROBEWATCH_ALERT_SINKS", json.dumps([{"name": "old", "url": "http://127.0.0.1:9/h", "secret": SECRET}])
    )
    webhook = {"name": "ops", "url": "http://127.0.0.1:9/hook", "secret": SECRET, "rate_per_s": 0.5}
    kafka = {"name": "bus", "kind": "kafka", "bootstrap_servers": "127.0.0.1:9", "topic": "alerts"}
    flags = ["--no-auth", "--alert-sink", json.dumps(webhook), "--alert-sink", json.dumps(kafka)]
    assert runner.main_serve(flags) == 0
    (config,) = started
    assert [(s.name, s.kind, s.rate_per_s) for s in config.alert_sinks] == [
        ("ops", "webhook", 0.5),
        ("bus", "kafka", 1.0),
    ]
    assert config.alert_sinks[1].topic == "alerts"
    assert runner.main_serve(["--no-auth"]) == 0 and [s.name for s in started[1].alert_sinks] == ["old"]

    for value, needle in (
        ("{name: ops}", "--alert-sink #1 must be one sink as a JSON object; it is not JSON"),
        (json.dumps([webhook]), "(repeat the flag for more); got a JSON list"),
        (json.dumps({**webhook, "secret": "short"}), "the signing secret must be at least 16 characters"),
    ):
        with pytest.raises(SystemExit) as exited:
            runner.main_serve(["--no-auth", "--alert-sink", value])
        assert exited.value.code == 2
        assert needle in capsys.readouterr().err
    assert len(started) == 2


def test_a_webhook_reply_body_is_never_read():
    """Only the status counts. A receiver that answers 200 and then streams a body that never
    ends (a broken or hostile one; 200 MB of it grew the sidecar by 290 MB) is delivered to at
    once; reading the body timed out and retried for ever."""
    import asyncio
    import socket

    from probewatch.serve.alerts import WebhookSink
    from probewatch.serve.config import AlertSinkConfig

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    stop = threading.Event()

    def endless_reply() -> None:
        connection, _ = server.accept()
        with connection:
            connection.recv(65536)
            connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n")
            chunk = b"x" * 65536
            try:
                for _ in range(512):  # 32 MB, then nothing and no end: a reader waits for ever
                    connection.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            except OSError:  # the sidecar closed the connection without reading on
                pass
            stop.wait(30)

    thread = threading.Thread(target=endless_reply, daemon=True)
    thread.start()
    settings = AlertSinkConfig(
        name="ops", url=f"http://127.0.0.1:{server.getsockname()[1]}/hook", secret=SECRET, timeout_s=3
    )

    async def deliver() -> float:
        sink = WebhookSink(settings)
        started = time.monotonic()
        try:
            await sink.send({"event_id": "evt-1"}, b'{"event_id":"evt-1"}')
        finally:
            await sink.aclose()
        return time.monotonic() - started

    try:
        assert asyncio.run(deliver()) < 2.0  # reading the body on would time out (3 s) and retry for ever
    finally:
        stop.set()
        server.close()
        thread.join(5)
