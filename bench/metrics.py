"""Account-level detection metrics for the benchmark: pure functions over score streams.

Conventions shared by every function here:

- a detector emits one score per query (higher = more anomalous, NaN while it cannot score);
- an account's score is the maximum over its stream; a stream with no finite score counts as
  ``-inf`` (it is never flagged, but it still counts among the accounts);
- an account is flagged at threshold ``t`` once any of its scores is ``>= t``, and its
  queries until detection are the 1-based index of that first query.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np


def account_score(scores: np.ndarray) -> float:
    """Maximum of a score stream, NaNs ignored; ``-inf`` when nothing is finite or the stream is empty."""
    scores = np.asarray(scores, dtype=np.float64)
    finite = scores[~np.isnan(scores)]
    return float(finite.max()) if finite.size else float("-inf")


def queries_until_detection(scores: np.ndarray, threshold: float) -> int | None:
    """1-based index of the first query whose score reaches ``threshold``; None if none does."""
    scores = np.asarray(scores, dtype=np.float64)
    # NaN >= t is False, so unscored queries never count as a detection
    hits = np.flatnonzero(scores >= threshold)
    return int(hits[0]) + 1 if hits.size else None


def flagged_share(account_scores: Sequence[float], threshold: float) -> float:
    """Share of accounts whose score reaches ``threshold`` (NaN for no accounts)."""
    values = np.asarray(account_scores, dtype=np.float64)
    return float(np.mean(values >= threshold)) if values.size else float("nan")


def roc_auc(benign_scores: Sequence[float], attack_scores: Sequence[float]) -> float:
    """Probability that a random attack account outscores a random benign one (ties count half).

    This is the area under the account-level ROC curve (Mann-Whitney U / (n_attack * n_benign)),
    computed exactly with sorting, so ``-inf`` scores (never scored) tie with each other.
    NaN when either side has no accounts.
    """
    benign = np.sort(np.asarray(benign_scores, dtype=np.float64))
    attack = np.asarray(attack_scores, dtype=np.float64)
    if benign.size == 0 or attack.size == 0:
        return float("nan")
    if np.isnan(benign).any() or np.isnan(attack).any():
        raise ValueError("account scores must not be NaN; map an unscored account to -inf (see account_score)")
    below = np.searchsorted(benign, attack, side="left")
    ties = np.searchsorted(benign, attack, side="right") - below
    return float((below.sum() + 0.5 * ties.sum()) / (benign.size * attack.size))


def roc_curve(benign_scores: Sequence[float], attack_scores: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of "flag if score >= t" over every distinct t.

    Starts at (0, 0) (threshold above every score) and ends at (1, 1) (threshold at the lowest
    score); both rates are non-decreasing. Empty arrays when either side has no accounts.
    """
    benign = np.sort(np.asarray(benign_scores, dtype=np.float64))
    attack = np.sort(np.asarray(attack_scores, dtype=np.float64))
    if benign.size == 0 or attack.size == 0:
        return np.zeros(0), np.zeros(0)
    thresholds = np.unique(np.concatenate([benign, attack]))[::-1]  # descending: the curve runs left to right
    fpr = (benign.size - np.searchsorted(benign, thresholds, side="left")) / benign.size
    tpr = (attack.size - np.searchsorted(attack, thresholds, side="left")) / attack.size
    return np.concatenate([[0.0], fpr]), np.concatenate([[0.0], tpr])


def delay_summary(delays: Iterable[int | None]) -> dict[str, float | int | None]:
    """Median and 90th percentile of queries until detection over the detected accounts, and
    the share of accounts detected at all. Percentiles interpolate linearly; None when no
    account was detected."""
    delays = list(delays)
    detected = np.asarray([d for d in delays if d is not None], dtype=np.float64)
    return {
        "accounts": len(delays),
        "detected": int(detected.size),
        "detected_share": float(detected.size / len(delays)) if delays else float("nan"),
        "median": float(np.median(detected)) if detected.size else None,
        "p90": float(np.percentile(detected, 90)) if detected.size else None,
    }


def detection_curve(delays: Sequence[int | None], max_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """(queries q = 1..max_queries, share of all accounts detected within q queries)."""
    queries = np.arange(1, max_queries + 1)
    detected = np.sort(np.asarray([d for d in delays if d is not None], dtype=np.int64))
    if not delays:
        return queries, np.full(queries.shape, np.nan)
    return queries, np.searchsorted(detected, queries, side="right") / len(delays)
