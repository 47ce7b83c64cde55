"""A busy CPU for benchmarks: another process keeping every core at work for a bounded time.

Inference nodes rarely give detection idle cores: the embedding model, the serving stack and
its tokenizers run beside it. ``busy_cpu()`` starts a second Python process multiplying
matrices on torch's threads (one per core), the load under which a thread pool that spins or
waits on a descheduled worker shows up; it stops when the context exits, and by itself after
``seconds`` whatever happens to the parent.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import textwrap

_BURNER = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(int(sys.argv[1]))
    end = time.monotonic() + float(sys.argv[2])
    a = torch.randn(512, 512)
    print("busy", flush=True)
    while time.monotonic() < end:
        a = torch.tanh(a @ a.T / 512)
    """
)


@contextlib.contextmanager
def busy_cpu(seconds: float = 300.0, threads: int | None = None):
    """Run the body while another process keeps ``threads`` cores (default: all) busy."""
    threads = threads or os.cpu_count() or 1
    burner = subprocess.Popen(
        [sys.executable, "-c", _BURNER, str(threads), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    try:
        if burner.stdout.readline().strip() != "busy":  # torch imported and working before timing starts
            raise RuntimeError(f"the CPU burner did not start (exit status {burner.poll()})")
        yield
    finally:
        burner.terminate()
        try:
            burner.wait(timeout=10)
        except subprocess.TimeoutExpired:
            burner.kill()
            burner.wait()
