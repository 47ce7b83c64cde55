"""NumPy views of FAISS's C++ storage, so rows are read and copied without a Python loop.

FAISS exposes its vectors through SWIG pointers; ``faiss.rev_swig_ptr`` wraps one in a
NumPy array that shares the memory. Each helper here says which storage it views.
"""

from __future__ import annotations

import numpy as np


def flat_rows(index, faiss) -> np.ndarray:
    """The (ntotal, d) float32 rows of a host ``IndexFlat``: a view, nothing is copied."""
    n, d = int(index.ntotal), int(index.d)
    return faiss.rev_swig_ptr(index.get_xb(), n * d).reshape(n, d)


def half_rows(index, faiss) -> np.ndarray:
    """The (ntotal, d) float16 rows of a host ``IndexScalarQuantizer`` with ``QT_fp16`` codes
    (its codes are IEEE half floats, row after row): a view, nothing is copied."""
    n, d = int(index.ntotal), int(index.d)
    return code_bytes(index, n * d * 2, faiss).view(np.float16).reshape(n, d)


def byte_code_rows(index, faiss) -> np.ndarray:
    """The (ntotal, d) one-byte codes of a host ``IndexScalarQuantizer`` with 8-bit codes: a
    view, nothing is copied (for ``storage="int8"``, each byte is a code plus 128: the index's
    ``decode_codes`` turns rows of it into float32 codes)."""
    n, d = int(index.ntotal), int(index.d)
    return code_bytes(index, n * d, faiss).reshape(n, d)


def code_bytes(index, n_bytes: int, faiss) -> np.ndarray:
    """The first ``n_bytes`` of a host index's code storage (``index.codes``) as a uint8 view."""
    return faiss.rev_swig_ptr(index.codes.data(), n_bytes)


def resized_copy(index, rows: int, capacity: int, new_index, faiss):
    """A fresh index holding the first ``rows`` rows of ``index`` in storage for ``capacity``
    rows: one exact-size allocation and one copy (std::vector growth would double)."""
    code_size = int(index.code_size)
    fresh = new_index()
    fresh.codes.resize(capacity * code_size)  # from empty: allocates exactly this much
    if rows:
        code_bytes(fresh, rows * code_size, faiss)[:] = code_bytes(index, rows * code_size, faiss)
    fresh.codes.resize(rows * code_size)  # shrinking keeps the allocation
    fresh.ntotal = rows
    return fresh


def reserve_rows(index, capacity: int) -> None:
    """Storage for ``capacity`` rows in an empty host index, allocated once (what
    :func:`resized_copy` does for a fresh index, without making one)."""
    if int(index.ntotal):
        raise ValueError(f"reserve_rows needs an empty index; this one holds {int(index.ntotal)} rows")
    index.codes.resize(capacity * int(index.code_size))  # from empty: allocates exactly this much
    index.codes.resize(0)  # shrinking keeps the allocation
