"""The benign reference: what normal traffic looks like in embedding space.

A bank of benign query vectors (each new query's similarity to its nearest bank entries
says how far it sits from normal traffic, and the bank is the reference sample of the
MMD), a codebook whose Voronoi cells partition the space for coverage, and the RBF
bandwidth. Fitted on benign calibration traffic; a default fitted on public benign
prompts ships with probewatch (``data/default_calibration.npz``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probewatch.kernels import assign_cells, median_heuristic_gamma, rbf_from_similarity
from probewatch.kernels.backend import get_array_module, to_numpy

from ..backend.device import import_faiss
from ..backend.host_kernels import top_values
from ..errors import CalibrationError

REFERENCE_TOP_K = 4


@dataclass
class QueryReferenceStats:
    """Per-query facts against the reference, all host arrays of length n."""

    ref_similarity: np.ndarray  # mean similarity to the REFERENCE_TOP_K nearest bank rows
    ref_kernel_mean: np.ndarray  # mean RBF kernel to the whole bank (MMD cross term)
    cell: np.ndarray  # codebook cell (int16)


# Up to this many query rows, the bank product runs bank-first (see query_stats); measured 2.2x
# faster at 16 rows and even at 64, where the two orders meet.
SMALL_BATCH_ROWS = 64


class BenignReference:
    def __init__(self, bank: np.ndarray, codebook: np.ndarray, gamma: float):
        # Rounded through float16 here because snapshots store the bank in float16: a reloaded
        # engine must score exactly like the one that saved it.
        self.bank = np.ascontiguousarray(np.asarray(bank, dtype=np.float16), dtype=np.float32)
        self.codebook = np.ascontiguousarray(codebook, dtype=np.float32)
        if self.bank.ndim != 2 or self.codebook.ndim != 2 or self.bank.shape[1] != self.codebook.shape[1]:
            raise CalibrationError(
                f"reference bank and codebook must be (n, d) with one d; got {self.bank.shape}, {self.codebook.shape}"
            )
        if self.bank.shape[0] < REFERENCE_TOP_K + 1:
            raise CalibrationError(
                f"reference bank needs more than {REFERENCE_TOP_K} vectors; got {self.bank.shape[0]}"
            )
        self.gamma = float(gamma)
        gram = self.bank.astype(np.float64) @ self.bank.T.astype(np.float64)
        k = rbf_from_similarity(gram, self.gamma)
        m = k.shape[0]
        self.self_kernel_mean = float((k.sum() - np.trace(k)) / (m * (m - 1)))
        self._device_cache: dict[int, tuple] = {}

    @property
    def dim(self) -> int:
        return int(self.bank.shape[1])

    @property
    def n_cells(self) -> int:
        return int(self.codebook.shape[0])

    @classmethod
    def fit(
        cls,
        vectors: np.ndarray,
        codebook_vectors: np.ndarray | None = None,
        n_bank: int = 2048,
        n_cells: int = 64,
        seed: int = 0,
    ) -> BenignReference:
        """Sample the bank from ``vectors``, fit a spherical k-means codebook (on
        ``codebook_vectors`` when given: a partition does not need held-out data), and set the
        RBF bandwidth by the median heuristic."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        train = vectors if codebook_vectors is None else np.ascontiguousarray(codebook_vectors, dtype=np.float32)
        if vectors.shape[0] < REFERENCE_TOP_K + 1 or train.shape[0] < 2 * n_cells:
            raise CalibrationError(
                f"fitting a reference needs at least {REFERENCE_TOP_K + 1} bank vectors and {2 * n_cells} codebook "
                f"vectors; got {vectors.shape[0]} and {train.shape[0]}. Calibrate with more benign traffic or keep "
                "the default reference"
            )
        rng = np.random.default_rng(seed)
        take = rng.choice(vectors.shape[0], size=min(n_bank, vectors.shape[0]), replace=False)
        bank = vectors[np.sort(take)]
        faiss = import_faiss()
        # faiss warns below 39 points per centroid; 2 per centroid is enough for a coarse partition.
        kmeans = faiss.Kmeans(
            train.shape[1],
            n_cells,
            niter=25,
            seed=int(seed) + 1,
            spherical=True,
            verbose=False,
            min_points_per_centroid=1,
        )
        kmeans.train(train)
        codebook = kmeans.centroids / np.linalg.norm(kmeans.centroids, axis=1, keepdims=True)
        sample = bank[rng.choice(bank.shape[0], size=min(1024, bank.shape[0]), replace=False)]
        return cls(bank, codebook, median_heuristic_gamma(sample))

    def _arrays_for(self, xp):
        if xp is np:
            return self.bank, self.codebook
        key = id(xp)
        if key not in self._device_cache:
            self._device_cache[key] = (xp.asarray(self.bank), xp.asarray(self.codebook))
        return self._device_cache[key]

    def query_stats(self, vectors) -> QueryReferenceStats:
        """Reference facts for unit rows ``vectors`` (NumPy or CuPy); one matrix product each."""
        xp = get_array_module(vectors)
        bank, codebook = self._arrays_for(xp)
        if xp is np and 1 < vectors.shape[0] <= SMALL_BATCH_ROWS:
            # OpenBLAS packs the right-hand operand on every call: for a micro-batch against the
            # 2,048-row bank that copy dominates, and the bank on the left halves it (same values)
            sims = np.ascontiguousarray((bank @ vectors.T).T)
        else:
            sims = vectors @ bank.T
        k = min(REFERENCE_TOP_K, bank.shape[0])
        top = top_values(sims, k) if xp is np else -xp.partition(-sims, k - 1, axis=1)[:, :k]
        # summed in sorted order, so a query's value does not depend on which selection ran (the
        # batch it came in decides that); sum / count is .mean without its per-call overhead
        ref_similarity = xp.sort(top, axis=1).sum(axis=1) / k
        ref_kernel_mean = rbf_from_similarity(sims, self.gamma).sum(axis=1) / sims.shape[1]
        cell = assign_cells(vectors, codebook)
        return QueryReferenceStats(
            to_numpy(ref_similarity).astype(np.float32),
            to_numpy(ref_kernel_mean).astype(np.float32),
            to_numpy(cell).astype(np.int16),
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        return {
            "ref_bank": self.bank.astype(np.float16),
            "ref_codebook": self.codebook,
            "ref_gamma": np.float64(self.gamma),
        }

    @classmethod
    def from_arrays(cls, arrays) -> BenignReference:
        return cls(
            np.asarray(arrays["ref_bank"], dtype=np.float32),
            np.asarray(arrays["ref_codebook"]),
            float(arrays["ref_gamma"]),
        )
