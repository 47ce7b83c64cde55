"""The detection pipeline below the facade: reference facts, k-NN, account state, features.

:class:`Pipeline` turns a batch of (account, unit vector, timestamp) into one feature
vector per item, in order, exactly as if the items had arrived one at a time. The engine
runs one for live traffic; calibration runs a scratch one over benign traffic.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from probewatch.kernels.backend import to_numpy

from .config import EngineConfig
from .features import AccountState, FeatureBatch, QueryFacts
from .reference import BenignReference
from .store import AccountStore, IndexBackend

_blas_controller = None
STEP_CHUNK = 1024  # items per array pass; bounds transient memory for huge batches


def limit_host_blas(threads: int):
    """Context limiting NumPy's, SciPy's and FAISS's BLAS and OpenMP (not torch's) to ``threads``.

    Detection multiplies small matrices (a 128-query window, a batch against a 2k bank) and
    searches small FAISS indexes one query at a time; multi-threaded OpenBLAS or OpenMP on
    those is slower than one thread, and far slower when the embedding model keeps the other
    cores busy (measured 0.2 ms vs 14 ms for a 128x384 Gram). FAISS ships its own OpenMP
    runtime, whose idle threads spin against torch's unless it is held to one thread.
    """
    global _blas_controller
    if threads <= 0:
        return contextlib.nullcontext()
    if _blas_controller is None:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415

        controller = ThreadpoolController()
        ours = [lib.filepath for lib in controller.lib_controllers if f"{os.sep}torch{os.sep}" not in lib.filepath]
        _blas_controller = controller.select(filepath=ours)
    return _held_limit(threads)


_limit_depth = 0
_limit_lock = threading.Lock()


@contextlib.contextmanager
def _held_limit(threads: int):
    """The limit, set once however deeply detection calls nest (setting it costs ~35 us)."""
    global _limit_depth
    with _limit_lock:
        outermost = _limit_depth == 0
        _limit_depth += 1
    limiter = _blas_controller.limit(limits=threads) if outermost else contextlib.nullcontext()
    try:
        with limiter:
            yield
    finally:
        with _limit_lock:
            _limit_depth -= 1


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
            segmented_max_history=resolved_segmented_max_history(config, backend),
            backend=backend,
        )
        self.states: dict[str, AccountState] = {}
        self._state_bytes: int | None = None

    @property
    def dim(self) -> int:
        return self.reference.dim

    def state_bytes(self) -> int:
        """Approximate bytes held per account besides its vectors: its state's arrays plus
        a fixed allowance for the Python objects around them."""
        if self._state_bytes is None:
            self._state_bytes = AccountState(self.config.window, self.reference.n_cells).nbytes() + 1024
        return self._state_bytes

    def held_bytes(self) -> int:
        return self.store.vector_bytes() + len(self.states) * self.state_bytes()

    def forget(self, account: str) -> None:
        self.store.remove(account)
        self.states.pop(account, None)

    def step(self, accounts: Sequence[str], vectors, ts: Sequence[float | None]) -> StepResult:
        """Process validated unit rows (host or device) in order; features of every item.

        Each item updates its account's state in arrival order and its state is captured
        right then, so an account seen twice in a batch gets two different feature rows,
        exactly as if the items had arrived one call at a time. The features of the whole
        batch are then computed in array calls.
        """
        with limit_host_blas(self.config.detection_blas_threads):
            if len(accounts) <= STEP_CHUNK:
                return self._step(accounts, vectors, ts)
            # Huge batches go through in chunks (same result: chunks are batches in arrival
            # order), so transient buffers stay a few MB whatever the caller sends.
            parts = [self._step(accounts[i : i + STEP_CHUNK], vectors[i : i + STEP_CHUNK], ts[i : i + STEP_CHUNK])
                     for i in range(0, len(accounts), STEP_CHUNK)]
            return StepResult([s for p in parts for s in p.states], np.concatenate([p.features for p in parts]),
                              np.concatenate([p.n for p in parts]))

    def _step(self, accounts, vectors, ts) -> StepResult:
        cfg = self.config
        m = len(accounts)
        ref = self.reference.query_stats(vectors)
        sims, counts = self.store.search_then_add(list(accounts), vectors, cfg.k_neighbors)
        available = np.minimum(counts, cfg.k_neighbors)
        with np.errstate(invalid="ignore"):
            nn = np.where(available > 0, sims[:, 0], np.nan).tolist()
            knn = np.where(available > 0, np.where(np.isfinite(sims), sims, 0.0).sum(axis=1) / np.maximum(available, 1),
                           np.nan).tolist()
        ref_similarity, ref_kernel_mean, cells = (ref.ref_similarity.tolist(), ref.ref_kernel_mean.tolist(),
                                                  ref.cell.tolist())
        # How many later items of the same account follow each item in this batch: the
        # window an item sees must end at the item itself.
        later = [0] * m
        seen: dict[str, int] = {}
        for i in range(m - 1, -1, -1):
            later[i] = seen.get(accounts[i], 0)
            seen[accounts[i]] = later[i] + 1
        batch = FeatureBatch(m, cfg.window, self.reference.n_cells)
        states = []
        for i, account in enumerate(accounts):
            state = self.states.get(account)
            if state is None:
                state = AccountState(cfg.window, self.reference.n_cells)
                self.states[account] = state
            state.update(QueryFacts(nn[i], knn[i], ref_similarity[i], ref_kernel_mean[i], cells[i]), ts[i])
            if state.needs_gram_refresh(cfg.refresh_every):
                entry = self.store.get(account)
                end = entry.size - later[i]
                recent = entry.vectors(max(0, end - cfg.window), end)
                state.refresh_gram_stats(recent, self.reference.self_kernel_mean, self.reference.gamma)
            batch.capture(i, state)
            states.append(state)
        features = batch.features(cfg.near_duplicate_similarity, self.off_reference_similarity)
        return StepResult(states, features, batch.n.copy())


@dataclass
class StepResult:
    """What :meth:`Pipeline.step` hands the detector: per item, in input order."""

    states: list[AccountState]  # the item's account state (shared by items of one account)
    features: np.ndarray  # (m, N_FEATURES) as of each item
    n: np.ndarray  # (m,) the account's query count right after each item


def resolved_segmented_max_history(config: EngineConfig, backend: IndexBackend) -> int:
    if config.segmented_max_history is not None:
        return config.segmented_max_history
    return 2048 if backend.on_gpu else 0


def to_host_rows(vectors) -> np.ndarray:
    return np.ascontiguousarray(to_numpy(vectors), dtype=np.float32)
