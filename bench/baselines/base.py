"""The contract every published baseline detector implements, and helpers they share.

A baseline sees one account's queries (unit-norm sentence embeddings, time order) and
returns its anomaly score after each query. It is fitted on benign calibration accounts
only; detection thresholds are derived from benign scores with
:meth:`StreamingBaseline.calibrated_threshold`, never from test accounts.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Iterator, Sequence

import numpy as np

from probewatch.errors import CalibrationError, ConfigError, InputError

# Rows per block when a detector builds distance/kernel matrices against earlier queries:
# large enough for BLAS efficiency, small enough that a block against a long history stays
# within a few tens of MB.
DEFAULT_BLOCK_ROWS = 256


class StreamingBaseline(abc.ABC):
    """Contract: fit(benign_accounts) on benign calibration accounts only; then score_stream(X) returns, for an account's
    queries in time order, the detector's anomaly score after each query (float64 array (n,), higher = more anomalous,
    NaN while the detector has too little data to score). Deterministic given its seed. No state leaks between accounts.
    """

    name: str = "baseline"

    def __init__(self) -> None:
        self._dim: int | None = None  # set by fit; score_stream checks streams against it

    # -- the contract ------------------------------------------------------------------
    @abc.abstractmethod
    def fit(self, benign_accounts: list[np.ndarray]) -> StreamingBaseline:
        """Learn benign statistics from benign calibration accounts; returns self."""

    @abc.abstractmethod
    def score_stream(self, X: np.ndarray) -> np.ndarray:
        """Score after each query of one account's stream X (n, d); float64 (n,)."""

    def calibrated_threshold(self, benign_scores_per_account: list[np.ndarray], fpr: float) -> float:
        """Smallest threshold that at most ``fpr`` of the given benign accounts ever reach.

        An account "reaches" threshold t when the maximum of its score stream (NaNs ignored)
        is >= t; an account whose stream is all NaN never reaches any threshold but still
        counts among the N accounts (so if at most ``floor(fpr * N)`` accounts have any finite
        score, the result is the lowest finite float). With N accounts, at most ``floor(fpr * N)`` of them may reach the threshold, so the result
        is the next float above the ``(floor(fpr * N) + 1)``-th largest account maximum.

        With fewer than ``1 / fpr`` accounts no account may be flagged at all, so the result
        is the largest benign maximum plus the smallest representable step (``np.nextafter``)
        -- i.e. the benign data cannot support the requested rate and the threshold falls back
        to "above every benign account seen". Flag an account when ``max score >= threshold``.
        """
        if isinstance(fpr, bool) or not isinstance(fpr, (int, float, np.floating)) or not (0.0 < float(fpr) < 1.0):
            raise ConfigError(f"fpr must be a float in (0, 1); got {fpr!r}. Pass e.g. 0.01 for 1 % of accounts.")
        if len(benign_scores_per_account) == 0:
            raise CalibrationError(
                "calibrated_threshold needs benign score streams for at least one account; got an empty list. "
                "Score the benign calibration accounts with score_stream first."
            )
        maxima = np.array([_stream_max(np.asarray(s, dtype=np.float64)) for s in benign_scores_per_account])
        if not np.isfinite(maxima).any():
            raise CalibrationError(
                f"none of the {len(maxima)} benign score streams has a finite score (all NaN: streams too short "
                f"for {self.name}). Use longer calibration accounts."
            )
        allowed = math.floor(float(fpr) * len(maxima) + 1e-9)  # tolerance: 0.07 * 100 must give 7
        ordered = np.sort(maxima)[::-1]
        # Thresholds just above the (allowed+1)-th largest maximum exclude it and everything
        # below it (ties included), and admit at most `allowed` accounts.
        return float(np.nextafter(ordered[allowed], np.inf))  # allowed < N because fpr < 1

    # -- helpers for subclasses --------------------------------------------------------
    def _check_benign_accounts(self, benign_accounts: Sequence[np.ndarray], min_accounts: int = 1) -> list[np.ndarray]:
        """Validate calibration accounts (2-D, same dim, finite); returns float64 arrays; sets the dim."""
        if not isinstance(benign_accounts, (list, tuple)):
            raise InputError(
                f"{self.name}.fit expects a list of (n_i, d) arrays, one per benign account; got "
                f"{type(benign_accounts).__name__}. Wrap a single account as [X]."
            )
        accounts = [_as_matrix(x, f"{self.name}.fit account {i}") for i, x in enumerate(benign_accounts)]
        accounts = [a for a in accounts if len(a) > 0]
        if len(accounts) < min_accounts:
            raise CalibrationError(
                f"{self.name}.fit needs at least {min_accounts} non-empty benign account(s); got {len(accounts)}. "
                "Provide more benign calibration accounts."
            )
        dims = {a.shape[1] for a in accounts}
        if len(dims) != 1:
            raise InputError(
                f"{self.name}.fit: all benign accounts must have the same embedding dimension; got {sorted(dims)}. "
                "Embed every account with the same model."
            )
        self._dim = dims.pop()
        return accounts

    def _check_stream(self, X: np.ndarray) -> np.ndarray:
        """Validate one account's stream against the fitted detector; returns float64 (n, d)."""
        if self._dim is None:
            raise CalibrationError(
                f"{self.name} is not fitted: call fit(benign_accounts) on benign calibration accounts before "
                "score_stream."
            )
        X = _as_matrix(X, f"{self.name}.score_stream")
        if X.shape[1] != self._dim:
            raise InputError(
                f"{self.name}.score_stream expected vectors of dimension {self._dim} (as fitted); got {X.shape[1]}. "
                "Use embeddings from the same model as the calibration data."
            )
        return X

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_") and not k.endswith("_"))
        return f"{type(self).__name__}({params})"


