"""Helpers for the sidecar tests: a real `python -m probewatch.server` on 127.0.0.1."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx  # noqa: E402 - the serve extra is part of the test install

TOKEN = "test-token-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WORDS = ("apple river quantum tax violin sodium gothic harbor lemma sprint tundra opera fiscal neuron "
         "basalt cipher mango lattice pigment walrus").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def random_word_prompts(n: int, seed: int = 0) -> list[str]:
    """Word salad: the random-query extraction pattern, flagged quickly by a lenient test config."""
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(n)]


class SidecarProcess:
    """`probewatch serve` in a subprocess; settings through PROBEWATCH_* variables."""

    def __init__(self, data_dir: Path, log_path: Path, **settings):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("PROBEWATCH_")}
        env.update({"PROBEWATCH_ENGINE_DEVICE": "cpu", "PROBEWATCH_API_TOKEN": TOKEN, "PROBEWATCH_LOG_LEVEL": "info",
                    "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "2"})
        env.update({f"PROBEWATCH_{k.upper()}": str(v) for k, v in settings.items()})
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "probewatch.server", "--data-dir", str(data_dir),
                                     "--port", str(self.port)], env=env, stdout=self._log, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"sidecar not ready after {timeout}s:\n{self.log_tail()}")

    def client(self, **kwargs) -> "httpx.Client":
        return httpx.Client(base_url=self.url, headers=AUTH, timeout=60, **kwargs)

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

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)
        self._log.close()

    def log_tail(self, n: int = 4000) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_bytes()[-n:].decode("utf-8", "replace")


def parse_prometheus(text: str) -> dict[tuple[str, tuple], float]:
    """{(name, sorted label pairs): value} from the text format; asserts every line parses."""
    import re

    samples = {}
    line_re = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
    label_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = line_re.match(line)
        assert m, f"unparseable metrics line {line!r}"
        labels = tuple(sorted(label_re.findall(m.group(3) or "")))
        samples[(m.group(1), labels)] = float(m.group(4))
    return samples
