"""LSH bucket coverage (B4B, Dubinski et al. 2023; CAP-style coverage).

Reference: J. Dubinski, S. Pawlak, F. Boenisch, T. Trzcinski, A. Dziedzic, "Bucks for
Buckets (B4B): Active Defenses Against Stealing Encoders", NeurIPS 2023, Section 3
(coverage of the representation space measured with random-hyperplane LSH buckets).
"""

from __future__ import annotations

import numpy as np

from probewatch.errors import CalibrationError, ConfigError

from .base import StreamingBaseline, check_positive_float, check_positive_int

_MAD_TO_SIGMA = 1.4826  # MAD of a normal sample times this estimates its std


class CoverageLsh(StreamingBaseline):
    """Standardised excess of an account's LSH bucket coverage over benign accounts of the same size.

    ``n_bits`` seeded random hyperplanes through the origin (SimHash) map each embedding to
    one of ``2**n_bits`` buckets (default 12 bits = 4096 buckets, as in B4B). Coverage after n
    queries, c(n), is the number of distinct buckets the account has visited.

    ``fit`` learns the benign coverage curve: at log-spaced sizes n (from ``min_queries`` to
    the longest benign account, ``grid_points`` sizes), the median and MAD of log c(n) over the
    benign accounts at least n long (sizes with fewer than ``min_accounts_per_point`` such
    accounts are dropped). The scale is ``max(1.4826 * MAD, min_scale)`` -- the floor stops
    sizes where every benign account has c(n) = n from dividing by zero. Both are linearly
    interpolated over log n; beyond the largest fitted size the median continues with the
    log-log slope of the upper half of the fitted curve (least squares, clipped to [0, 1]:
    coverage grows at most linearly; 0 with a single fitted size), capped at the log of the
    expected coverage of n uniformly random queries, ``B (1 - (1 - 1/B)^n)`` with
    B = 2**n_bits (no traffic covers more in expectation); the scale stays at its last value. Calibrate with
    benign accounts about as long as the scored ones: the extrapolation is a guess.

    Score after query n (n >= ``min_queries``; NaN before):
    ``z(n) = (log c(n) - median(n)) / scale(n)`` -- higher = covers more of the space than
    benign accounts do after as many queries. ``two_sided=True`` scores ``|z(n)|`` instead
    (also flags accounts that cover unusually little, e.g. template sweeps); B4B itself only
    penalises high coverage, so the default is one-sided.

    Adapted from B4B: B4B hashes the *representations returned* by a stolen encoder and turns
    coverage into an active defence (noise added to outputs grows with coverage); here we hash
    the embeddings of the prompts received and use the coverage as a passive detection
    score, normalised against benign accounts of the same length (B4B compares against a
    fixed coverage budget).
    """

    name = "coverage_lsh"

    def __init__(
        self,
        n_bits: int = 12,
        seed: int = 0,
        min_queries: int = 10,
        grid_points: int = 64,
        min_accounts_per_point: int = 5,
        min_scale: float = 0.05,
        two_sided: bool = False,
    ) -> None:
        super().__init__()
        self.n_bits = check_positive_int(n_bits, "CoverageLsh.n_bits")
        if self.n_bits > 30:
            raise ConfigError(f"CoverageLsh.n_bits must be <= 30 (bucket ids are int64 sums); got {n_bits}.")
        self.seed = seed
        self.min_queries = check_positive_int(min_queries, "CoverageLsh.min_queries")
        self.grid_points = check_positive_int(grid_points, "CoverageLsh.grid_points", minimum=2)
        self.min_accounts_per_point = check_positive_int(min_accounts_per_point, "CoverageLsh.min_accounts_per_point")
        self.min_scale = check_positive_float(min_scale, "CoverageLsh.min_scale")
        self.two_sided = bool(two_sided)
        self._planes: np.ndarray | None = None
        self._log_n: np.ndarray | None = None  # fitted sizes (log n)
        self._median: np.ndarray | None = None  # median log c(n)
        self._scale: np.ndarray | None = None
        self._tail_slope = 0.0

    def fit(self, benign_accounts: list[np.ndarray]) -> CoverageLsh:
        accounts = self._check_benign_accounts(benign_accounts)
        self._planes = np.random.default_rng(self.seed).standard_normal((self.n_bits, self._dim))
        curves = [np.log(self.coverage_curve(a)) for a in accounts]
        lengths = np.array([len(c) for c in curves])
        sizes = np.unique(
            np.round(np.geomspace(self.min_queries, max(lengths.max(), self.min_queries), self.grid_points))
        )
        kept, medians, scales = [], [], []
        for size in sizes.astype(int):
            vals = np.array([c[size - 1] for c, length in zip(curves, lengths, strict=True) if length >= size])
            if len(vals) < self.min_accounts_per_point:
                break  # larger sizes have even fewer accounts
            med = np.median(vals)
            kept.append(size)
            medians.append(med)
            scales.append(max(_MAD_TO_SIGMA * np.median(np.abs(vals - med)), self.min_scale))
        if not kept:
            self._dim = None
            raise CalibrationError(
                f"CoverageLsh.fit needs at least {self.min_accounts_per_point} benign accounts with >= "
                f"{self.min_queries} queries; got {int((lengths >= self.min_queries).sum())}. "
                "Provide more or longer calibration accounts, or lower min_accounts_per_point."
            )
        self._log_n = np.log(np.array(kept, dtype=np.float64))
        self._median = np.array(medians)
        self._scale = np.array(scales)
        upper = self._log_n >= (self._log_n[0] + self._log_n[-1]) / 2  # upper half of the fitted log-n range
        if upper.sum() < 2:
            upper[:] = True
        self._tail_slope = (
            float(np.clip(np.polyfit(self._log_n[upper], self._median[upper], 1)[0], 0.0, 1.0))
            if len(kept) >= 2
            else 0.0
        )
        return self

    def bucket_ids(self, X: np.ndarray) -> np.ndarray:
        """LSH bucket id of each row (int64 in [0, 2**n_bits))."""
        if self._planes is None:
            raise CalibrationError(
                "CoverageLsh is not fitted: call fit(benign_accounts) first; fit draws the LSH planes."
            )
        bits = (np.asarray(X, dtype=np.float64) @ self._planes.T) > 0
        return bits.astype(np.int64) @ (np.int64(1) << np.arange(self.n_bits, dtype=np.int64))

    def coverage_curve(self, X: np.ndarray) -> np.ndarray:
        """c(n) for n = 1..len(X): distinct buckets among the first n queries (float64)."""
        ids = self.bucket_ids(X)
        first_visit = np.zeros(len(ids))
        first_visit[np.unique(ids, return_index=True)[1]] = 1.0
        return np.cumsum(first_visit)

    def score_stream(self, X: np.ndarray) -> np.ndarray:
        X = self._check_stream(X)
        n = len(X)
        scores = np.full(n, np.nan)
        if n < self.min_queries:
            return scores
        sizes = np.arange(self.min_queries, n + 1, dtype=np.float64)
        log_n = np.log(sizes)
        median = np.interp(log_n, self._log_n, self._median)
        beyond = log_n > self._log_n[-1]
        median[beyond] = self._median[-1] + self._tail_slope * (log_n[beyond] - self._log_n[-1])
        buckets = 2.0**self.n_bits
        # no distribution over buckets beats uniform in expected distinct buckets: B (1 - (1 - 1/B)^n)
        median = np.minimum(median, np.log(-buckets * np.expm1(sizes * np.log1p(-1.0 / buckets))))
        scale = np.interp(log_n, self._log_n, self._scale)  # clamps at both ends
        z = (np.log(self.coverage_curve(X))[self.min_queries - 1 :] - median) / scale
        scores[self.min_queries - 1 :] = np.abs(z) if self.two_sided else z
        return scores
