"""The Kafka worker against a real broker (tansu on 127.0.0.1) and real worker processes.

Observations carry their own 32-d embeddings (the embedding model is not the point here; one
test at the end goes through prompts with the bundled model). Each test has its own topics,
group and state folder, and every wait is bounded.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

import probewatch as pw
from probewatch.detect.features import AccountState
from probewatch.io.persistence import read_calibration
from probewatch.stream import Publisher, WorkerConfig
from probewatch.stream.admin import create_topics
from probewatch.stream.checkpoints import CheckpointStore
from tests.stream.conftest import (
    WorkerProcess,
    read_topic,
    unique,
    verdicts_by_offset,
    wait_for,
    worker_settings,
)
from tests.support import parse_prometheus, topical_stream, unit_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
PARTITIONS = 4
T0 = 1_767_225_600.0


def traffic(topics: np.ndarray, seed: int, n_benign: int = 24, n_scatter: int = 3, prefix: str = "a"):
    """(accounts, vectors, ts): topical accounts plus a few that scatter at random (extraction-like), interleaved."""
    rng = np.random.default_rng(seed)
    accounts, vectors = topical_stream(rng, n_benign, topics.shape[1], q_range=(8, 30), topics=topics, prefix=prefix)
    accounts = list(accounts)
    rows = [vectors]
    for s in range(n_scatter):
        accounts += [f"{prefix}-scatter-{s}"] * 40
        rows.append(unit_rows(rng.standard_normal((40, topics.shape[1]))))
    vectors = np.concatenate(rows)
    order = _interleave(accounts, rng)
    return [accounts[i] for i in order], vectors[order], [T0 + 3.0 * k for k in range(len(order))]


def _interleave(accounts: list[str], rng: np.random.Generator) -> list[int]:
    """A random merge of the accounts' queues: each account's own order kept."""
    queues: dict[str, list[int]] = {}
    for i, a in enumerate(accounts):
        queues.setdefault(a, []).append(i)
    slots = [a for a, q in queues.items() for _ in q]
    rng.shuffle(slots)
    return [queues[a].pop(0) for a in slots]


def publish(broker, topic: str, dim: int, accounts, vectors, ts, start: int = 0, stop: int | None = None) -> int:
    with Publisher(broker.bootstrap, topic, dim=dim) as pub:
        for i in range(start, len(accounts) if stop is None else stop):
            pub.publish(accounts[i], ts[i], embedding=vectors[i], request_id=f"r{i}")
    return (len(accounts) if stop is None else stop) - start


def setup_topics(broker, tmp_path: Path, tag: str, **extra) -> dict[str, str]:
    settings = worker_settings(broker, tmp_path / "state", tag, **extra)
    config = WorkerConfig(**settings)
    create_topics(config, PARTITIONS)
    return settings


def replay_per_partition(broker, topic: str, calibration_path: Path) -> dict[int, pw.Engine]:
    """The reference: each partition's messages, in offset order, through its own in-process Engine."""
    benign = read_calibration(calibration_path)
    by_partition: dict[int, list] = {}
    for p, _offset, _, value in sorted(read_topic(broker, topic)):
        by_partition.setdefault(p, []).append(json.loads(value))
    engines = {}
    for p, bodies in by_partition.items():
        engine = engines[p] = pw.Engine(WorkerConfig().engine.replace(device="cpu"), benign=benign)
        for i in range(0, len(bodies), 16):  # other batch boundaries than the worker's polls
            chunk = bodies[i : i + 16]
            engine.observe_embeddings(
                [b["account"] for b in chunk],
                np.asarray([b["embedding"] for b in chunk], dtype=np.float32),
                [b["ts"] for b in chunk],
            )
    return engines


def account_states(engines) -> dict[str, AccountState]:
    return {a: s for e in engines for a, s in e.pipeline.states.items()}


