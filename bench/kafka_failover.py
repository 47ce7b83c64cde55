"""Kafka failover targets (issue 12): takeover time after SIGKILL, and kill/restart cycles that lose nothing.

    .venv/bin/python -m bench.kafka_failover [--takeovers 3] [--cycles 10] [--rate 100]

Both parts run a publisher at ``--rate`` observations a second (precomputed 32-d embeddings, a
small calibration fitted here) against a loopback tansu broker with 4 partitions.

- **Takeover** (``--takeovers`` times): two worker processes share the partitions; one is SIGKILLed;
  measured: seconds until the survivor owns every partition (``/readyz``) and until its lag gauge
  reads 0 (caught up). ``session_timeout_ms`` is 6000, so most of it is the broker noticing.
- **Kill cycles** (``--cycles``): one worker is started, SIGKILLed a random 2-5 s after it got its
  partitions, and started again; a last worker drains the topic and stops with SIGTERM. Then every
  account's query count in the checkpoints must equal what was produced (nothing lost, nothing
  counted twice) and every offset must have a verdict. Exit status 1 if not.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.kafka_sizing import WorkerProc, start_broker

DIM = 32
T0 = 1_767_225_600.0
PARTITIONS = 4


class Stream:
    """Publishes random accounts' observations at a fixed rate until stopped; counts per account."""

    def __init__(self, bootstrap: str, topic: str, rate: float, n_accounts: int, seed: int):
        self.produced: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(bootstrap, topic, rate, n_accounts, seed), daemon=True)
        self._thread.start()

    def _run(self, bootstrap: str, topic: str, rate: float, n_accounts: int, seed: int) -> None:
        from probewatch.stream import Publisher
        from tests.support import unit_rows

        rng = np.random.default_rng(seed)
        with Publisher(bootstrap, topic, dim=DIM) as pub:
            begin, sent = time.time(), 0
            while not self._stop.is_set():
                while sent < int((time.time() - begin) * rate):
                    account = f"acct-{rng.integers(n_accounts)}"
                    pub.publish(account, T0 + sent, embedding=unit_rows(rng.standard_normal((1, DIM)))[0])
                    self.produced[account] = self.produced.get(account, 0) + 1
                    sent += 1
                time.sleep(0.005)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(30)
        return sum(self.produced.values())


def lag(worker: WorkerProc) -> float | None:
    """The worker's summed lag over its partitions (None while it has none or does not answer)."""
    import httpx

    try:
        text = worker.get("/metrics").text
    except httpx.TransportError:
        return None
    values = [float(x.split()[-1]) for x in text.splitlines() if x.startswith("probewatch_worker_consumer_lag{")]
    return sum(values) if values else None


