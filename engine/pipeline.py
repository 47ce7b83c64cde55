"""The detection pipeline below the facade: reference facts, k-NN, account state, features.

:class:`Pipeline` turns a batch of (account, unit vector, timestamp) into one feature
vector per item, in order, exactly as if the items had arrived one at a time. The engine
runs one for live traffic; calibration runs a scratch one over benign traffic.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from probewatch.kernels.backend import to_numpy

from .config import EngineConfig
from .features import AccountState, QueryFacts
from .reference import BenignReference
from .store import AccountStore, IndexBackend

_blas_controller = None


def limit_host_blas(threads: int):
    """Context limiting NumPy's, SciPy's and FAISS's BLAS (not torch's) to ``threads``.

    Detection multiplies small matrices (a 128-query window, a batch against a 2k bank);
    multi-threaded OpenBLAS on those is slower than one thread, and far slower when the
    embedding model keeps the other cores busy (measured 0.2 ms vs 14 ms for a 128x384 Gram).
    """
    global _blas_controller
    if threads <= 0:
        return contextlib.nullcontext()
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415

        controller = ThreadpoolController()
        ours = [lib.filepath for lib in controller.select(user_api="blas").lib_controllers
                if f"{os.sep}torch{os.sep}" not in lib.filepath]
        _blas_controller = controller.select(filepath=ours)
    return _blas_controller.limit(limits=threads)


class Pipeline:
    def __init__(self, config: EngineConfig, reference: BenignReference, backend: IndexBackend,
                 off_reference_similarity: float):
        self.config = config
        self.reference = reference
        self.off_reference_similarity = off_reference_similarity
        self.store = AccountStore(
            dim=reference.dim,
            storage=config.storage,
            history_cap=config.history_cap,
            eviction_block=config.eviction_block,
            segmented_max_history=config.segmented_max_history,
            backend=backend,
        )
        self.states: dict[str, AccountState] = {}

    @property
    def dim(self) -> int:
        return self.reference.dim

    def state_bytes(self) -> int:
        """Approximate bytes held per account besides its vectors."""
        w, c = self.config.window, self.reference.n_cells
        return w * (4 * 4 + 2) + c * 8 + 2 * 48 * 8 + 512

    def held_bytes(self) -> int:
        return self.store.vector_bytes() + len(self.states) * self.state_bytes()

    def forget(self, account: str) -> None:
        self.store.remove(account)
        self.states.pop(account, None)

    def step(self, accounts: Sequence[str], vectors, ts: Sequence[float | None],
             on_item: Callable[[int, str, AccountState, np.ndarray], Any] | None = None) -> list[Any]:
        """Process validated unit rows (host or device) in order.

        After each item's account state is updated, ``on_item(i, account, state, features)``
        runs (before the next item touches the state) and its return value is collected;
        without a callback the features are collected.
        """
        with limit_host_blas(self.config.detection_blas_threads):
            return self._step(accounts, vectors, ts, on_item)

    def _step(self, accounts, vectors, ts, on_item) -> list[Any]:
        cfg = self.config
        ref = self.reference.query_stats(vectors)
        sims, counts = self.store.search_then_add(list(accounts), vectors, cfg.k_neighbors)
        # How many later items of the same account follow each item in this batch: the
        # window an item sees must end at the item itself.
        later = np.zeros(len(accounts), dtype=np.int64)
        seen: dict[str, int] = {}
        for i in range(len(accounts) - 1, -1, -1):
            later[i] = seen.get(accounts[i], 0)
            seen[accounts[i]] = later[i] + 1
        out = []
        for i, account in enumerate(accounts):
            state = self.states.get(account)
            if state is None:
                state = AccountState(cfg.window, self.reference.n_cells)
                self.states[account] = state
            available = min(int(counts[i]), cfg.k_neighbors)
            if available:
                nn = float(sims[i, 0])
                knn = float(sims[i, :available].mean())
            else:
                nn = knn = math.nan
            state.update(QueryFacts(nn, knn, float(ref.ref_similarity[i]), float(ref.ref_kernel_mean[i]), int(ref.cell[i])), ts[i])
            if state.needs_gram_refresh(cfg.refresh_every):
                entry = self.store.get(account)
                end = entry.size - int(later[i])
                recent = entry.vectors(max(0, end - cfg.window), end)
                state.refresh_gram_stats(recent, self.reference.self_kernel_mean, self.reference.gamma)
            features = state.features(cfg.near_duplicate_similarity, self.off_reference_similarity)
            out.append(features if on_item is None else on_item(i, account, state, features))
        return out


def to_host_rows(vectors) -> np.ndarray:
    return np.ascontiguousarray(to_numpy(vectors), dtype=np.float32)