def assert_same_state(got: dict[str, AccountState], want: dict[str, AccountState]) -> None:
    assert sorted(got) == sorted(want)
    for account, w in want.items():
        g = got[account]
        assert g.n == w.n, f"{account}: {g.n} queries in the worker's state, {w.n} produced"
        assert g.level == w.level and g.last_ts == w.last_ts
        assert g.peak_risk == pytest.approx(w.peak_risk, abs=1e-5)
        for name in AccountState.ARRAYS:
            np.testing.assert_allclose(getattr(g, name), getattr(w, name), atol=1e-4, err_msg=f"{account}.{name}")


def checkpointed_engines(state_dir: Path, settings: dict[str, str]) -> dict[int, tuple[int, pw.Engine]]:
    store = CheckpointStore(f"file://{state_dir}")
    out = {}
    for p in range(PARTITIONS):
        loaded = store.load_newest(settings["group_id"], settings["observations_topic"], p)
        if loaded is not None:
            out[p] = (loaded.offset, loaded.engine)
    return out


def committed(broker, settings) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": settings["group_id"]})
    try:
        tps = consumer.committed(
            [TopicPartition(settings["observations_topic"], p) for p in range(PARTITIONS)], timeout=10
        )
        return {tp.partition: tp.offset for tp in tps}
    finally:
        consumer.close()


def end_offsets(messages) -> dict[int, int]:
    ends: dict[int, int] = {}
    for p, offset, _, _ in messages:
        ends[p] = max(ends.get(p, 0), offset + 1)
    return ends


def test_one_worker_equals_in_process_replay_and_sigterm_checkpoints_and_commits(
    broker, calibration, topics_dim, tmp_path
):
    cal_path, topics = calibration
    tag = unique("one")
    settings = setup_topics(broker, tmp_path, tag, calibration_path=cal_path, checkpoint_interval_s=3600)
    accounts, vectors, ts = traffic(topics, seed=1)
    n = publish(broker, settings["observations_topic"], topics_dim, accounts, vectors, ts)
    worker = WorkerProcess(tmp_path / "worker.log", settings)
    try:
        verdicts = wait_for(
            lambda: (v := read_topic(broker, settings["verdicts_topic"], expect=n, timeout=3)) and len(v) >= n and v,
            120,
            f"{n} verdicts",
            worker,
        )
        metrics = wait_for(  # the poll's metrics are counted right after its verdicts are produced
            lambda: (
                (m := parse_prometheus(worker.get("/metrics").text))
                and m.get(("probewatch_worker_batch_size_sum", ())) == n
                and m
            ),
            10,
            "the metrics of the last poll",
            worker,
        )
        assert worker.get("/healthz").status_code == 200
    finally:
        code = worker.terminate()
    assert code == 0, worker.log_text()[-3000:]
    assert "SIGTERM" in worker.log_text()

    # exactly one verdict per observation, keyed by its account
    by_offset = verdicts_by_offset(verdicts)
    assert len(by_offset) == n and all(len(v) == 1 for v in by_offset.values())
    assert all(key.decode() == json.loads(value)["account"] for _, _, key, value in verdicts)

    reference = replay_per_partition(broker, settings["observations_topic"], cal_path)
    last: dict[str, dict] = {}
    for (_, _), (body,) in sorted(by_offset.items()):
        v = body["verdict"]
        if v["n_queries"] > last.get(body["account"], {"n_queries": 0})["n_queries"]:
            last[body["account"]] = v
    for account, state in account_states(reference.values()).items():
        report = next(e for e in reference.values() if account in e.pipeline.states).report(account)
        assert last[account]["n_queries"] == state.n == accounts.count(account)
        assert last[account]["level"] == report.level
        assert last[account]["peak_risk"] == pytest.approx(report.peak_risk, abs=1e-5)
    assert any(v["level"] != "ok" for a, v in last.items() if "scatter" in a), "the scattering accounts stand out"

    # SIGTERM: every partition checkpointed at its end offset, and that offset committed
    ends = end_offsets(read_topic(broker, settings["observations_topic"]))
    saved = checkpointed_engines(tmp_path / "state", settings)
    assert {p: off for p, (off, _) in saved.items()} == ends
    assert committed(broker, settings) == ends
    assert_same_state(account_states(e for _, e in saved.values()), account_states(reference.values()))

    # metrics: per-partition gauges, batch sizes, no account ids anywhere in the labels
    partitions = {
        dict(labels).get("partition") for (name, labels) in metrics if name == "probewatch_worker_consumer_lag"
    }
    assert partitions == {str(p) for p in range(PARTITIONS)}
    assert metrics[("probewatch_worker_batch_size_sum", ())] == n
    assert metrics[("probewatch_worker_messages_total", (("outcome", "observed"),))] == n
    assert metrics[("probewatch_worker_rebalances_total", (("event", "assign"),))] >= 1
    assert all(value != a for (_, labels) in metrics for _, value in labels for a in set(accounts))