def wait(check, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


def takeover(bootstrap: str, tmp: Path, base: dict[str, str], k: int, rate: float) -> dict:
    """Two workers under a stream; SIGKILL one; how long until the other owns everything, caught up."""
    from probewatch.stream import WorkerConfig
    from probewatch.stream.admin import create_topics

    settings = {**base, **_topics(f"takeover{k}"), "state_url": f"file://{tmp / f'takeover{k}'}"}
    create_topics(WorkerConfig(**settings), PARTITIONS)
    stream = Stream(bootstrap, settings["observations_topic"], rate, 300, seed=k)
    a = WorkerProc(tmp / f"takeover{k}-a.log", settings, threads=1)
    b = WorkerProc(tmp / f"takeover{k}-b.log", settings, threads=1)
    try:
        both = wait(lambda: a.partitions() and b.partitions(), 120)
        wait(lambda: (la := lag(a)) is not None and (lb := lag(b)) is not None and la + lb == 0, 60)
        split = (a.partitions(), b.partitions())
        a.stop(signal.SIGKILL)
        killed = time.monotonic()
        owned = wait(lambda: len(b.partitions()) == PARTITIONS, 60)
        reassigned = time.monotonic() - killed
        caught_up = wait(lambda: lag(b) == 0, 60)
        return {
            "split_before": split,
            "both_assigned": bool(both),
            "reassigned_s": round(reassigned, 1) if owned else None,
            "caught_up_s": round(time.monotonic() - killed, 1) if caught_up else None,
        }
    finally:
        stream.stop()
        b.stop()
        a.stop(signal.SIGKILL)


def kill_cycles(bootstrap: str, tmp: Path, base: dict[str, str], cycles: int, rate: float, n_accounts: int) -> dict:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    from probewatch.stream import WorkerConfig
    from probewatch.stream.admin import create_topics
    from probewatch.stream.checkpoints import CheckpointStore

    settings = {**base, **_topics("kill"), "state_url": f"file://{tmp / 'kill'}"}
    config = WorkerConfig(**settings)
    create_topics(config, PARTITIONS)
    stream = Stream(bootstrap, config.observations_topic, rate, n_accounts, seed=100)
    ready_s = []
    try:
        for cycle in range(cycles):
            worker = WorkerProc(tmp / f"kill-w{cycle}.log", settings, threads=1)
            began = time.monotonic()
            wait(lambda w=worker: len(w.partitions()) == PARTITIONS, 120)
            ready_s.append(round(time.monotonic() - began, 1))
            time.sleep(random.uniform(2, 5))
            worker.stop(signal.SIGKILL)
    finally:
        total = stream.stop()
    final = WorkerProc(tmp / "kill-final.log", settings, threads=1)
    caught_up = wait(lambda: len(final.partitions()) == PARTITIONS and lag(final) == 0, 300)
    code = final.stop()
    store = CheckpointStore(config.state_url)
    held: dict[str, int] = {}
    for p in range(PARTITIONS):
        loaded = store.load_newest(config.group_id, config.observations_topic, p)
        if loaded is not None:
            held.update({a: s.n for a, s in loaded.engine.pipeline.states.items()})
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": "count", "enable.auto.commit": False})
    reader.assign([TopicPartition(config.verdicts_topic, p, OFFSET_BEGINNING) for p in range(PARTITIONS)])
    seen: dict[tuple[int, int], int] = {}
    quiet = time.monotonic()
    while time.monotonic() - quiet < 3:
        for m in reader.consume(1000, 0.5):
            if not m.error():
                body = json.loads(m.value())
                where = (body["partition"], body["offset"])
                seen[where] = seen.get(where, 0) + 1
                quiet = time.monotonic()
    reader.close()
    produced = stream.produced
    lost = sum(n - held.get(a, 0) for a, n in produced.items() if held.get(a, 0) < n)
    doubled = sum(held[a] - n for a, n in produced.items() if held.get(a, 0) > n)
    return {
        "cycles": cycles,
        "observations": total,
        "accounts": len(produced),
        "final_caught_up": caught_up,
        "final_exit_code": code,
        "lost_observations": lost,
        "double_counted_observations": doubled,
        "offsets_with_a_verdict": len(seen),
        "verdicts_produced_again_after_a_kill": sum(c - 1 for c in seen.values()),
        "restart_to_ready_s": ready_s,
    }


def _topics(tag: str) -> dict[str, str]:
    return {
        "group_id": f"g-{tag}",
        "observations_topic": f"obs-{tag}",
        "verdicts_topic": f"verdicts-{tag}",
        "dead_letter_topic": f"dead-{tag}",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--takeovers", type=int, default=3)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--rate", type=float, default=100.0)
    parser.add_argument("--accounts", type=int, default=300)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (broker log, worker state)")
    args = parser.parse_args()

    from tests.support import topical_calibration_engine

    tmp = Path(tempfile.mkdtemp(prefix="probewatch-kafka-failover-"))
    broker, bootstrap = start_broker(tmp / "tansu.log")
    topics = np.random.default_rng(1).standard_normal((12, DIM))
    topical_calibration_engine(topics, seed=2, n_accounts=80).save_calibration(tmp / "cal.npz")
    base = {
        "bootstrap_servers": bootstrap,
        "session_timeout_ms": "6000",
        "checkpoint_interval_s": "1",
        "checkpoint_every_messages": "100",
        "poll_timeout_ms": "50",
        "calibration_path": str(tmp / "cal.npz"),
    }
    out: dict[str, object] = {"rate_per_s": args.rate, "load_average_at_start": round(os.getloadavg()[0], 1)}
    try:
        if args.takeovers:
            out["takeovers"] = [takeover(bootstrap, tmp, base, k, args.rate) for k in range(args.takeovers)]
        if args.cycles:
            out["kill_cycles"] = kill_cycles(bootstrap, tmp, base, args.cycles, args.rate, args.accounts)
    finally:
        broker.kill()
        broker.wait(10)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)  # hundreds of MB of broker segments and checkpoints
    out["load_average_at_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(out, indent=2))
    cycles = out.get("kill_cycles")
    ok = not cycles or (
        cycles["lost_observations"] == 0
        and cycles["double_counted_observations"] == 0
        and cycles["offsets_with_a_verdict"] == cycles["observations"]
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
