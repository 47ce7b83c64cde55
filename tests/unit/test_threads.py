"""probewatch.backend.threads: detection holds every OpenMP runtime FAISS may use to one thread.

Each case runs in a fresh interpreter, because which OpenMP runtime FAISS's calls reach
depends on what was imported first, and a test process has long since imported everything.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("torch")
pytest.importorskip("faiss")

PRELUDE = """
import faiss  # after the case's first imports (torch first, where it says so)
from probewatch.backend.threads import limit_host_blas

def seen_inside(threads=1):
    with limit_host_blas(threads):
        with limit_host_blas(threads):  # nested: the outermost limit holds
            inner = faiss.omp_get_max_threads()
        return inner, faiss.omp_get_max_threads()
"""


def run_fresh(body: str, torch_first: bool = True) -> str:
    code = ("import torch\n" if torch_first else "") + textwrap.dedent(PRELUDE) + textwrap.dedent(body)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_faiss_searches_on_one_thread_when_torch_was_imported_first():
    # torch loads its OpenMP runtime into the global symbol scope: FAISS's OpenMP calls then
    # reach torch's runtime, not the copy FAISS ships (before the fix: 2 threads inside)
    out = run_fresh(
        """
        import torch
        torch.set_num_threads(2)
        inside = seen_inside()
        print(inside, faiss.omp_get_max_threads(), torch.get_num_threads())
        """
    )
    assert out == "(1, 1) 2 2"  # one thread inside the limit, two again after it, torch's restored


def test_torch_imported_after_the_first_limit_is_held_too():
    out = run_fresh(
        """
        faiss.omp_set_num_threads(2)
        first = seen_inside()
        import torch
        torch.set_num_threads(2)
        print(first, seen_inside(), faiss.omp_get_max_threads())
        """,
        torch_first=False,
    )
    assert out == "(1, 1) (1, 1) 2"


def test_two_threads_inside_at_once_are_both_held():
    # OpenMP's thread count belongs to each thread: the second thread in must set its own
    # (before: only the process's first limit set anything, so the second searched on two)
    out = run_fresh(
        """
        import threading
        import torch
        torch.set_num_threads(2)
        first_inside, second_done = threading.Event(), threading.Event()
        seen = {}

        def first():
            with limit_host_blas(1):
                first_inside.set()
                second_done.wait(60)
                seen["first"] = faiss.omp_get_max_threads()

        def second():
            faiss.omp_set_num_threads(2)  # this thread's own count (a new thread starts at the core count)
            first_inside.wait(60)
            with limit_host_blas(1):
                seen["second"] = faiss.omp_get_max_threads()
            seen["second after"] = faiss.omp_get_max_threads()
            second_done.set()

        threads = [threading.Thread(target=first), threading.Thread(target=second)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        print(seen["first"], seen["second"], seen["second after"])
        """
    )
    assert out == "1 1 2"


def test_zero_threads_leaves_openmp_alone():
    out = run_fresh(
        """
        import torch
        torch.set_num_threads(2)
        print(seen_inside(threads=0))
        """
    )
    assert out == "(2, 2)"


def test_engine_detection_searches_faiss_on_one_thread():
    out = run_fresh(
        """
        import numpy as np
        import torch
        import probewatch as pw
        from probewatch.backend import store

        torch.set_num_threads(2)
        seen = []
        search_long = store.AccountStore._search_long

        def recording(self, *args, **kwargs):
            seen.append(faiss.omp_get_max_threads())
            return search_long(self, *args, **kwargs)

        store.AccountStore._search_long = recording
        engine = pw.Engine(device="cpu")
        rows = np.random.default_rng(0).standard_normal((600, 384)).astype(np.float32)
        rows /= np.linalg.norm(rows, axis=1, keepdims=True)
        for start in range(0, 600, 100):
            engine.observe_embeddings(["one"] * 100, rows[start : start + 100])
        print(len(seen) > 0, sorted(set(seen)), faiss.omp_get_max_threads())
        """
    )
    assert out == "True [1] 2"