def test_two_workers_split_partitions_and_a_sigkilled_one_is_taken_over(broker, calibration, topics_dim, tmp_path):
    cal_path, topics = calibration
    tag = unique("two")
    settings = setup_topics(
        broker, tmp_path, tag, calibration_path=cal_path, checkpoint_every_messages=20, max_batch_size=16
    )
    accounts, vectors, ts = traffic(topics, seed=2, n_benign=30)
    half = len(accounts) // 2
    publish(broker, settings["observations_topic"], topics_dim, accounts, vectors, ts, stop=half)
    a = WorkerProcess(tmp_path / "a.log", settings)
    b = WorkerProcess(tmp_path / "b.log", settings)
    try:
        # two members of one group: the four partitions are split between them, none twice
        split = wait_for(
            lambda: (pa := a.partitions()) and (pb := b.partitions()) and len(pa) + len(pb) == PARTITIONS and (pa, pb),
            90,
            "both workers own partitions",
            a,
            b,
        )
        assert not set(split[0]) & set(split[1])
        wait_for(
            lambda: len(read_topic(broker, settings["verdicts_topic"], timeout=2)) >= half // 2, 60, "verdicts", a, b
        )
        a.kill()  # mid-stream: whatever it observed since its last checkpoint is replayed by b
        publish(broker, settings["observations_topic"], topics_dim, accounts, vectors, ts, start=half)
        started = time.monotonic()
        wait_for(lambda: len(b.partitions()) == PARTITIONS, 60, "b takes over every partition", b)
        takeover_s = time.monotonic() - started
        n = len(accounts)
        wait_for(
            lambda: len(verdicts_by_offset(read_topic(broker, settings["verdicts_topic"], timeout=2))) >= n,
            120,
            "a verdict for every observation",
            b,
        )
    finally:
        code = b.terminate()
        if a.proc.poll() is None:
            a.kill()
    assert code == 0, b.log_text()[-3000:]
    assert takeover_s < 30

    # nothing lost: every offset has a verdict; nothing counted twice: a replayed offset's verdicts agree
    by_offset = verdicts_by_offset(read_topic(broker, settings["verdicts_topic"]))
    assert len(by_offset) == len(accounts)
    for bodies in by_offset.values():
        assert len({b["verdict"]["n_queries"] for b in bodies}) == 1
    # the final state (the checkpoints b wrote on SIGTERM) equals an uninterrupted replay
    reference = replay_per_partition(broker, settings["observations_topic"], cal_path)
    saved = checkpointed_engines(tmp_path / "state", settings)
    states = account_states(e for _, e in saved.values())
    assert {a: s.n for a, s in states.items()} == {a: accounts.count(a) for a in set(accounts)}
    assert_same_state(states, account_states(reference.values()))
    assert "revoke" in b.log_text() or "assigned partitions" in b.log_text()


