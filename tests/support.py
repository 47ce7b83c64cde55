"""Helpers the tests import (not collected): skip markers, synthetic traffic, a real sidecar.

- ``requires_gpu`` / ``requires_faiss_gpu`` / ``requires_cuda_engine``: skip markers with the reason spelled out.
- ``unit_rows``, ``topical_stream``: synthetic benign traffic (accounts that stay near a topic).
- ``SidecarProcess``: a real `python -m probewatch.serve` on 127.0.0.1.
"""

from __future__ import annotations

import functools
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO

import httpx
import numpy as np
import pytest

import probewatch.kernels
from probewatch.backend import import_faiss
from probewatch.errors import BackendUnavailableError


def _faiss_gpu_available() -> bool:
    try:
        faiss = import_faiss()
    except BackendUnavailableError:
        return False
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


CUPY_OK = probewatch.kernels.cupy_available()
FAISS_GPU_OK = _faiss_gpu_available()

requires_gpu = pytest.mark.skipif(
    not CUPY_OK, reason="needs CuPy with a visible CUDA device (pip install 'probewatch[gpu]' on a CUDA 12 machine)"
)
requires_faiss_gpu = pytest.mark.skipif(
    not (CUPY_OK and FAISS_GPU_OK),
    reason="needs CuPy and faiss built with GPU support seeing a CUDA device (faiss-gpu, not faiss-cpu)",
)


def _torch_cuda() -> bool:
    import torch  # heavy; only when the GPU markers are evaluated

    return bool(torch.cuda.is_available())


# The engine runs on CUDA with faiss-cpu too (long histories then stay in host indexes).
requires_cuda_engine = pytest.mark.skipif(
    not (CUPY_OK and _torch_cuda()),
    reason="needs a CUDA build of torch and CuPy, both seeing a CUDA device",
)


@functools.cache
def blas_sums_rows_alike(*, embedding_dim: int | None = None) -> bool:
    """Whether this machine's BLAS gives a row of a float32 matrix product the same bits
    whatever the number of rows multiplied with it (detection's look-alike search, shapes as
    there, one thread as there). OpenBLAS's AVX-512 kernels do; its AVX2 kernels on an AMD
    EPYC sum in an order that depends on the row count, so a lone query's distances there
    differ from the same row's in a batch in the last bit or two (2e-7 relative).

    With ``embedding_dim``, the query vectors' products with the 2,048-row benign reference
    bank too, in both orders the reference search uses: a test that compares whole verdicts of
    lone calls and a batch runs those as well (on that EPYC, 384-wide rows differ where 20-wide
    ones happen not to)."""
    from threadpoolctl import threadpool_limits

    from probewatch.detect.features import N_FEATURES

    rng = np.random.default_rng(0)
    tables = rng.standard_normal((2, N_FEATURES, 4096)).astype(np.float32)
    points = rng.standard_normal((2, 16, N_FEATURES)).astype(np.float32)
    with threadpool_limits(1):
        whole = np.matmul(points, tables)
        alike = all(np.array_equal(np.matmul(points[:, i : i + 1], tables), whole[:, i : i + 1]) for i in range(16))
        if alike and embedding_dim is not None:
            bank = rng.standard_normal((2048, embedding_dim)).astype(np.float32)
            rows = rng.standard_normal((16, embedding_dim)).astype(np.float32)
            products = (rows @ bank.T, (bank @ rows.T).T)
            alike = all(np.array_equal(rows[i : i + 1] @ bank.T, p[i : i + 1]) for p in products for i in range(16))
        return alike


