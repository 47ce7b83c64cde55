"""Stateful k-NN detection (Chen, Carlini, Wagner 2020).

Reference: S. Chen, N. Carlini, D. Wagner, "Stateful Detection of Black-Box Adversarial
Attacks", ACM SPAI workshop (AsiaCCS) 2020, Section 4.
"""

from __future__ import annotations

import numpy as np

from .base import (
    StreamingBaseline,
    blocks,
    check_positive_float,
    check_positive_int,
    sq_dists_to_history,
    squared_norms,
)


class StatefulKnn(StreamingBaseline):
    """Mean distance to the k nearest earlier queries of the same account; score = its negative.

    Per account the detector buffers every earlier query. For query i it takes the
    ``k_eff = min(k, i)`` nearest earlier queries (L2), and the score after query i is
    ``-mean(those k_eff distances)``: queries that sit unusually close to the account's
    earlier ones (perturbation chains, near-duplicate probing) score high. Scores are NaN
    until at least ``min_history`` earlier queries exist (default 5).

    The paper flags when the mean k-NN distance falls below a threshold set at a low
    percentile (0.1 %) of benign per-query mean k-NN distances. ``fit`` therefore scores the
    benign calibration accounts and keeps that distribution in ``benign_knn_distances_``
    (sorted, one value per benign query) and ``paper_threshold_`` = the score at that
    percentile (flag when ``score >= paper_threshold_``); the benchmark may instead derive an
    account-level threshold with :meth:`calibrated_threshold`.

    Adapted from images to text embeddings:
      * the paper's learned similarity encoder (trained so perturbed images map close) is
        replaced by the sentence embedding itself;
      * the paper clears the buffer after each detection and caps its size; here the
        buffer keeps all earlier queries of the account and the detector never resets,
        so the output is a full score stream.
      * ``k_eff = min(k, i)`` lets the score start before k earlier queries exist.

    Cost per query O(i d) (distances to all earlier queries, in BLAS blocks) + O(i) for the
    k-smallest selection.
    """

    name = "stateful_knn"

    def __init__(self, k: int = 50, min_history: int = 5, benign_percentile: float = 0.1) -> None:
        super().__init__()
        self.k = check_positive_int(k, "StatefulKnn.k")
        self.min_history = check_positive_int(min_history, "StatefulKnn.min_history")
        self.benign_percentile = check_positive_float(benign_percentile, "StatefulKnn.benign_percentile")
        self.benign_knn_distances_: np.ndarray | None = None
        self.paper_threshold_: float | None = None

    def fit(self, benign_accounts: list[np.ndarray]) -> StatefulKnn:
        accounts = self._check_benign_accounts(benign_accounts)
        dists = np.concatenate([-self._scores(a) for a in accounts])
        dists = np.sort(dists[~np.isnan(dists)])
        self.benign_knn_distances_ = dists
        # percentile is given in percent (0.1 = 0.1 %), as in the paper
        self.paper_threshold_ = float(-np.percentile(dists, self.benign_percentile)) if dists.size else None
        return self

    def score_stream(self, X: np.ndarray) -> np.ndarray:
        return self._scores(self._check_stream(X))

    def _scores(self, X: np.ndarray) -> np.ndarray:
        n = len(X)
        scores = np.full(n, np.nan)
        sq = squared_norms(X)
        for start, stop in blocks(n):
            d2 = sq_dists_to_history(X, sq, start, stop)
            rows = np.arange(start, stop)
            d2[np.arange(stop)[None, :] >= rows[:, None]] = np.inf  # only strictly earlier queries
            full = rows >= self.k  # rows with at least k earlier queries: one vectorized partition
            if full.any():
                part = np.partition(d2[full], self.k - 1, axis=1)[:, : self.k]
                scores[rows[full]] = -np.sqrt(part).mean(axis=1)
            for r in np.flatnonzero(~full & (rows >= self.min_history)):  # the first k queries only
                i = rows[r]  # k_eff = i < k: all earlier queries are the nearest ones
                scores[i] = -np.sqrt(d2[r, :i]).mean()
        return scores
