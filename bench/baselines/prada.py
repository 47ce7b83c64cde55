"""PRADA: min-distance normality test (Juuti, Szyller, Marchal, Asokan 2019).

Reference: M. Juuti et al., "PRADA: Protecting against DNN Model Stealing Attacks",
IEEE EuroS&P 2019, Algorithm 1.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import special

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
    ``1 - W(D)``, W the Shapiro-Wilk statistic (Royston's approximation, the W of
    ``scipy.stats.shapiro``, computed by our faster ``_shapiro_w``): benign min distances are roughly normal (W near
    1), synthetic probing skews them (W drops, score rises). The paper flags when W < delta;
    here ``score >= 1 - delta`` with the threshold from :meth:`calibrated_threshold`.

    Adapted from images to text embeddings:
      * L2 distance between unit-norm sentence embeddings replaces L2 between input images.
      * PRADA keeps one growing set per predicted class (distances are only compared within a
        class); an LLM prompt has no predicted class, so each account has a single G.
      * Degenerate D with zero range (e.g. only exact duplicates) gives W = 1 (scipy's
        convention) and score 0.
    fit() only records the embedding dimension; PRADA's only learned quantity is delta.

    Cost per query i: O(i d) for distances to the earlier queries (BLAS, in row blocks; the min
    is taken over G's members) plus O(i log i) for the Shapiro-Wilk statistic.
    """

    name = "prada"

    def __init__(self, min_distances: int = 30) -> None:
        super().__init__()
        self.min_distances = check_positive_int(min_distances, "Prada.min_distances", minimum=3)  # W needs >= 3 values

    def fit(self, benign_accounts: list[np.ndarray]) -> Prada:
        self._check_benign_accounts(benign_accounts)
        return self

    def score_stream(self, X: np.ndarray) -> np.ndarray:
        X = self._check_stream(X)
        n = len(X)
        scores = np.full(n, np.nan)
        if n < 2:
            return scores
        sq = squared_norms(X)
        growing = np.zeros(n, dtype=np.int64)  # growing[:g_count + 1] = indices of G; query 0 seeds it
        min_dists = np.empty(n - 1)  # D, in query order
        g_sum = g_sumsq = 0.0  # running sums over D_G (the d_min of queries 1.. that joined G) for T = mean - std
        g_count = 0  # |D_G| = |G| - 1
        threshold = -math.inf
        for start, stop in blocks(n):
            d2 = sq_dists_to_history(X, sq, start, stop)
            for i in range(max(start, 1), stop):
                d_min = math.sqrt(d2[i - start, growing[: g_count + 1]].min())
                min_dists[i - 1] = d_min
                if d_min > threshold:
                    g_count += 1
                    growing[g_count] = i
                    g_sum += d_min
                    g_sumsq += d_min * d_min
                    mean = g_sum / g_count
                    threshold = mean - math.sqrt(max(g_sumsq / g_count - mean * mean, 0.0))
                if i >= self.min_distances:  # |D| == i after query i
                    scores[i] = 1.0 - _shapiro_w(min_dists[:i])
        return scores


# Royston's polynomial approximations (Royston 1992, "Approximating the Shapiro-Wilk W-test for
# non-normality", Statistics and Computing 2; algorithm AS R94, 1995) for the two outermost
# coefficients, in powers of 1/sqrt(n).
_A1_POLY = (0.0, 0.221157, -0.147981, -2.071190, 4.434685, -2.706056)
_A2_POLY = (0.0, 0.042981, -0.293762, -1.752461, 5.682633, -3.582633)


def _poly(coeffs: tuple[float, ...], x: float) -> float:
    return sum(c * x**power for power, c in enumerate(coeffs))


def _shapiro_w(values: np.ndarray) -> float:
    """Shapiro-Wilk W with Royston's coefficient approximation (the W of scipy.stats.shapiro, to ~1e-9).

    Our own O(n log n) implementation: scipy's wrapper spends ~150 us per call on argument
    handling, which dominated PRADA's per-query cost; the tests compare it with scipy.
    """
    x = np.sort(values)
    n = len(x)
    centred_ss = float(np.sum((x - x.mean()) ** 2))
    if x[-1] - x[0] <= 0.0 or centred_ss <= 0.0:
        return 1.0  # zero range: scipy's convention
    half = n // 2
    if n == 3:
        coeffs = np.array([math.sqrt(0.5)])
    else:
        m = special.ndtri((np.arange(1, half + 1) - 0.375) / (n + 0.25))  # lower-half normal scores (< 0)
        summ2 = 2.0 * float(m @ m)
        root = math.sqrt(summ2)
        rsn = 1.0 / math.sqrt(n)
        # the outermost one (n <= 5) or two coefficients come from the polynomials; the rest are
        # the normal scores rescaled so that all coefficients have unit sum of squares
        outer = [_poly(_A1_POLY, rsn) - m[0] / root]
        if n > 5:
            outer.append(_poly(_A2_POLY, rsn) - m[1] / root)
        k = len(outer)
        fac = math.sqrt((summ2 - 2.0 * float(m[:k] @ m[:k])) / (1.0 - 2.0 * sum(a * a for a in outer)))
        coeffs = -m / fac
        coeffs[:k] = outer
    spread = x[::-1][:half] - x[:half]  # x_(n+1-i) - x_(i), i = 1..n/2
    return float(coeffs @ spread) ** 2 / centred_ss