def unit_rows(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def topical_stream(
    rng: np.random.Generator,
    n_accounts: int,
    dim: int,
    q_range=(12, 40),
    n_topics: int = 24,
    prefix: str = "benign",
    topics: np.ndarray | None = None,
    interleave: bool = False,
):
    """Benign-looking synthetic traffic: each account wanders around one topic centre.

    Returns (accounts, vectors) with each account's queries in time order; when
    ``interleave`` the accounts' queries are shuffled together (order inside an account kept).
    """
    if topics is None:
        topics = rng.standard_normal((n_topics, dim))
    accounts: list[str] = []
    rows: list[np.ndarray] = []
    for a in range(n_accounts):
        centre = topics[rng.integers(len(topics))] + 0.35 * rng.standard_normal(dim)
        spread = rng.uniform(0.7, 1.1)
        n_q = int(rng.integers(q_range[0], q_range[1] + 1))
        rows.append(centre + spread * rng.standard_normal((n_q, dim)))
        accounts.extend([f"{prefix}-{a}"] * n_q)
    vectors = unit_rows(np.concatenate(rows))
    if interleave:
        order = rng.permutation(len(accounts))
        # stable per account: reassign each account's rows in arrival order
        acc_arr = np.asarray(accounts)
        new_rows = np.empty_like(vectors)
        new_acc = acc_arr[order]
        for name in np.unique(acc_arr):
            src = np.flatnonzero(acc_arr == name)
            dst = np.flatnonzero(new_acc == name)
            new_rows[dst] = vectors[src]
        return list(new_acc), new_rows
    return accounts, vectors


def topical_calibration_engine(topics: np.ndarray, seed: int, n_accounts: int = 100, q_range=(10, 40)):
    """An engine calibrated from scratch on :func:`topical_stream` accounts around ``topics``
    (module fixtures save its calibration for the engines under test)."""
    import probewatch as pw

    rng = np.random.default_rng(seed)
    accounts, vectors = topical_stream(rng, n_accounts, topics.shape[1], q_range=q_range, topics=topics)
    return pw.Engine.from_benign_embeddings(accounts, vectors, device="cpu")


def saved_campaign_calibration(directory, dim: int):
    """The campaign tests' calibration (160 topical accounts of 6-40 queries around 24 topics
    of ``dim`` dimensions) saved under ``directory``: (its path, the topics)."""
    topics = np.random.default_rng(11).standard_normal((24, dim))
    engine = topical_calibration_engine(topics, 12, n_accounts=160, q_range=(6, 40))
    path = Path(directory) / "calibration.npz"
    engine.save_calibration(path)
    return path, topics


TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@functools.lru_cache(maxsize=1)
def common_words() -> tuple[str, ...]:
    """English words of frequency rank ~200-2,200 (wordfreq, from the bench extra that
    `make test` installs): random queries drawn from them look like the random-word
    extraction of Krishna et al. 2020, not like one narrow topic."""
    import wordfreq

    ranked = [w for w in wordfreq.top_n_list("en", 5000) if w.isalpha() and len(w) > 2]
    return tuple(ranked[200:2200])


# Ports for servers the tests start are drawn below the kernel's ephemeral range. A port the
# OS hands out for bind(0) comes from that range, and between our check and the server's own
# bind any outbound connection (a Kafka client's, an HTTP client's) may take it as its local
# port: a sidecar in tests/serve/test_kafka_mode.py once failed to start with EADDRINUSE so.
_LISTEN_PORTS_FROM = 10_000
_FALLBACK_EPHEMERAL_START = 32_768  # Linux's default, where /proc does not say


def listen_ports() -> range | None:
    """The ports free_port draws from: those below the ephemeral range, from _LISTEN_PORTS_FROM
    (None where that leaves fewer than 1,000)."""
    try:
        stop = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        stop = _FALLBACK_EPHEMERAL_START
    return range(_LISTEN_PORTS_FROM, stop) if stop - _LISTEN_PORTS_FROM >= 1_000 else None


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on now, from :func:`listen_ports` where the
    system leaves room for them (see above), else any free port."""
    ports = listen_ports()
    if ports is not None:
        rng = random.SystemRandom()
        for _ in range(100):
            port = rng.randrange(ports.start, ports.stop)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:  # taken: draw again
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_word_prompts(n: int, seed: int = 0) -> list[str]:
    """Word salad: the random-query extraction pattern (4-10 random common words per query),
    flagged within a few dozen queries by a lenient test config."""
    rng, words = random.Random(seed), common_words()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(4, 10))) for _ in range(n)]


# Probes around seeds, in words no real prompt has (tests of the account and cross-account probe rules)
PROBE_WORDS = tuple(f"w{i}" for i in range(60))
PROBE_FILLERS = tuple(f"x{i}" for i in range(400))


def probe_seed(rng: random.Random, n: int = 10) -> list[str]:
    """A seed prompt of ``n`` distinct PROBE_WORDS."""
    return rng.sample(PROBE_WORDS, n)


def counterfactual_variants(rng: random.Random, seed: list[str], steps: int) -> list[str]:
    """The seed with one word replaced by a filler at a time, never the seed itself."""
    return [
        " ".join([*seed[:at], rng.choice(PROBE_FILLERS), *seed[at + 1 :]])
        for at in rng.sample(range(len(seed)), min(steps, len(seed)))
    ]


def mixed_probe_stream(rng: random.Random, n: int) -> list[tuple[str, str]]:
    """``n`` (account, prompt) pairs of 12 accounts: variants of four seeds (half), the seeds
    sent as they are, and random word lists."""
    seeds = [probe_seed(rng) for _ in range(4)]
    events = []
    for _ in range(n):
        account = f"a{rng.randrange(12)}"
        r = rng.random()
        if r < 0.5:
            text = rng.choice(counterfactual_variants(rng, rng.choice(seeds), 10))
        elif r < 0.7:
            text = " ".join(rng.choice(seeds))  # a seed sent as it is
        else:
            text = " ".join(rng.sample(PROBE_WORDS, rng.randint(2, 14)))
        events.append((account, text))
    return events


class ChildProcess:
    """A server the test started (``self.proc``) writing to its log file (``self._log``)."""

    proc: subprocess.Popen
    _log: IO[bytes]

    def terminate(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def kill(self) -> None:  # as a crash: no shutdown work at all
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()


class SidecarProcess(ChildProcess):
    """`probewatch serve` in a subprocess; settings through PROBEWATCH_* variables."""

    def __init__(self, data_dir: Path, log_path: Path, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROBEWATCH_")}
        env.update(
            {
                "PROBEWATCH_ENGINE_DEVICE": "cpu",
                "PROBEWATCH_API_TOKEN": TOKEN,
                "PROBEWATCH_LOG_LEVEL": "info",
                "TOKENIZERS_PARALLELISM": "false",
                "OMP_NUM_THREADS": "2",
            }
        )
        env.update({f"PROBEWATCH_{k.upper()}": str(v) for k, v in settings.items()})
        self.log_path = log_path
        self._log = open(log_path, "ab")  # noqa: SIM115 - the server writes it until terminate() or kill() closes it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "probewatch.serve", "--data-dir", str(data_dir), "--port", str(self.port)],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                answer = httpx.get(self.url + "/readyz", timeout=2)
            except httpx.TransportError:
                answer = None
            if answer is not None and answer.status_code == 200:
                return
            body = answer.json() if answer is not None and answer.status_code == 503 else {}
            # The model or the state could not be loaded: final, unlike Kafka mode's retried reasons,
            # so waiting out the timeout would only delay the report.
            if body.get("status") == "failed" and body["error"]["message"].startswith("loading failed"):
                raise RuntimeError(f"sidecar failed to start: {body['error']['message']}\n{self.log_tail()}")
            time.sleep(0.3)
        raise TimeoutError(f"sidecar not ready after {timeout}s:\n{self.log_tail()}")

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=60, **kwargs)

    def log_tail(self, n: int = 4000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")


def parse_prometheus(text: str) -> dict[tuple[str, tuple], float]:
    """{(name, sorted label pairs): value} from the text format; asserts every line parses."""
    samples = {}
    line_re = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$")
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        assert m, f"unparseable metrics line {line!r}"
        labels = tuple(sorted(label_re.findall(m.group(3) or "")))
        samples[(m.group(1), labels)] = float(m.group(4))
    return samples


def uniform_calibration(**statistics):
    """A calibration with uniform benign feature rows in every history bin and a unit distance
    scale, for tests of the statistics judged on their own (``topic_return=``, ``walk_away=``)."""
    from probewatch.detect.scoring import CHANNELS, N_BINS, N_FEATURES, Calibration

    rng = np.random.default_rng(0)
    samples = [rng.uniform(0.0, 1.0, (120, N_FEATURES)) for _ in range(N_BINS)]
    norm = np.tile(np.array([[1.0, 2.0]]), (len(CHANNELS), N_BINS, 1))
    return Calibration(samples, np.linspace(0.0, 3.0, 200), 0.5, distance_norm=norm, **statistics)


def feature_rows(column: int, values, ns) -> tuple[np.ndarray, np.ndarray]:
    """Feature rows at 0.5 everywhere but ``column``, which takes ``values``; with their ``ns``."""
    from probewatch.detect.scoring import N_FEATURES

    x = np.full((len(values), N_FEATURES), 0.5)
    x[:, column] = values
    return x, np.asarray(ns)


def rewrite_snapshot(src, dst, mutate) -> None:
    """Copy the snapshot (or calibration) file ``src`` to ``dst`` with ``mutate`` applied to its
    dict of arrays: how the tests damage or age a file."""
    with np.load(src, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    mutate(arrays)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)


def header_edit(edit):
    """A ``rewrite_snapshot`` mutation that applies ``edit`` to the file's JSON header."""

    def mutate(arrays):
        header = json.loads(arrays["header"].tobytes().decode())
        edit(header)
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)

    return mutate
