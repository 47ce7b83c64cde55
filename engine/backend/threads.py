"""Host BLAS and OpenMP threads during detection math."""

from __future__ import annotations

import contextlib
import os
import sys
import threading

_blas_controller = None
_controller_saw_torch = False  # torch imported after the scan brings its OpenMP runtime: scan again
_limit_depth = 0  # limits held in the process (BLAS counts are process-wide)
_limit_lock = threading.Lock()
_thread_limits = threading.local()  # .depth: limits held by this thread (OpenMP counts are per thread)
_NO_LIMIT = contextlib.nullcontext()


def limit_host_blas(threads: int):
    """Context limiting NumPy's, SciPy's and FAISS's BLAS and every OpenMP runtime to ``threads``.

    Detection multiplies small matrices (a 128-query window, a batch against a 2k bank) and
    searches small FAISS indexes one query at a time; multi-threaded OpenBLAS or OpenMP on
    those is slower than one thread, and far slower when the embedding model keeps the other
    cores busy (measured 0.2 ms vs 14 ms for a 128x384 Gram). FAISS ships its own OpenMP
    runtime, whose idle threads spin against torch's unless it is held to one thread.

    torch's OpenMP runtime is limited too: once torch is imported (it loads its libgomp into
    the global symbol scope), FAISS's OpenMP calls resolve to torch's runtime, not the copy
    FAISS ships, and limiting only that copy left every FAISS search on all cores. With
    another process busy on both cores, the many-short-accounts batch (256 searches of tiny
    indexes) then took 0.4-1.8 s (medians) instead of 0.13 s (README, changes in 0.14.2).
    OpenMP's thread count belongs to the calling thread and is restored on exit, so embedding
    outside the limit, or on another thread, keeps torch's. torch's BLAS is left alone.
    """
    global _blas_controller, _controller_saw_torch
    if threads <= 0 or getattr(_thread_limits, "depth", 0):
        # off, or inside a limit this thread already holds: nothing to set (a lone query nests four)
        return _NO_LIMIT
    torch_loaded = "torch" in sys.modules
    if _blas_controller is None or (torch_loaded and not _controller_saw_torch):
        from threadpoolctl import ThreadpoolController

        _controller_saw_torch = torch_loaded
        controller = ThreadpoolController()
        ours = [
            lib.filepath
            for lib in controller.lib_controllers
            if f"{os.sep}torch{os.sep}" not in lib.filepath or lib.user_api == "openmp"
        ]
        _blas_controller = controller.select(filepath=ours)
    return _held_limit(threads)


@contextlib.contextmanager
def _held_limit(threads: int):
    """The limit, set once however deeply detection calls nest (setting it costs ~35 us).

    BLAS thread counts are the process's: set when the process's outermost limit begins and
    restored when it ends. OpenMP's belong to each calling thread: every thread sets its own
    on its outermost limit, so detection running on two threads at once (two engines in a
    thread pool) holds both."""
    global _limit_depth
    with _limit_lock:
        outermost = _limit_depth == 0
        _limit_depth += 1
    thread_depth = getattr(_thread_limits, "depth", 0)
    _thread_limits.depth = thread_depth + 1
    # Straight to each library's get/set calls: threadpoolctl's limit() objects cost ~18 us a
    # call, a tenth of a lone query's detection. Only libraries not already there are touched.
    changed = []
    for lib in _blas_controller.lib_controllers:
        first_in = thread_depth == 0 if lib.user_api == "openmp" else outermost
        if first_in:
            before = lib.get_num_threads()
            if before != threads:
                lib.set_num_threads(threads)
                changed.append((lib, before))
    try:
        yield
    finally:
        for lib, before in changed:
            lib.set_num_threads(before)
        _thread_limits.depth = thread_depth
        with _limit_lock:
            _limit_depth -= 1
