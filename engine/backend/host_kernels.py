"""Two host array steps NumPy does slowly, done by torch's CPU kernels where torch imports.

Searching many queries of one account against its float16 history widens the history to
float32 and keeps the top similarities of each query. NumPy 2.x widens float16 one element at
a time (6.5 ms for a 10k x 384 history on this project's CPU; torch's vectorised copy 0.5 ms),
and ``np.partition`` picks a row's top values 3-4x slower than ``torch.topk``. Both give
exactly the floats NumPy gives: every float16 is a float32, and the top values of a row are
the same numbers whichever routine finds them. Without torch (it is a dependency, but a
broken install should not stop detection) or for small arrays, NumPy does the work. Inside
detection both run on one thread: torch's CPU pool is OpenMP, which the detection thread limit
(``detection_blas_threads``) holds, and the copy is memory-bound and short (0.25-0.5 ms at 10k
rows). torch is imported at the first large search where nothing imported it before (an
engine that embeds has; one fed only precomputed vectors pays the import once, about a second).
"""

from __future__ import annotations

import numpy as np

# Below this many elements the fixed cost of a torch call outweighs what it saves.
TORCH_MIN_ELEMENTS = 1 << 15

_torch = None  # the module once imported; False where it cannot be


def _torch_module():
    global _torch
    if _torch is None:
        try:
            import torch
        except (ImportError, OSError):  # absent, or a broken install (a missing library): NumPy is always right
            _torch = False
        else:
            _torch = torch
    return _torch or None


def _torch_for(array: np.ndarray):
    """torch where it should handle ``array`` in place: a large, writeable C-contiguous array
    (``torch.from_numpy`` warns on read-only memory and refuses negative strides); else None."""
    if array.size < TORCH_MIN_ELEMENTS or not array.flags.writeable or not array.flags.c_contiguous:
        return None
    return _torch_module()


def widen_float16(block: np.ndarray) -> np.ndarray:
    """``block.astype(np.float32)`` for a float16 array, bit for bit."""
    torch = _torch_for(block)
    if torch is None:
        return block.astype(np.float32)
    return torch.from_numpy(block).to(torch.float32).numpy()


def top_values(values: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` largest values of each row of a 2-D float32 array, in no particular order
    (``np.partition(values, n - k, axis=1)[:, n - k:]``'s values). ``k`` at most the row length."""
    n = values.shape[1]
    torch = _torch_for(values)
    if torch is None:
        return np.partition(values, n - k, axis=1)[:, n - k :]
    return torch.topk(torch.from_numpy(values), k, dim=1, sorted=False).values.numpy()
