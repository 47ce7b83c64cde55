"""Per-account FAISS indexes: search each query against its account's history, then add it.

Every account owns one FAISS index (inner product on unit vectors), the store of record
for its history. :meth:`AccountStore.search_then_add` takes a batch of queries from many
accounts and returns, for each query, its ``k`` most similar earlier queries of the same
account, counting the earlier queries of the same batch, exactly as if the batch had been
observed one query at a time. Accounts with short histories are searched together by one
segmented k-NN call (one CUDA launch on GPU); long ones by their own FAISS index, which on
GPU lives on the device and shares one ``StandardGpuResources``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np

from probewatch.kernels import segmented_topk
from probewatch.kernels.backend import to_numpy

from ..errors import UnknownAccountError
from .device import Backend, int8_codes, int8_index_class, int8_step
from .faiss_compat import byte_code_rows, flat_rows, half_rows, reserve_rows, resized_copy
from .host_kernels import top_values, widen_float16


class AccountIndex:
    """One account's history: a FAISS index holding the most recent queries, oldest first.

    A host index grows its storage by about 1/8 at a time and never past the history cap
    (see :meth:`reserve`), instead of std::vector's doubling, which leaves up to half of an
    account's vector memory unused when queries arrive one at a time.
    """

    __slots__ = ("capacity", "index", "on_device", "size")

    def __init__(self, index: Any, on_device: bool = False):
        self.index = index
        self.on_device = on_device
        # Row count kept here: every change goes through the store, and reading the SWIG
        # attribute ntotal costs microseconds on a path that asks for it per query.
        self.size = int(index.ntotal)
        self.capacity = self.size  # rows the host index's storage holds without reallocating

    def reserve(self, rows: int, history_cap: int, new_index: Callable[[], Any], faiss) -> None:
        """Make room for ``rows`` rows: one exact-size allocation and copy (host indexes only)."""
        if self.on_device or rows <= self.capacity:
            return
        capacity = max(rows, min(rows + max(rows // 8, 4), history_cap))
        if self.size == 0:  # a new account's empty index grows in place: no second index
            reserve_rows(self.index, capacity)
        else:
            self.index = resized_copy(self.index, self.size, capacity, new_index, faiss)
        self.capacity = capacity

    def vectors(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Host float32 copy of rows ``start:stop`` (decoded when stored as float16 or int8)."""
        stop = self.size if stop is None else stop
        if stop <= start:
            return np.zeros((0, self.index.d), dtype=np.float32)
        return self.index.reconstruct_n(start, stop - start)


HOST_GEMM_MIN_QUERIES = 16
# float16 and int8 rows are widened block by block before the product, which costs about what
# faiss's own scan saves below this many queries of one account (measured for float16 at 300-10k
# rows; for int8 codes the product also wins from 64 queries and ties at 32: 0.092 against
# 0.130 ms per query at 10k rows, one BLAS thread). Widening float16 through torch (0.12.2) moved
# the float16 crossing little: at 32 queries the product wins at 300 and 1k rows (0.19 / 0.63
# against faiss's 0.22 / 0.67 ms) and loses at 10k (8.8 against 6.5 ms); at 64 it wins at all three.
HOST_GEMM_MIN_QUERIES_FLOAT16 = 64
_GEMM_ROWS = 16384  # history rows per matrix product: bounds the (queries x rows) block


def _flat_topk_gemm(index, queries: np.ndarray, k: int, faiss, storage: str) -> np.ndarray:
    """Top-k inner products of ``queries`` against a host index's rows, read in place.

    For many queries of one account this is one NumPy sgemm per block of history: measured
    2-6x faster than faiss-cpu's search on a 2-core machine at 10k-100k rows (its bundled
    BLAS is slower than NumPy's), with the same inner products. float16 rows are widened to
    float32 one block at a time; int8 rows are multiplied as whole-number codes against the
    queries' codes (exact in float32, as FAISS's own int8 scan) and scaled once.
    """
    scale = np.float32(1.0)
    if storage == "int8":
        stored, widen = byte_code_rows(index, faiss), index.decode_codes
        queries, scale = int8_codes(queries, index.step), np.float32(index.step * index.step)
    else:
        stored = half_rows(index, faiss) if storage == "float16" else flat_rows(index, faiss)
        widen = widen_float16 if storage == "float16" else (lambda block: block)
    n = stored.shape[0]
    best = np.empty((queries.shape[0], 0), dtype=np.float32)
    for start in range(0, n, _GEMM_ROWS):
        sims = queries @ widen(stored[start : start + _GEMM_ROWS]).T
        # The top values only (no indices, no negated copy): half the time of argpartition + gather.
        best = np.concatenate([best, top_values(sims, min(k, sims.shape[1]))], axis=1)
    return -np.sort(-best, axis=1)[:, :k] * scale


BYTES_PER_DIMENSION = {"float32": 4, "float16": 2, "int8": 1}


