"""Blacklight: probabilistic fingerprints of quantized inputs (Li et al. 2022).

Reference: H. Li, S. Shan, E. Wenger, J. Zhang, H. Zheng, B. Y. Zhao, "Blacklight: Scalable
Defense for Neural Networks against Query-Based Black-Box Attacks", USENIX Security 2022,
Section 4 (quantization, sliding-window hashing, top-S fingerprint, match threshold).
"""

from __future__ import annotations

import numpy as np
from scipy import sparse

from probewatch.errors import ConfigError

from .base import StreamingBaseline, blocks, check_positive_float, check_positive_int


def _splitmix64(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 arrays (wrapping arithmetic): spreads every input bit over the output."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


class Blacklight(StreamingBaseline):
    """Fraction of an account's queries whose fingerprint matches an earlier query's.

    Per query, as in Blacklight: (1) quantize the input, (2) hash every window of
    ``window_size`` consecutive quantized values (stride 1), (3) keep the ``top_k`` largest
    hash values as the query's fingerprint, (4) look the fingerprint up in the account's hash
    table: the match count of the query is the largest number of fingerprint hashes it shares
    with any single earlier query of the account; the query "matches" when that count is
    ``>= match_threshold`` (paper: 50 hashes, threshold 25). The paper flags the account at
    the first matching query; because retries and reformulations make single duplicates
    common in benign LLM traffic, the score here is the paper's per-account *detection
    coverage* statistic instead: score after query i = (matching queries among 0..i) / (i+1),
    NaN for the first ``min_queries - 1`` queries. ``match_counts(X)`` returns the raw
    per-query counts (``max(match_counts) >= 25`` is the paper's first-detection rule).

    Adapted from images to text embeddings:
      * pixels are replaced by the coordinates of the embedding after a seeded Gaussian
        random projection (d -> d; every coordinate mixes all embedding dimensions and has
        about the same spread); the quantization step is ``quant_step`` times the benign per-coordinate
        standard deviation learned in ``fit`` (the paper quantizes pixel values with a fixed
        step of 50/255);
      * the window is 5 coordinates (paper: 20 pixels) and each window hash includes its
        position (pixel windows are position-free to survive shifts; rotated embedding
        coordinates have no shift structure). With these defaults a synthetic pair at cosine
        0.99 / 0.97 / 0.95 / 0.9 / 0.8 / 0.5 / 0 shares on average about
        36 / 28 / 24 / 17 / 10 / 4 / 1 of 50 hashes, so the default threshold 25 matches pairs
        above cosine ~0.955; the best match of a query among 2000 synthetic topical queries
        (cosine ~0.4 within a topic) stays at ~15 (window 4 would reach cosine ~0.94 but
        lets that climb to ~20 of 50);
      * hashes are a keyed 64-bit mix (splitmix64) instead of SHA-256 -- only equality matters.
    """

    name = "blacklight"

    def __init__(
        self,
        window_size: int = 5,
        quant_step: float = 2.0,
        top_k: int = 50,
        match_threshold: int = 25,
        min_queries: int = 20,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.window_size = check_positive_int(window_size, "Blacklight.window_size")
        self.quant_step = check_positive_float(quant_step, "Blacklight.quant_step")
        self.top_k = check_positive_int(top_k, "Blacklight.top_k")
        self.match_threshold = check_positive_int(match_threshold, "Blacklight.match_threshold")
        if self.match_threshold > self.top_k:
            raise ConfigError(
                f"Blacklight.match_threshold ({match_threshold}) cannot exceed top_k ({top_k}): a query shares at most "
                "top_k hashes with another."
            )
        self.min_queries = check_positive_int(min_queries, "Blacklight.min_queries")
        self.seed = seed
        self._rotation: np.ndarray | None = None
        self._step: float | None = None
        self._window_keys: np.ndarray | None = None
        self._position_keys: np.ndarray | None = None

    def fit(self, benign_accounts: list[np.ndarray]) -> Blacklight:
        accounts = self._check_benign_accounts(benign_accounts)
        d = self._dim
        if d - self.window_size + 1 < self.top_k:
            self._dim = None
            raise ConfigError(
                f"Blacklight needs at least top_k={self.top_k} windows per query; dimension {d} with window_size "
                f"{self.window_size} gives {d - self.window_size + 1}. Lower top_k or window_size."
            )
        rng = np.random.default_rng(self.seed)
        # a Gaussian projection mixes every embedding dimension into every coordinate; no need for an
        # exactly orthogonal rotation (a QR costs more than the rest of fit), the step is learned below
        self._rotation = rng.standard_normal((d, d)) / np.sqrt(d)
        spread = float(np.std(np.vstack(accounts) @ self._rotation))
        if not spread > 0:
            self._dim = None
            raise ConfigError("Blacklight.fit: benign embeddings have zero spread; cannot set a quantization step.")
        self._step = self.quant_step * spread
        keys = rng.integers(0, 2**63, size=self.window_size + d, dtype=np.int64).astype(np.uint64)
        self._window_keys, self._position_keys = keys[: self.window_size], _splitmix64(keys[self.window_size :])
        return self

    def fingerprints(self, X: np.ndarray) -> np.ndarray:
        """(n, top_k) uint64: each query's top_k largest window hashes."""
        X = self._check_stream(X)
        quantized = np.floor((X @ self._rotation) / self._step).astype(np.int64).view(np.uint64)
        n_windows = self._dim - self.window_size + 1
        h = np.broadcast_to(self._position_keys[:n_windows], (len(X), n_windows)).copy()
        for offset in range(self.window_size):  # fold in each value of the window with its own key
            h = _splitmix64(h ^ (quantized[:, offset : offset + n_windows] + self._window_keys[offset]))
        return np.partition(h, n_windows - self.top_k, axis=1)[:, n_windows - self.top_k :]

    def match_counts(self, X: np.ndarray) -> np.ndarray:
        """Per query: the most fingerprint hashes it shares with any one earlier query of the account (int64)."""
        prints = self.fingerprints(X)
        n = len(prints)
        best = np.zeros(n, dtype=np.int64)
        if n < 2:
            return best
        # account hash table as a sparse incidence matrix: query x distinct hash value
        _, columns = np.unique(prints.ravel(), return_inverse=True)
        incidence = sparse.csr_matrix(
            (np.ones(columns.size, dtype=np.int32), columns.ravel(), np.arange(0, columns.size + 1, self.top_k)),
            shape=(n, int(columns.max()) + 1),
        )
        for start, stop in blocks(n):
            # shared-hash counts of the block's queries with every query up to the block's end (cost ~ the
            # number of pairs sharing a hash); tril keeps strictly earlier queries: col <= (start + row) - 1
            shared = sparse.tril(incidence[start:stop] @ incidence[:stop].T, k=start - 1, format="csr")
            best[start:stop] = shared.max(axis=1).toarray().ravel()
        return best

    def score_stream(self, X: np.ndarray) -> np.ndarray:
        counts = self.match_counts(X)
        n = len(counts)
        scores = np.full(n, np.nan)
        if n >= self.min_queries:
            matched_so_far = np.cumsum(counts >= self.match_threshold)
            scores[self.min_queries - 1 :] = matched_so_far[self.min_queries - 1 :] / np.arange(self.min_queries, n + 1)
        return scores
