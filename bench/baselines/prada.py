"""PRADA: min-distance normality test (Juuti, Szyller, Marchal, Asokan 2019).

Reference: M. Juuti et al., "PRADA: Protecting against DNN Model Stealing Attacks",
IEEE EuroS&P 2019, Algorithm 1.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import stats

from .base import StreamingBaseline, blocks, check_positive_int, sq_dists_to_history, squared_norms


class Prada(StreamingBaseline):
    """PRADA's per-client detector on text embeddings.

    Per account, as in the paper's Algorithm 1: for each query x after the first,
    ``d_min`` = the L2 distance from x to the nearest member of the account's growing set G;
    ``d_min`` is appended to D (all queries' min distances). x joins G only when
    ``d_min > T``, where T = mean(D_G) - std(D_G) over the min distances of the queries that
    joined G (population std; T = -inf while D_G is empty, so the second query always joins;
    the first query seeds G). Once ``|D| >= min_distances`` (the paper only tests streams
    above a minimum size; 30 is our default) the score after the query is
    ``1 - W(D)``, W the Shapiro-Wilk statistic: benign min distances are roughly normal (W near
    1), synthetic probing skews them (W drops, score rises). The paper flags when W < delta;
    here ``score >= 1 - delta`` with the threshold from :meth:`calibrated_threshold`.

    Adapted from images to text embeddings:
      * L2 distance between unit-norm sentence embeddings replaces L2 between input images.
      * PRADA keeps one growing set per predicted class (distances are only compared within a
        class); an LLM prompt has no predicted class, so each account has a single G.
      * Degenerate D with zero range (e.g. only exact duplicates) gives W = 1 (scipy's
        convention) and score 0.
    fit() only records the embedding dimension; PRADA's only learned quantity is delta.

    Cost per query: O(|G| d) for the min distance (distances are computed in blocks against
    the account's history) plus O(|D| log |D|) for the Shapiro-Wilk statistic.
    """

    name = "prada"

    def __init__(self, min_distances: int = 30) -> None:
        super().__init__()
        self.min_distances = check_positive_int(min_distances, "Prada.min_distances", minimum=3)  # shapiro needs >= 3

    def fit(self, benign_accounts: list[np.ndarray]) -> "Prada":
        self._check_benign_accounts(benign_accounts)
        return self

    def score_stream(self, X: np.ndarray) -> np.ndarray:
        X = self._check_stream(X)
        n = len(X)
        scores = np.full(n, np.nan)
        if n < 2:
            return scores
        sq = squared_norms(X)
        growing = [0]  # indices of G; the first query seeds it
        min_dists = np.empty(n - 1)  # D, in query order
        g_sum = g_sumsq = 0.0  # running sums over D_G for T = mean - std
        g_count = 0
        threshold = -math.inf
        for start, stop in blocks(n):
            d2 = sq_dists_to_history(X, sq, start, stop)
            for i in range(max(start, 1), stop):
                d_min = math.sqrt(d2[i - start, growing].min())
                min_dists[i - 1] = d_min
                if d_min > threshold:
                    growing.append(i)
                    g_count += 1
                    g_sum += d_min
                    g_sumsq += d_min * d_min
                    mean = g_sum / g_count
                    threshold = mean - math.sqrt(max(g_sumsq / g_count - mean * mean, 0.0))
                if i >= self.min_distances:  # |D| == i after query i
                    scores[i] = 1.0 - _shapiro_w(min_dists[:i])
        return scores


def _shapiro_w(values: np.ndarray) -> float:
    with warnings.catch_warnings():
        # zero-range input (W := 1) and n > 5000 (p-value accuracy; we only use W) warn
        warnings.simplefilter("ignore", UserWarning)
        return float(stats.shapiro(values).statistic)