class AccountStore:
    """All accounts' indexes, with the history cap, least recently observed first (the
    order in which the pipeline's memory budget evicts idle accounts).

    Not thread-safe on its own; :class:`~probewatch.Engine` serialises access.
    """

    def __init__(
        self,
        dim: int,
        storage: str,
        history_cap: int,
        eviction_block: int,
        segmented_max_history: int,
        backend: Backend,
    ):
        self.dim = dim
        self.storage = storage
        self.history_cap = history_cap
        self.eviction_block = eviction_block
        self.segmented_max_history = segmented_max_history
        self.backend = backend
        self.bytes_per_vector = dim * BYTES_PER_DIMENSION[storage]
        self._int8_step = None  # rounds queries as rows are kept
        if storage == "int8":
            int8_index_class(backend.faiss)  # a faiss without signed 8-bit codes fails here, not at the first query
            self._int8_step = int8_step(dim)
        # Least recently observed first: the order idle-account eviction walks.
        self._accounts: OrderedDict[str, AccountIndex] = OrderedDict()
        self._total_rows = 0  # kept current, so the memory budget check is O(1) per batch

    # -- bookkeeping ----------------------------------------------------------------
    def __contains__(self, account: str) -> bool:
        return account in self._accounts

    def __len__(self) -> int:
        return len(self._accounts)

    def accounts(self) -> list[str]:
        """Account ids, least recently observed first (the order idle eviction walks)."""
        return list(self._accounts)

    def get(self, account: str) -> AccountIndex:
        try:
            return self._accounts[account]
        except KeyError:
            raise UnknownAccountError(
                f"account {account!r} has no stored history (never observed, forgotten or evicted)"
            ) from None

    def history_size(self, account: str) -> int:
        entry = self._accounts.get(account)
        return entry.size if entry is not None else 0

    def total_vectors(self) -> int:
        return self._total_rows

    def vector_bytes(self) -> int:
        return self.total_vectors() * self.bytes_per_vector

    def remove(self, account: str) -> None:
        entry = self._accounts.pop(account, None)
        if entry is not None:
            self._total_rows -= entry.size

    def clear(self) -> None:
        self._accounts.clear()
        self._total_rows = 0

    def _entry_for(self, account: str) -> AccountIndex:
        entry = self._accounts.get(account)
        if entry is None:
            entry = AccountIndex(self.backend.new_index(self.dim, self.storage))
            self._accounts[account] = entry
        return entry

    # -- the hot path ---------------------------------------------------------------
    def search_then_add(self, accounts: list[str], vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """k-NN of each query among its account's earlier queries, then insert the batch.

        ``vectors`` are unit-norm float32 rows (host or device). Returns host arrays
        ``sims`` (n, k) descending, ``-inf`` where fewer than k earlier queries exist, and
        ``counts`` (n,) how many earlier queries each query was searched against.
        """
        n = len(accounts)
        sims = np.full((n, k), -np.inf, dtype=np.float32)
        counts = np.zeros(n, dtype=np.int64)
        if n == 0:
            return sims, counts
        host_vectors = to_numpy(vectors).astype(np.float32, copy=False)
        # Compare at the precision rows are kept in: a query then meets the earlier rows of its
        # own batch exactly as it would after they were stored (batch == one at a time).
        if self.storage == "float16":
            host_vectors = host_vectors.astype(np.float16).astype(np.float32)
        elif self._int8_step is not None:
            host_vectors = int8_codes(host_vectors, self._int8_step) * np.float32(self._int8_step)

        # Group the batch by account, keeping arrival order inside each group.
        groups: dict[str, list[int]] = {}
        for i, account in enumerate(accounts):
            groups.setdefault(account, []).append(i)

        short: list[tuple[str, list[int]]] = []
        for account, rows in groups.items():
            history = self.history_size(account)
            counts[rows] = history + np.arange(len(rows))
            if history > 0 and history + len(rows) - 1 > self.segmented_max_history:
                self._search_long(account, rows, host_vectors, k, sims)
            else:
                short.append((account, rows))
        if short:
            self._search_short(short, host_vectors, vectors, k, sims)

        # Insert in order of each account's last item, so the LRU order matches arrival order.
        for account, rows in sorted(groups.items(), key=lambda item: item[1][-1]):
            self._add(account, host_vectors[rows])
        return sims, counts

    def _search_short(self, short, host_vectors, vectors, k, sims) -> None:
        """One segmented top-k call: segment = account history followed by its batch rows."""
        xp = self.backend.xp
        pieces, offsets, query_rows, query_segment, query_visible = [], [0], [], [], []
        for seg, (account, rows) in enumerate(short):
            entry = self._accounts.get(account)
            history = entry.vectors() if entry is not None else np.zeros((0, self.dim), np.float32)
            pieces.append(history)
            pieces.append(host_vectors[rows])
            offsets.append(offsets[-1] + history.shape[0] + len(rows))
            query_rows.extend(rows)
            query_segment.extend([seg] * len(rows))
            query_visible.extend(history.shape[0] + np.arange(len(rows)))
        base = np.concatenate(pieces, axis=0)
        query_rows_arr = np.asarray(query_rows, dtype=np.int64)
        queries = host_vectors[query_rows_arr]
        if xp is not np:  # one host->device copy for the whole batch
            base, queries = xp.asarray(base), xp.asarray(queries)
        top, _ = segmented_topk(
            queries,
            base,
            np.asarray(offsets, np.int64),
            np.asarray(query_segment, np.int64),
            np.asarray(query_visible, np.int64),
            k,
        )
        sims[query_rows_arr] = to_numpy(top)

    def _search_long(self, account, rows, host_vectors, k, sims) -> None:
        """FAISS search of the stored history, merged with the earlier rows of this batch."""
        entry = self._accounts[account]
        if self.backend.device_indexes and not entry.on_device:
            entry.index = self.backend.index_to_device(entry.index, self.storage)
            entry.on_device = True
        batch = host_vectors[rows]
        kk = min(k, entry.size)
        gemm_from = HOST_GEMM_MIN_QUERIES if self.storage == "float32" else HOST_GEMM_MIN_QUERIES_FLOAT16
        if not entry.on_device and len(rows) >= gemm_from:
            hist_sims = _flat_topk_gemm(entry.index, batch, kk, self.backend.faiss, self.storage)
        else:
            hist_sims, _ = entry.index.search(batch, kk)
        if len(rows) == 1:  # the common case: nothing earlier in this batch to merge
            sims[rows[0], :kk] = hist_sims[0]
            return
        # Earlier queries of the same batch are visible too (causal mask on the batch Gram).
        intra = batch @ batch.T
        intra[np.triu_indices(len(rows))] = -np.inf
        merged = np.concatenate([hist_sims.astype(np.float32), intra.astype(np.float32)], axis=1)
        merged.sort(axis=1)
        top = merged[:, ::-1][:, :k]
        sims[rows, : top.shape[1]] = top

    def _add(self, account: str, rows: np.ndarray) -> None:
        entry = self._entry_for(account)
        self._accounts.move_to_end(account)
        entry.reserve(
            entry.size + rows.shape[0],
            self.history_cap,
            lambda: self.backend.new_index(self.dim, self.storage),
            self.backend.faiss,
        )
        entry.index.add(np.ascontiguousarray(rows, dtype=np.float32))
        entry.size += rows.shape[0]
        self._total_rows += rows.shape[0]
        overflow = entry.size - self.history_cap
        if overflow > 0:
            # Drop whole blocks of the oldest rows: FAISS removal is O(n) per call.
            drop = min(entry.size, -(-overflow // self.eviction_block) * self.eviction_block)
            if entry.on_device:  # GPU flat indexes cannot remove; rebuild from the kept tail
                kept = entry.vectors(drop)
                fresh = self.backend.new_index(self.dim, self.storage)
                fresh.add(kept)
                entry.index = self.backend.index_to_device(fresh, self.storage)
            else:
                entry.index.remove_ids(self.backend.faiss.IDSelectorRange(0, drop))
            entry.size -= drop
            self._total_rows -= drop
            if entry.on_device:
                entry.capacity = entry.size

    def window(self, account: str, count: int, end: int | None = None) -> np.ndarray:
        """Host copy of the ``count`` rows of ``account`` that end at row ``end`` (default: its
        newest), oldest first."""
        entry = self.get(account)
        end = entry.size if end is None else end
        return entry.vectors(max(0, end - count), end)

    # -- persistence ----------------------------------------------------------------
    def export(self) -> tuple[list[str], np.ndarray, np.ndarray]:
        """(account ids in LRU order, offsets, concatenated history vectors) via host copies."""
        ids = list(self._accounts)
        parts = [self._accounts[a].vectors() for a in ids]
        offsets = np.zeros(len(ids) + 1, dtype=np.int64)
        if parts:
            offsets[1:] = np.cumsum([p.shape[0] for p in parts])
            flat = np.concatenate(parts, axis=0) if offsets[-1] else np.zeros((0, self.dim), np.float32)
        else:
            flat = np.zeros((0, self.dim), np.float32)
        return ids, offsets, flat

    def import_(self, ids: list[str], offsets: np.ndarray, flat: np.ndarray) -> None:
        self.clear()
        for i, account in enumerate(ids):
            entry = self._entry_for(account)
            rows = flat[offsets[i] : offsets[i + 1]]
            if rows.shape[0]:
                entry.index.add(np.ascontiguousarray(rows, dtype=np.float32))  # from empty: exact size
                entry.size = entry.capacity = rows.shape[0]
                self._total_rows += rows.shape[0]