def _stream_max(scores: np.ndarray) -> float:
    finite = scores[~np.isnan(scores)]
    return float(finite.max()) if finite.size else -np.inf


def _as_matrix(X, what: str) -> np.ndarray:
    try:
        X = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(
            f"{what}: expected a numeric (n, d) array of embeddings; could not convert it ({exc})."
        ) from exc
    if X.ndim != 2:
        raise InputError(
            f"{what}: expected a 2-D (n, d) array of embeddings (one row per query); got shape {X.shape}. "
            "Stack the account's vectors with np.vstack."
        )
    if X.size and not np.isfinite(X).all():
        raise InputError(f"{what}: the embeddings contain NaN or inf; drop or re-embed those queries.")
    return X


def check_positive_int(value, what: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{what} must be an integer >= {minimum}; got {value!r}.")
    return int(value)


def check_positive_float(value, what: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float, np.floating))
        or not (value > 0)
        or not np.isfinite(value)
    ):
        raise ConfigError(f"{what} must be a finite number > 0; got {value!r}.")
    return float(value)


def squared_norms(X: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", X, X)


def blocks(n: int, block_rows: int = DEFAULT_BLOCK_ROWS) -> Iterator[tuple[int, int]]:
    """(start, stop) row ranges covering range(n)."""
    for start in range(0, n, block_rows):
        yield start, min(start + block_rows, n)


def sq_dists_to_history(X: np.ndarray, sq: np.ndarray, start: int, stop: int, history_start: int = 0) -> np.ndarray:
    """Squared L2 distances from rows [start, stop) to rows [history_start, stop) of X (float64, clipped at 0).

    Entry [r, c] pairs query start+r with query history_start+c; callers mask c >= r (later
    or same queries) themselves. Uses |x|^2 + |y|^2 - 2 x.y with float64 inputs, which keeps
    near-duplicate distances accurate to ~1e-8.
    """
    d2 = sq[start:stop, None] + sq[None, history_start:stop] - 2.0 * (X[start:stop] @ X[history_start:stop].T)
    np.maximum(d2, 0.0, out=d2)
    return d2