def test_restart_from_checkpoints_falls_back_past_a_corrupt_one(broker, calibration, topics_dim, tmp_path):
    cal_path, topics = calibration
    tag = unique("restart")
    # small polls, so each partition is checkpointed several times on the way (a poll is checkpointed whole)
    settings = setup_topics(
        broker, tmp_path, tag, calibration_path=cal_path, checkpoint_every_messages=15, max_batch_size=8
    )
    accounts, vectors, ts = traffic(topics, seed=3, n_benign=16)
    first = len(accounts) * 2 // 3
    publish(broker, settings["observations_topic"], topics_dim, accounts, vectors, ts, stop=first)
    w = WorkerProcess(tmp_path / "w1.log", settings)
    try:
        wait_for(lambda: len(read_topic(broker, settings["verdicts_topic"], timeout=2)) >= first, 90, "verdicts", w)
    finally:
        assert w.terminate() == 0, w.log_text()[-3000:]
    # damage the newest checkpoint of partition 0: the restart must say so and use the one before
    folder = Path(
        CheckpointStore(f"file://{tmp_path / 'state'}").path(settings["group_id"], settings["observations_topic"], 0, 0)
    ).parent
    files = sorted(folder.glob("*.npz"))
    assert len(files) >= 2, "several checkpoints were kept"
    files[-1].write_bytes(files[-1].read_bytes()[:200])

    publish(broker, settings["observations_topic"], topics_dim, accounts, vectors, ts, start=first)
    w2 = WorkerProcess(tmp_path / "w2.log", settings)
    try:
        wait_for(
            lambda: len(verdicts_by_offset(read_topic(broker, settings["verdicts_topic"], timeout=2))) >= len(accounts),
            90,
            "verdicts for the rest",
            w2,
        )
        wait_for(lambda: w2.partitions(), 30, "ready", w2)
        metrics = parse_prometheus(w2.get("/metrics").text)
    finally:
        assert w2.terminate() == 0, w2.log_text()[-3000:]
    assert (
        re.search(r"checkpoint .*0000\.npz is unreadable, falling back", w2.log_text()) or "unreadable" in w2.log_text()
    )
    assert metrics[("probewatch_worker_checkpoint_fallbacks_total", ())] >= 1
    reference = replay_per_partition(broker, settings["observations_topic"], cal_path)
    saved = checkpointed_engines(tmp_path / "state", settings)
    assert_same_state(account_states(e for _, e in saved.values()), account_states(reference.values()))


def test_poison_messages_go_to_the_dead_letter_topic_and_the_partition_moves_on(
    broker, calibration, topics_dim, tmp_path
):
    cal_path, _ = calibration
    tag = unique("poison")
    settings = setup_topics(broker, tmp_path, tag, calibration_path=cal_path, max_message_bytes=4096)
    good = unit_rows(np.random.default_rng(4).standard_normal((1, topics_dim)))[0].tolist()
    body = {"schema_version": 1, "account": "victim", "ts": T0, "embedding": good}
    bad = {
        "not_json": b"{not json",
        "missing_field": json.dumps({k: v for k, v in body.items() if k != "ts"}).encode(),
        "wrong_dim": json.dumps({**body, "embedding": good[:5]}).encode(),
        "oversized": json.dumps({**body, "prompt": None, "request_id": "x" * 5000}).encode(),
        "bad_version": json.dumps({**body, "schema_version": 99}).encode(),
        "bad_field": json.dumps({**body, "meta": {"colour": "red"}}).encode(),
        "wrong_key": json.dumps(body).encode(),
    }
    with Publisher(broker.bootstrap, settings["observations_topic"], dim=topics_dim) as pub:
        for i, (kind, value) in enumerate(bad.items()):
            pub.publish("victim", T0 + i, embedding=good)  # a good one before each bad one, same partition
            pub.produce_raw(b"someone-else" if kind == "wrong_key" else b"victim", value)
        pub.publish("victim", T0 + 100, embedding=good)
    w = WorkerProcess(tmp_path / "w.log", settings)
    try:
        dead = wait_for(
            lambda: (d := read_topic(broker, settings["dead_letter_topic"], timeout=2)) and len(d) >= len(bad) and d,
            90,
            "dead letters",
            w,
        )
        verdicts = wait_for(
            lambda: (v := read_topic(broker, settings["verdicts_topic"], timeout=2)) and len(v) >= len(bad) + 1 and v,
            60,
            "verdicts after the poison",
            w,
        )
        metrics = parse_prometheus(w.get("/metrics").text)
    finally:
        assert w.terminate() == 0, w.log_text()[-3000:]
    letters = {json.loads(v)["kind"]: json.loads(v) for _, _, _, v in dead}
    assert set(letters) == set(bad)
    partition = letters["not_json"]["partition"]
    for kind, letter in letters.items():
        assert letter["topic"] == settings["observations_topic"] and isinstance(letter["offset"], int), kind
        assert letter["reason"], kind
    assert all(letter["partition"] == partition for kind, letter in letters.items() if kind != "wrong_key")
    assert "expects 32" in letters["wrong_dim"]["reason"] and "5 numbers" in letters["wrong_dim"]["reason"]
    assert "at most 4,096" in letters["oversized"]["reason"]
    assert "'ts'" in letters["missing_field"]["reason"]
    assert letters["not_json"]["value"] == "{not json"
    # the poison offsets are the ones between the good ones, and the good ones were all observed in order
    victim = sorted(json.loads(v)["verdict"]["n_queries"] for _, _, _, v in verdicts)
    assert victim == list(range(1, len(bad) + 2))
    assert sum(v for (name, _), v in metrics.items() if name == "probewatch_worker_dead_letters_total") == len(bad)


