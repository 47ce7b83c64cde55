"""Benign-calibrated MMD between an account's recent window and benign reference traffic.

Reference: the 2026 benign-calibrated MMD detector for LLM traffic cited in DEVELOPERS.md
(1,500-query windows compared to benign traffic with a kernel two-sample statistic,
threshold from benign calibration). The kernel test itself is the unbiased MMD^2 of
A. Gretton et al., "A Kernel Two-Sample Test", JMLR 13 (2012), Eq. (3).
"""

from __future__ import annotations

import numpy as np

from probewatch.errors import CalibrationError

from .base import StreamingBaseline, blocks, check_positive_int, sq_dists_to_history, squared_norms


class BenignMmd(StreamingBaseline):
    """Unbiased MMD^2 between the account's last ``window`` queries and a benign reference sample.

    ``fit`` pools the benign calibration accounts, draws ``reference_size`` vectors without
    replacement (seeded; all of them if fewer), and sets the RBF bandwidth by the median
    heuristic: sigma = median pairwise L2 distance within the reference,
    ``k(x, y) = exp(-|x - y|^2 / (2 sigma^2))``. Score after query i, with window
    W = the last ``w = min(i + 1, window)`` queries and reference R (m vectors)::

        MMD^2_u = sum_{a != b in W} k / (w (w - 1)) + sum_{a != b in R} k / (m (m - 1))
                  - 2 sum_{a in W, b in R} k / (w m)

    NaN while ``w < min_window`` (default 20). Higher = the account's recent traffic is
    further from benign traffic.

    Incremental computation (running sums, no O(w^2 d) recomputation): each query i adds
    ``P[i] = sum_{j in window, j < i} k(x_i, x_j)`` to the within-window pair sum and
    ``sum_b k(x_i, r_b)`` to the cross sum; when query y leaves the window its forward pair
    sum ``F[y] = sum_{y < j < y + window} k(x_y, x_j)`` is subtracted (the pairs it formed
    inside its window). P and F come from one band of the kernel matrix computed in row
    blocks, so each query costs O((window + m) d); the sums are kept as float64 prefix sums.

    Choices the cited description leaves open (ours): reference size 1000, median heuristic,
    unbiased estimator, sliding window updated after every query (rather than disjoint
    windows), no permutation test -- the threshold comes from benign accounts' scores via
    :meth:`calibrated_threshold`.
    """

    name = "benign_mmd"

    def __init__(self, window: int = 1500, min_window: int = 20, reference_size: int = 1000, seed: int = 0) -> None:
        super().__init__()
        self.window = check_positive_int(window, "BenignMmd.window", minimum=2)
        self.min_window = check_positive_int(min_window, "BenignMmd.min_window", minimum=2)  # w(w-1) > 0
        self.reference_size = check_positive_int(reference_size, "BenignMmd.reference_size", minimum=2)
        self.seed = seed
        self.bandwidth_: float | None = None
        self.reference_: np.ndarray | None = None
        self._reference_sq: np.ndarray | None = None
        self._gamma: float | None = None
        self._ref_pair_mean: float | None = None

    def fit(self, benign_accounts: list[np.ndarray]) -> BenignMmd:
        accounts = self._check_benign_accounts(benign_accounts)
        pooled = np.vstack(accounts)
        if len(pooled) < 2:
            self._dim = None
            raise CalibrationError(
                f"BenignMmd.fit needs at least 2 benign vectors for a reference sample; got {len(pooled)}. "
                "Provide more benign calibration traffic."
            )
        rng = np.random.default_rng(self.seed)
        ref = pooled[rng.choice(len(pooled), size=min(self.reference_size, len(pooled)), replace=False)]
        ref_sq = squared_norms(ref)
        d2 = sq_dists_to_history(ref, ref_sq, 0, len(ref))
        sigma = float(np.median(np.sqrt(d2[np.triu_indices(len(ref), k=1)])))
        if not sigma > 0:
            self._dim = None
            raise CalibrationError(
                "BenignMmd.fit: the median pairwise distance of the benign reference sample is 0 (mostly identical "
                "vectors), so no RBF bandwidth can be set. Provide more varied benign calibration traffic."
            )
        self.bandwidth_ = sigma
        self._gamma = 1.0 / (2.0 * sigma * sigma)
        k_rr = np.exp(-self._gamma * d2)
        m = len(ref)
        self._ref_pair_mean = float((k_rr.sum() - np.trace(k_rr)) / (m * (m - 1)))
        self.reference_, self._reference_sq = ref, ref_sq
        return self

    def score_stream(self, X: np.ndarray) -> np.ndarray:
        X = self._check_stream(X)
        n, L, m = len(X), self.window, len(self.reference_)
        scores = np.full(n, np.nan)
        if n == 0:
            return scores
        sq = squared_norms(X)
        new_pairs = np.zeros(n)  # P[i]
        leaving_pairs = np.zeros(n)  # F[y]
        to_reference = np.zeros(n)  # sum_b k(x_i, r_b)
        for start, stop in blocks(n):
            lo = max(0, start - L + 1)  # oldest query any row of this block still pairs with
            k = np.exp(-self._gamma * sq_dists_to_history(X, sq, start, stop, lo))
            rows = np.arange(start, stop)[:, None]
            cols = np.arange(lo, stop)[None, :]
            k *= (cols < rows) & (cols > rows - L)  # pairs (j, i) with j earlier and in i's window
            new_pairs[start:stop] = k.sum(axis=1)
            leaving_pairs[lo:stop] += k.sum(axis=0)  # column j collects the pairs j forms with later i
            d2_ref = sq[start:stop, None] + self._reference_sq[None, :] - 2.0 * (X[start:stop] @ self.reference_.T)
            to_reference[start:stop] = np.exp(-self._gamma * np.maximum(d2_ref, 0.0)).sum(axis=1)
        idx = np.arange(n)
        pair_sum = np.cumsum(new_pairs)  # unordered pairs inside window [i - L + 1, i]
        evicted = idx >= L
        pair_sum[evicted] -= np.cumsum(leaving_pairs)[idx[evicted] - L]
        cum_ref = np.concatenate([[0.0], np.cumsum(to_reference)])
        w = np.minimum(idx + 1, L).astype(np.float64)
        cross_sum = cum_ref[idx + 1] - cum_ref[idx + 1 - w.astype(np.int64)]
        ok = w >= self.min_window
        w_ok = w[ok]
        scores[ok] = 2.0 * pair_sum[ok] / (w_ok * (w_ok - 1.0)) + self._ref_pair_mean - 2.0 * cross_sum[ok] / (w_ok * m)
        return scores


def unbiased_mmd2(window: np.ndarray, reference: np.ndarray, bandwidth: float) -> float:
    """Direct O((w + m)^2 d) unbiased MMD^2 with k(x, y) = exp(-|x - y|^2 / (2 bandwidth^2)); a reference
    implementation for tests and spot checks."""
    window = np.asarray(window, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)

    def gram(a, b):
        d2 = np.maximum(squared_norms(a)[:, None] + squared_norms(b)[None, :] - 2.0 * a @ b.T, 0.0)
        return np.exp(-d2 / (2.0 * bandwidth * bandwidth))

    w, m = len(window), len(reference)
    k_ww, k_rr, k_wr = gram(window, window), gram(reference, reference), gram(window, reference)
    return float(
        (k_ww.sum() - np.trace(k_ww)) / (w * (w - 1))
        + (k_rr.sum() - np.trace(k_rr)) / (m * (m - 1))
        - 2.0 * k_wr.mean()
    )
