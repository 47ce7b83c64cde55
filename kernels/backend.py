"""The one array-backend switch: NumPy on the CPU, CuPy on CUDA devices.

Kernels call :func:`get_array_module` on their inputs and write the rest of their code
against ``xp``; CuPy is imported lazily so that importing probewatch never touches CUDA.
Launch geometry for the hand-written CUDA kernels lives here too, so that no kernel
carries its own copy of the constants. Which device an engine runs on is decided once,
by :class:`probewatch.backend.Backend`; this module only answers what an array is.

>>> import numpy as np
>>> get_array_module(np.zeros(3)).__name__
'numpy'

"""

from __future__ import annotations

import functools
from collections.abc import Callable
from types import ModuleType
from typing import Any

import numpy as np

# Threads per block for every RawKernel in this package. The segmented top-k kernel keeps each
# thread's top-k in registers and needs 12 bytes of shared memory per thread for its block-wide
# arg-max (1.5 KiB at 128), far under the 48 KiB default.
THREADS_PER_BLOCK = 128
# Compile-time bound on k for the segmented top-k kernel (registers per thread).
MAX_TOPK = 32


@functools.lru_cache(maxsize=1)
def _cupy() -> ModuleType | None:
    # Any failure means "no usable GPU": ImportError, a missing or broken CUDA runtime, a
    # driver that raises its own error type on initialisation.
    try:
        import cupy

        return cupy if cupy.cuda.runtime.getDeviceCount() >= 1 else None
    except Exception:  # noqa: BLE001 - see above; the CPU path is the fallback
        return None


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    return _cupy() is not None


def cupy_module() -> ModuleType:
    """CuPy itself; raises ``BackendUnavailableError`` naming the extra when it is missing."""
    cp = _cupy()
    if cp is None:
        from probewatch.errors import BackendUnavailableError

        raise BackendUnavailableError(
            "the GPU backend needs CuPy and a CUDA device, but CuPy is not installed or sees no "
            "device; install the GPU extra (pip install 'probewatch[gpu]') on a CUDA 12 machine, "
            "or use device='cpu'"
        )
    return cp


def get_array_module(*arrays: Any) -> ModuleType:
    """``cupy`` if any argument is a CuPy array, else ``numpy`` (like ``cupy.get_array_module``)."""
    cp = _cupy()
    if cp is not None:
        for a in arrays:
            if isinstance(a, cp.ndarray):
                return cp
    return np


def is_device_array(x: Any) -> bool:
    cp = _cupy()
    return cp is not None and isinstance(x, cp.ndarray)


def to_numpy(x: Any) -> np.ndarray:
    """Host copy of a CuPy array; NumPy arrays pass through unchanged."""
    if is_device_array(x):
        return x.get()
    return np.asarray(x)


def compiled_once(build: Callable[[ModuleType], Any]) -> Callable[[], Any]:
    """``build(cupy)`` turned into a getter that compiles once per CUDA device.

    Module-level kernels in CuPy's own style (``@cupy.memoize(for_each_device=True)``), with
    CuPy imported on the first call so that importing probewatch never touches CUDA.
    """
    memoized = None

    @functools.wraps(build)
    def get() -> Any:
        nonlocal memoized
        if memoized is None:
            cp = cupy_module()
            memoized = cp.memoize(for_each_device=True)(functools.partial(build, cp))
        return memoized()

    return get