def test_prompts_go_through_the_bundled_model(broker, tmp_path, embedder):
    """A handful of prompt messages, embedded by the worker with the real model and the shipped
    calibration; alice's sit in one long tool list, which the worker reads as observe_batch
    does (without the boilerplate her last long prompt had)."""
    tag = unique("prompts")
    settings = setup_topics(broker, tmp_path, tag)
    tools = "You are an agent with these tools:\n" + "".join(
        f"- tool_{i}(query): looks up record {i} in the catalogue and returns it as JSON.\n" for i in range(20)
    )
    prompts = [
        "Summarise the causes of the French revolution in three sentences.",
        tools + "What is the capital of Australia?",
        "Translate 'good morning' into Japanese.",
        tools + "Write a haiku about autumn rain.",
        "Explain how a hash map handles collisions.",
        tools + "List three uses of baking soda.",
    ]
    rows = [("alice" if i % 2 else "bob", p, T0 + i) for i, p in enumerate(prompts)]
    with Publisher(broker.bootstrap, settings["observations_topic"]) as pub:
        for account, prompt, stamp in rows:
            pub.publish(account, stamp, prompt=prompt, meta={"user_agent": "tests/1"})
    w = WorkerProcess(tmp_path / "w.log", settings)
    try:
        verdicts = wait_for(
            lambda: (v := read_topic(broker, settings["verdicts_topic"], timeout=2)) and len(v) >= len(rows) and v,
            180,
            "verdicts for the prompts",
            w,
        )
    finally:
        assert w.terminate() == 0, w.log_text()[-3000:]
    got = {(json.loads(v)["account"], json.loads(v)["verdict"]["n_queries"]): json.loads(v) for _, _, _, v in verdicts}
    engine = pw.Engine(WorkerConfig().engine.replace(device="cpu"), embedder=embedder)
    for account in ("alice", "bob"):
        mine = [r for r in rows if r[0] == account]
        want = engine.observe_batch([account] * len(mine), [p for _, p, _ in mine], [t for _, _, t in mine])
        for v in want:
            body = got[(account, v.n_queries)]
            assert body["request_id"] is None and body["ts"] == mine[v.n_queries - 1][2]
            assert body["verdict"]["score"] == pytest.approx(v.score, abs=1e-3)
            assert body["verdict"]["level"] == v.level
