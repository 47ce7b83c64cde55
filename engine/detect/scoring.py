"""From features to a calibrated risk, a level and the reasons behind it.

Calibration is benign-only. Benign traffic is not one population: chat users, retry-heavy
users, translation and retrieval apps each have their own typical feature values, so an
account is judged by how far it is from its *nearest benign look-alikes* (k-nearest
neighbours among benign feature vectors at the same history length), not by how far each
feature is from one benign median. The search runs in two channels, two ways of putting
features on one scale: each feature in benign spreads (one feature far past every benign
account counts for a lot) and each feature at its benign percentile (many features each a
little unusual add up; see ``CHANNELS``). Each channel's raw distance is put on a common
scale per history bin using out-of-sample benign distances and the query scores their mean.
The distribution of benign accounts' *lifetime maximum* scores (cross-fitted, with an
exponential tail fitted to its top decile) turns a score into a risk:
``risk = 1 - (share of benign accounts that ever score this high)``. The flag threshold
therefore holds the target false-positive rate per account over its whole life. Reasons
name the features that most separate the account from its look-alikes.
"""

from __future__ import annotations

import bisect
import math
import warnings
from typing import Any, NamedTuple

import numpy as np
from scipy.special import bdtr, bdtrc, ndtri

from ..campaigns.scoring import GroupCalibration
from ..errors import CalibrationError
from ..types import Level, Reason
from .features import FEATURE_NAMES, FEATURES, N_FEATURES, SMOOTHING_QUERIES
from .reference import BenignReference

# History-length bins: features of a 5-query account are compared with benign 4-7 query accounts.
BIN_EDGES = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192], dtype=np.int64)
N_BINS = len(BIN_EDGES)
_BIN_EDGES_LIST = BIN_EDGES.tolist()
MIN_BIN_SAMPLES = 40
MAX_BIN_SAMPLES = 4096
Z_AT_Q99 = 2.3263  # normal quantile of 0.99
IQR_PER_SIGMA = 1.349  # interquartile range of a normal, in standard deviations
NEIGHBOURS = 5  # benign look-alikes an account must be close to
MIN_SCORED_QUERIES = 10  # fewer queries are too little evidence to act on at a 0.1 % false-positive rate
# An account's score is the mean of its last SMOOTHING_QUERIES per-query scores: extraction
# persists, while one odd benign query (a burst of retries, a history-bin boundary) does not.
REASON_MIN_GAP = 0.5  # scaled differences smaller than this do not explain anything
TAIL_FRACTION = 0.1
# Two ways to put a feature row on one scale before the look-alike search; a query's score is
# the mean of the two, each standardised by its own benign distances. (Measured and not used:
# the higher of the two watched three times as many power users of an unseen population, and
# the spread score floored at the mean lost most of the gain; issue 10's notes.)
# - "spread": each feature in benign interquartile spreads. Unbounded, so one feature far past
#   every benign account (a word-salad account's share of queries unlike any benign traffic)
#   counts for a lot.
# - "rank": each feature at its benign percentile, as a normal quantile. Bounded at the benign
#   extremes, so a heavy-tailed feature cannot drown the others, and many features each a
#   little outside the benign bulk (random or coverage-maximising queries) add up.
CHANNELS = ("spread", "rank")
# The rank channel leaves out the features that measure *topic* (how close queries are to the
# benign reference traffic): a user of a subject no reference corpus holds is far out on all
# three at once, which would add up to a flag for a cook or a lawyer. The spread channel keeps
# them, where they count as before.
RANK_CHANNEL_SKIPS = ("reference_similarity", "mmd_to_benign", "off_reference_rate")
# Features that are not look-alike coordinates: the topic return rate is judged on its own (see
# ``Calibration.topic_return_scores``), as evidence that grows with every query, where a
# look-alike coordinate among fifteen would dilute it; so are the walk-away rate
# (``Calibration.walk_away_scores``) and the neighbourhood-probe rate (``Calibration.probe_scores``).
# The frame-thread pair (``framed_return_rate``, ``framed_share``) is the topic-return statistic
# of one recurring frame's queries (``Calibration.framed_return_scores``).
LOOKALIKE_SKIPS = (
    "topic_return_rate",
    "walk_away_rate",
    "neighbourhood_probe_rate",
    "framed_return_rate",
    "framed_share",
)
# Look-alike rule 2 (the default): repetition is not evidence. Re-sending a prompt, retrying it
# and editing it are what people do with a model. With every editing and re-sending account left
# out of calibration, 24 % of them were flagged as an unseen app under rule 1: their queries
# nearly duplicated earlier ones more often than any calibration account's, failed PRADA's
# normality test of nearest-neighbour distances (which near-duplicates fail) and built on the
# last turn (follow_up_similarity) more than any. Under rule 2 the three repetition features are
# not look-alike coordinates and the high side of follow_up_similarity counts as its benign
# median (issue 10's notes: unseen editing users 24 % -> 0.9 % flagged).
# The campaign layer keeps rule 1's evidence: a crowd of accounts re-sending and perturbing
# seeds together *is* suspicious where one editing user is not, and under rule 2's per-query
# score it lost its blended and k-center campaigns (67 % -> 0 % and 33 % -> 0 %). So a rule-2
# calibration carries a third distance, the campaign evidence: the spread channel with rule 1's
# coordinates, on its own out-of-sample benign scale (``evidence_norm``), which scores nothing
# per account.
REPETITION_FEATURES = ("near_duplicate_rate", "near_duplicate_rate_lifetime", "min_distance_normality")
HUMAN_SIDE_HIGH = ("follow_up_similarity",)
# The rule new calibrations are fitted with; files record theirs (absent: rule 1, as probewatch
# 0.9.0 and older wrote them).
LOOKALIKE_RULE = 2
_RANK_ONLY_MASK = np.array([0.0 if name in RANK_CHANNEL_SKIPS else 1.0 for name in FEATURE_NAMES])
_HUMAN_SIDE_HIGH = [FEATURE_NAMES.index(name) for name in HUMAN_SIDE_HIGH]


def lookalike_skips(rule: int) -> tuple[str, ...]:
    """Features that are not look-alike coordinates under look-alike rule ``rule``."""
    return LOOKALIKE_SKIPS + (REPETITION_FEATURES if rule >= 2 else ())


def _lookalike_mask(rule: int) -> np.ndarray:
    skips = lookalike_skips(rule)
    return np.array([0.0 if name in skips else 1.0 for name in FEATURE_NAMES])


_TOPIC_RETURN = FEATURE_NAMES.index("topic_return_rate")
_FRAMED_RETURN = FEATURE_NAMES.index("framed_return_rate")
_FRAMED_SHARE = FEATURE_NAMES.index("framed_share")
_RANK_OFFSET = 2.0 * np.arange(N_FEATURES) + 0.5  # feature j's rank keys lie in (2j, 2j + 1)
MAX_LOG10_ONE_IN = 300.0  # "1 in 1e300" is already past any meaning, and stays a finite float
# The topic-return statistic: how improbable an account's few returns to earlier subjects are for
# an account that returns as rarely as the benign TOPIC_RETURN_QUANTILE (of accounts with
# TOPIC_RETURN_MIN_QUERIES+ queries, at the end of their history).
TOPIC_RETURN_QUANTILE = 0.1
TOPIC_RETURN_MIN_QUERIES = 64
MIN_TOPIC_RETURN_ACCOUNTS = 20  # fewer long benign accounts cannot set the rate: the statistic stays off


# The walk-away statistic: how improbable an account's walk-away steps are for an account that
# steps as often as the benign WALK_AWAY_QUANTILE of accounts with WALK_AWAY_MIN_QUERIES+ queries,
# and never less often than WALK_AWAY_MIN_RATE (most benign accounts never step, so the quantile
# is often 0; the floor is the step rate a benign account is allowed without evidence).
WALK_AWAY_QUANTILE = 0.9
WALK_AWAY_MIN_QUERIES = 64
WALK_AWAY_MIN_RATE = 1.0 / 32
_WALK_AWAY = FEATURE_NAMES.index("walk_away_rate")


# The neighbourhood-probe statistic (``Calibration.probe_scores``), fitted the walk-away way: how
# improbable an account's neighbourhood probes are for an account that sends them as often as the
# benign PROBE_QUANTILE of accounts with PROBE_MIN_QUERIES+ queries, never less than PROBE_MIN_RATE.
PROBE_QUANTILE = 0.9
PROBE_MIN_QUERIES = 64
PROBE_MIN_RATE = 1.0 / 32
_PROBE = FEATURE_NAMES.index("neighbourhood_probe_rate")


def excess_count_evidence(features: np.ndarray, n: np.ndarray, p: float, column: int) -> np.ndarray:
    """-log10 P(Binomial(n - 1, p) >= k) per row, k the count behind the rate in feature
    ``column`` (the rate times n - 1); 0 before MIN_SCORED_QUERIES, at k = 0 and where the rate
    is undefined."""
    n = np.asarray(n, dtype=np.float64)
    rate = np.atleast_2d(features)[:, column]
    trials = np.maximum(n - 1.0, 0.0)
    steps = np.round(np.where(np.isnan(rate), 0.0, rate * trials)).astype(np.int64)
    tail = bdtrc(np.maximum(steps - 1, 0), trials.astype(np.int64), p)  # P(X > k - 1)
    evidence = -np.log10(np.clip(tail, 1e-300, 1.0))
    return np.where((n >= MIN_SCORED_QUERIES) & (steps > 0), evidence, 0.0)


def _count_statistic(
    fitted: tuple[float, float] | None, features: np.ndarray, n: np.ndarray, column: int
) -> np.ndarray:
    """A count statistic's scores (``excess_count_evidence`` times its weight), 0 while it is off
    (``fitted`` None) and, without a binomial tail to compute, where no row counted anything (most
    accounts never do, and a lone query pays per call)."""
    n = np.asarray(n, dtype=np.float64)
    if fitted is None or not (np.atleast_2d(features)[:, column] > 0.0).any():
        return np.zeros(n.shape)
    p, weight = fitted
    return weight * excess_count_evidence(features, n, p, column)


def _few_returns_evidence(rate: np.ndarray, queries: np.ndarray, p: float) -> np.ndarray:
    """-log10 P(Binomial(m - 1, p) <= k) per row: m ``queries`` made m - 1 comparisons with
    their past, k of them returns (``rate`` times m - 1); 0 below MIN_SCORED_QUERIES."""
    trials = np.maximum(queries - 1.0, 0.0)
    returns = np.round(rate * trials).astype(np.int64)
    evidence = -np.log10(np.maximum(bdtr(returns, trials.astype(np.int64), p), 1e-300))
    return np.where(queries >= MIN_SCORED_QUERIES, evidence, 0.0)


def topic_return_evidence(features: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """-log10 P(Binomial(n - 1, p) <= k) per row, k the row's returns to an earlier subject
    (``topic_return_rate`` times n - 1); 0 before MIN_SCORED_QUERIES and where the rate is
    undefined. Unweighted: see :meth:`Calibration.topic_return_scores`."""
    rate = np.atleast_2d(features)[:, _TOPIC_RETURN]
    return _few_returns_evidence(np.where(np.isnan(rate), 1.0, rate), np.asarray(n, dtype=np.float64), p)


def framed_return_evidence(features: np.ndarray, n: np.ndarray, p: float) -> np.ndarray:
    """:func:`topic_return_evidence` of each row's reported frame thread: its m queries (the
    ``framed_share`` of n) made m - 1 comparisons, k of them returns (``framed_return_rate``
    times m - 1); 0 where the thread has fewer than MIN_SCORED_QUERIES queries or there is none."""
    features = np.atleast_2d(features)
    share, rate = features[:, _FRAMED_SHARE], features[:, _FRAMED_RETURN]
    threaded = ~np.isnan(share) & ~np.isnan(rate)
    members = np.round(np.where(threaded, share, 0.0) * np.asarray(n, dtype=np.float64))
    return _few_returns_evidence(np.where(threaded, rate, 0.0), members, p)


def on_benign_scale(distances: np.ndarray, median: np.ndarray | float, q99: np.ndarray | float) -> np.ndarray:
    """Raw look-alike distances -> their place among out-of-sample benign distances of their
    bin, given the benign median and 99th percentile: 0 at the median, 2.33 at the 99th."""
    return Z_AT_Q99 * (distances - median) / np.maximum(q99 - median, 1e-9)


def combined_score(channel_scores: np.ndarray) -> np.ndarray:
    """(m, channels) scores on the benign scale -> a query's signed score: their mean (see CHANNELS)."""
    return channel_scores.mean(axis=1)


def bin_of(n: np.ndarray | int) -> np.ndarray | int:
    """History-length bin of ``n`` queries (an int for an int, an array for an array)."""
    if isinstance(n, (int, np.integer)):  # the per-query path: bisect beats NumPy call overhead
        return min(max(bisect.bisect_right(_BIN_EDGES_LIST, int(n)) - 1, 0), N_BINS - 1)
    return np.minimum(np.maximum(np.searchsorted(BIN_EDGES, n, side="right") - 1, 0), N_BINS - 1)


def _rows_per_bin(bins: np.ndarray) -> list[tuple[int, np.ndarray | slice]]:
    """(bin, rows in it) for each bin present; one slice when every row shares a bin (a lone
    query, one account's batch), which skips the grouping."""
    if bins.size == 0:
        return []
    first = int(bins[0])
    if bins.size == 1 or (bins == first).all():
        return [(first, slice(None))]
    return [(b, np.flatnonzero(bins == b)) for b in np.unique(bins).tolist()]


def nearest_k(d2: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Along the last axis of ``d2`` (overwritten): the indices of the ``k`` smallest values,
    smallest first (ties to the lower index), and the ``k``-th smallest value.

    ``k`` passes of argmin: for the five look-alikes among a few thousand benign rows, 4-5x
    faster than ``np.argpartition`` and 3x faster than ``np.partition`` (whose k-th values
    these equal exactly).
    """
    shape = d2.shape[:-1]
    work = d2.reshape(-1, d2.shape[-1])  # a view: the passes write into d2
    rows = np.arange(work.shape[0])
    nearest = np.empty((work.shape[0], k), dtype=np.int64)
    for j in range(k):
        nearest[:, j] = pick = work.argmin(axis=1)
        if j == k - 1:
            kth = work[rows, pick]
        else:
            work[rows, pick] = np.inf
    return nearest.reshape(*shape, k), kth.reshape(shape)


# Rows searched against a bin's benign rows per step: the (layers, rows, benign rows) distance
# block then stays in a core's cache (32 x 3 x 4,096 float32 = 1.5 MB). Whole 256-row batches
# made 12 MB blocks and ran 2x slower; one row's arithmetic does not depend on the others'.
SEARCH_CHUNK_ROWS = 32


def _chunks(rows: np.ndarray | slice, m: int, size: int = SEARCH_CHUNK_ROWS) -> list[np.ndarray | slice]:
    """``rows`` (an index array, or every one of ``m`` rows) in pieces of ``size``."""
    count = m if isinstance(rows, slice) else rows.size
    if count <= size:
        return [rows]
    if isinstance(rows, slice):
        return [slice(start, start + size) for start in range(0, m, size)]
    return [rows[start : start + size] for start in range(0, count, size)]


def nearest_populated_bins(populated: np.ndarray) -> np.ndarray:
    """For every bin, the populated bin that stands in for it: itself, else the nearest one,
    the shorter on a tie (a sparse long-history bin borrows from shorter accounts)."""
    populated = np.asarray(populated)
    return np.array([populated[np.argmin(np.abs(populated - b) + (populated > b) * 0.5)] for b in range(N_BINS)])


def rolling_mean_per_account(scores: np.ndarray, owner: np.ndarray, window: int = SMOOTHING_QUERIES) -> np.ndarray:
    """Mean of each query's last ``window`` scores within its account (rows of one account
    contiguous and in stream order), exactly as :meth:`Detector.judge` accumulates them."""
    out = np.empty(scores.shape[0])
    bounds = np.flatnonzero(np.diff(owner)) + 1
    for start, stop in zip(np.r_[0, bounds], np.r_[bounds, owner.size], strict=True):
        c = np.concatenate([[0.0], np.cumsum(scores[start:stop])])
        idx = np.arange(1, stop - start + 1)
        lo = np.maximum(idx - window, 0)
        out[start:stop] = (c[idx] - c[lo]) / (idx - lo)
    return out


class Neighbours(NamedTuple):
    """What the look-alike search found for feature rows (see :meth:`Calibration.neighbours`)."""

    distance: np.ndarray  # (m, channels) raw distance to the NEIGHBOURS-th nearest benign row
    channel_scores: np.ndarray  # (m, channels) those distances on the benign scale of the bin
    gap: np.ndarray  # (m, F) row minus its look-alikes' mean, in the top channel's scale
    nearest: np.ndarray  # (m, NEIGHBOURS) the top channel's look-alikes: rows of the bin's samples
    evidence: np.ndarray  # (m,) the campaign evidence (see Calibration.evidence_scores)


class Calibration:
    """Benign feature vectors per history bin, and the tail of benign lifetime-max scores.

    ``samples[b]`` holds benign feature vectors (rows) observed at history lengths in bin
    ``b``. In each channel (``CHANNELS``) the features are put on that channel's scale for
    the bin, and a query's raw distance is the distance to the ``NEIGHBOURS``-th nearest
    benign row: small when some benign accounts behaved alike, whatever kind of benign
    account that was (chat user, translation app, retry-heavy user ...).
    ``distance_norm[c, b]`` (median and 99th percentile of *out-of-sample* benign distances
    of channel ``c`` in bin ``b``) turns each raw distance into a score, so accounts of every
    length and both channels are on one scale; the query's score is their mean.
    Under look-alike rule 2 a third search, with rule 1's coordinates on its own scale
    (``evidence_norm``), gives the campaign layer its per-query evidence and scores nothing.
    """

    def __init__(
        self,
        samples: list[np.ndarray],
        account_max_scores: np.ndarray | None,
        off_reference_similarity: float,
        distance_norm: np.ndarray | None = None,
        source: str = "",
        n_accounts: int = 0,
        topic_return: tuple[float, float] | None = None,
        lookalike_rule: int = LOOKALIKE_RULE,
        evidence_norm: np.ndarray | None = None,
        walk_away: tuple[float, float] | None = None,
        neighbourhood_probe: tuple[float, float] | None = None,
        framed_returns: bool = True,
    ):
        if len(samples) != N_BINS:
            raise CalibrationError(f"calibration needs one sample table per bin ({N_BINS}); got {len(samples)}")
        self.samples = [np.asarray(s, dtype=np.float64).reshape(-1, N_FEATURES) for s in samples]
        self.off_reference_similarity = float(off_reference_similarity)
        # (channels, bins, 2): per channel and bin, median and 99th percentile of out-of-sample
        # benign distances; (bins, 2) is the spread channel alone
        self.distance_norm = None if distance_norm is None else np.asarray(distance_norm, dtype=np.float64)
        if self.distance_norm is not None and self.distance_norm.ndim == 2:
            self.distance_norm = self.distance_norm[None]
        self.source = source
        self.n_accounts = int(n_accounts)
        # (benign return rate p, weight onto the look-alike score's scale), or None: statistic off
        self.topic_return = None if topic_return is None else (float(topic_return[0]), float(topic_return[1]))
        # (benign walk-away rate p, weight), or None: statistic off
        self.walk_away = None if walk_away is None else (float(walk_away[0]), float(walk_away[1]))
        # (benign neighbourhood-probe rate p, weight), or None: statistic off
        self.neighbourhood_probe = (
            None if neighbourhood_probe is None else (float(neighbourhood_probe[0]), float(neighbourhood_probe[1]))
        )
        # whether frame threads count (calibrations fitted before they existed set their
        # threshold without them: off there, see from_arrays)
        self.framed_returns = bool(framed_returns)
        if lookalike_rule not in (1, 2):
            raise CalibrationError(f"look-alike rule must be 1 or 2; got {lookalike_rule!r}. Rebuild the calibration")
        self.lookalike_rule = int(lookalike_rule)
        if self.lookalike_rule >= 2 and self.distance_norm is not None and self.distance_norm.shape[0] < len(CHANNELS):
            raise CalibrationError(
                f"look-alike rule 2 scores with every channel ({', '.join(CHANNELS)}); this calibration has "
                f"{self.distance_norm.shape[0]}. Rebuild the calibration"
            )
        self._human_side_high = _HUMAN_SIDE_HIGH if self.lookalike_rule >= 2 else []
        # (bins, 2): median and 99th percentile of out-of-sample benign campaign-evidence
        # distances; None where the evidence is the spread channel's score (rule 1)
        self.evidence_norm = None
        if evidence_norm is not None and self.lookalike_rule >= 2:
            self.evidence_norm = np.asarray(evidence_norm, dtype=np.float64).reshape(N_BINS, 2)
        self._build_tables()
        if account_max_scores is not None:  # None only while calibration cross-fits its folds
            self.set_account_max_scores(account_max_scores)

    # -- per-bin tables ------------------------------------------------------------------
    def _build_tables(self) -> None:
        populated = np.flatnonzero([s.shape[0] >= MIN_BIN_SAMPLES for s in self.samples])
        if populated.size == 0:
            raise CalibrationError(
                f"calibration needs at least {MIN_BIN_SAMPLES} benign queries in some history-length bin; got "
                f"{[s.shape[0] for s in self.samples]} per bin. Calibrate with more benign traffic"
            )
        # Bins with too little benign data borrow the nearest populated bin (shorter first).
        self.donor_bin = nearest_populated_bins(populated)
        pooled = np.concatenate([self.samples[b] for b in populated])
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (feature not defined yet)
            pooled_std = np.nan_to_num(np.nanstd(pooled, axis=0), nan=1.0)
            # A feature no benign row has (a calibration made before the feature existed) cannot
            # tell benign from not: it is left out of every distance.
            self.known = (~np.isnan(pooled).all(axis=0)).astype(np.float64)
            lookalike = _lookalike_mask(self.lookalike_rule)
            self._spread_mask = self.known * lookalike
            self._rank_mask = self.known * _RANK_ONLY_MASK * lookalike
            # the campaign evidence's coordinates: rule 1's spread channel (see LOOKALIKE_RULE)
            self._evidence_mask = self.known * _lookalike_mask(1)
            self._separate_evidence = self.lookalike_rule >= 2
            self.median = np.zeros((N_BINS, N_FEATURES))
            self.scale = np.ones((N_BINS, N_FEATURES))
            # per bin: the benign rows in each channel's scale, stored (layers, F, rows), and their
            # squared norms. Feature-major rows make the look-alike product a plain sgemm per
            # layer: 3x faster than multiplying by the transposed view, and the same arithmetic
            # for a lone query as for calibration's thousands (the view's took another BLAS kernel
            # for one row, a last bit apart).
            self._tables: list[np.ndarray | None] = [None] * N_BINS
            self._tables_sq: list[np.ndarray | None] = [None] * N_BINS
            self._sorted: list[list[np.ndarray] | None] = [None] * N_BINS
            # rank channel: every feature's sorted benign values as keys in one array (see _rank_keys)
            self._rank_keys: list[np.ndarray | None] = [None] * N_BINS
            self._rank_start = np.zeros((N_BINS, N_FEATURES), dtype=np.int64)
            self._rank_count = np.zeros((N_BINS, N_FEATURES), dtype=np.int64)
            # per bin: the quantile bounds and where the channel has no value (lone-query arithmetic, precomputed)
            self._rank_lo = np.full((N_BINS, N_FEATURES), 0.5)
            self._rank_hi = np.full((N_BINS, N_FEATURES), 0.5)
            self._rank_empty = np.ones((N_BINS, N_FEATURES), dtype=bool)
            for b in populated:
                rows = self.samples[b]
                q1, med, q3 = np.nanquantile(rows, [0.25, 0.5, 0.75], axis=0)
                med = np.nan_to_num(med)
                self.median[b] = med
                # Interquartile spread: the bulk of benign traffic sets the unit, not the gaps
                # between benign kinds. The pooled standard deviation floors it, so a feature
                # benign accounts hold constant in one bin (no near-duplicates) cannot make
                # every change infinite.
                self.scale[b] = np.maximum(
                    np.nan_to_num((q3 - q1) / IQR_PER_SIGMA), np.maximum(0.25 * pooled_std, 1e-9)
                )
                # Sorted non-NaN benign values per feature: a percentile is one binary search.
                self._sorted[b] = [np.sort(col[~np.isnan(col)]) for col in rows.T]
                counts = np.array([col.size for col in self._sorted[b]])
                self._rank_count[b] = counts
                with np.errstate(divide="ignore"):
                    self._rank_lo[b], self._rank_hi[b] = 0.5 / counts, 1.0 - 0.5 / counts
                self._rank_empty[b] = counts == 0
                self._rank_start[b] = np.concatenate([[0], np.cumsum(counts)[:-1]])
                self._rank_keys[b] = np.concatenate(
                    [self._rank_key(col[None, :].T, b, j).ravel() for j, col in enumerate(self._sorted[b])]
                )
                # (layers, rows, F): each channel, then the campaign evidence where it is separate
                tables = self._points(rows, b, len(CHANNELS), evidence=self._separate_evidence)
                self._tables[b] = np.ascontiguousarray(tables.transpose(0, 2, 1))
                self._tables_sq[b] = (tables.astype(np.float64) ** 2).sum(axis=2).astype(np.float32)

    @property
    def n_channels(self) -> int:
        """Channels this calibration scores with: both, or "spread" alone for a calibration
        saved before the rank channel existed (its thresholds were set by that score)."""
        return len(CHANNELS) if self.distance_norm is None else self.distance_norm.shape[0]

    def _spreads(self, features: np.ndarray, b: int) -> np.ndarray:
        """Rows of ``features`` in benign spreads for bin ``b`` (float64); a NaN feature (too
        little data yet) sits at the benign median."""
        scaled = (features - self.median[b]) / self.scale[b]
        # np.where rather than nan_to_num, which costs 4x more on a lone query's row
        return np.where(np.isnan(scaled), 0.0, scaled)

    def _evidence_point(self, features: np.ndarray, b: int) -> np.ndarray:
        """Rows of ``features`` in the campaign evidence's scale for bin ``b`` (rule 1's spread
        channel: every look-alike coordinate of rule 1, no side clipped)."""
        return (self._spreads(features, b) * self._evidence_mask).astype(np.float32)

    def _rank_key(self, values: np.ndarray, b: int, j: int | slice = slice(None)) -> np.ndarray:
        """Feature ``j``'s values mapped, in order, into (2j, 2j + 1): every feature's benign
        values fit in one sorted array, and one binary search ranks a whole row."""
        return _RANK_OFFSET[j] + np.arctan((values - self.median[b][j]) / self.scale[b][j]) / np.pi

    def _normal_scores(self, features: np.ndarray, b: int) -> np.ndarray:
        """Each feature's mid-rank among bin ``b``'s benign values, as a standard normal
        quantile (0 at the benign median; at most about 3.5 at the benign extreme of 4,096
        rows); 0 for NaN and for a feature the bin has no benign value of."""
        keys = self._rank_key(features, b)
        table = self._rank_keys[b]
        mid_rank = (table.searchsorted(keys, side="left") + table.searchsorted(keys, side="right")) / 2.0
        with np.errstate(invalid="ignore", divide="ignore"):
            share = (mid_rank - self._rank_start[b]) / self._rank_count[b]
            z = ndtri(np.minimum(np.maximum(share, self._rank_lo[b]), self._rank_hi[b]))
        return np.where(np.isnan(features) | self._rank_empty[b], 0.0, z)

    def neighbours(self, features: np.ndarray, n: np.ndarray) -> Neighbours:
        """Per row, its nearest benign look-alikes in its bin, in every channel; the gap and the
        look-alikes reported are those of the channel that scores the row highest."""
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        n = np.atleast_1d(np.asarray(n))
        bins = self._donor_bins(n)
        m, channels = features.shape[0], self.n_channels
        distance = np.empty((m, channels))
        gap = np.empty((m, N_FEATURES), dtype=np.float32)
        nearest_of = np.empty((m, NEIGHBOURS), dtype=np.int64)
        scores = np.empty((m, channels))
        evidence = np.empty(m) if self._separate_evidence else None
        for b, rows in ((b, part) for b, group in _rows_per_bin(bins) for part in _chunks(group, m)):
            points = self._points(features[rows], b, channels, evidence=evidence is not None)  # (layers, r, F)
            d2 = self._squared_distances(points, b)
            k = min(NEIGHBOURS, d2.shape[2])
            nearest, kth = nearest_k(d2, k)  # (layers, r, k), (layers, r)
            d = np.sqrt(np.maximum(kth, 0.0))
            if evidence is not None:  # its k-th distance only: no look-alikes to report
                evidence[rows] = self._evidence_scale(d[channels], b)
                d, nearest = d[:channels], nearest[:channels]
            r = np.arange(points.shape[1])
            distance[rows] = d.T
            scores[rows] = s = self._channel_scale(d.T, b)
            # the gap and look-alikes reported are the top channel's, computed for it alone
            top = s.argmax(axis=1) if channels > 1 else np.zeros(r.size, dtype=np.int64)
            pick = nearest[top, r]  # (r, k)
            gap[rows] = points[top, r] - self._tables[b][top[:, None], :, pick].sum(axis=1) / k
            nearest_of[rows] = pick[:, np.minimum(np.arange(NEIGHBOURS), k - 1)]  # a tiny bin repeats
        return Neighbours(distance, scores, gap, nearest_of, scores[:, 0] if evidence is None else evidence)

    def _points(self, features: np.ndarray, b: int, channels: int, evidence: bool = False) -> np.ndarray:
        """(layers, r, F) float32: the rows in each channel's scale (spread, then rank), then
        (``evidence``) in the campaign evidence's; an unknown feature is left out of each."""
        out = np.empty((channels + evidence, features.shape[0], N_FEATURES), dtype=np.float32)
        spreads = self._spreads(features, b)
        if evidence:
            out[channels] = spreads * self._evidence_mask
        if self._human_side_high:  # the side people are on counts as the benign median
            features = features.copy()
            for j in self._human_side_high:
                features[:, j] = np.minimum(features[:, j], self.median[b, j])  # NaN stays NaN
                spreads[:, j] = np.minimum(spreads[:, j], 0.0)  # the same clip, in spreads
        out[0] = spreads * self._spread_mask
        if channels > 1:
            out[1] = self._normal_scores(features, b) * self._rank_mask
        return out

    def _squared_distances(self, points: np.ndarray, b: int, first: int = 0) -> np.ndarray:
        """(layers, r, rows) squared distances from ``points`` to bin ``b``'s benign rows in
        each layer: one batched matrix product, the same arithmetic for one query and for
        calibration's thousands (the same bits where the BLAS sums a row alike whatever the
        row count: OpenBLAS's AVX-512 kernels do, its AVX2 kernels differ in the last bit).
        ``points`` holds the tables' layers from ``first`` on (channels first, then the
        campaign evidence)."""
        layers = slice(first, first + points.shape[0])
        d2 = (points * points).sum(axis=2)[:, :, None] + self._tables_sq[b][layers, None, :]
        product = np.matmul(points, self._tables[b][layers])
        product *= 2.0  # in place: the same values as d2 - 2.0 * product, two temporaries fewer
        d2 -= product
        return d2

    def _kth_distances(self, features: np.ndarray, n: np.ndarray, chunk: int, evidence: bool) -> np.ndarray:
        """(m, layers) raw distance of each row to its NEIGHBOURS-th nearest benign row of its
        bin: in every channel, or (``evidence``) in the campaign evidence alone."""
        features = np.atleast_2d(features)
        bins = self.donor_bin[bin_of(np.atleast_1d(np.asarray(n)))]
        m, first = features.shape[0], self.n_channels if evidence else 0
        out = np.empty((m, 1 if evidence else self.n_channels))
        for b, rows in ((b, part) for b, group in _rows_per_bin(bins) for part in _chunks(group, m, chunk)):
            if evidence:
                points = self._evidence_point(features[rows], b)[None]
            else:
                points = self._points(features[rows], b, self.n_channels)
            d2 = self._squared_distances(points, b, first)
            out[rows] = np.sqrt(np.maximum(nearest_k(d2, min(NEIGHBOURS, d2.shape[2]))[1], 0.0)).T
        return out

    def raw_distances(self, features: np.ndarray, n: np.ndarray, chunk: int = SEARCH_CHUNK_ROWS) -> np.ndarray:
        """Vectorised raw kNN distances for many queries, every channel (m, channels; used by calibration)."""
        return self._kth_distances(features, n, chunk, evidence=False)

    def raw_evidence_distances(self, features: np.ndarray, n: np.ndarray, chunk: int = SEARCH_CHUNK_ROWS) -> np.ndarray:
        """(m,) raw campaign-evidence distances for many queries (used by calibration); the
        spread channel's under rule 1, where the two are one."""
        return self._kth_distances(features, n, chunk, evidence=self._separate_evidence)[:, 0]

    def evidence_scores(self, distances: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Raw campaign-evidence distances (m,) -> their position on the benign scale of the bin,
        as :meth:`channel_scores` places a channel's. The campaign layer pools this signed
        per-query score; under rule 1 it is the spread channel's score. A rule-2 calibration
        without its own evidence scale (made by hand, or during cross-fitting) uses the spread
        channel's."""
        d = np.asarray(distances, dtype=np.float64).ravel()
        norm = self._evidence_norm_in_use()
        if norm is None:
            return d
        norm = norm[self.donor_bin[bin_of(np.asarray(n))]]  # (m, 2)
        return on_benign_scale(d, norm[:, 0], norm[:, 1])

    def _evidence_norm_in_use(self) -> np.ndarray | None:
        if self.evidence_norm is not None:
            return self.evidence_norm
        return None if self.distance_norm is None else self.distance_norm[0]

    def _evidence_scale(self, distances: np.ndarray, b: int) -> np.ndarray:
        """:meth:`evidence_scores` for rows of (donor) bin ``b``: what a lone query pays per call."""
        norm = self._evidence_norm_in_use()
        if norm is None:
            return distances
        return on_benign_scale(distances, *norm[b])

    def _channel_scale(self, distances: np.ndarray, b: int) -> np.ndarray:
        """:meth:`channel_scores` for rows (m, channels) all of (donor) bin ``b``."""
        if self.distance_norm is None:
            return distances
        norm = self.distance_norm[: distances.shape[1], b]  # (channels, 2)
        return on_benign_scale(distances, norm[:, 0], norm[:, 1])

    def _donor_bins(self, n: np.ndarray) -> np.ndarray:
        """Donor bin per history length in ``n`` (1-D); a lone row takes the scalar path."""
        if n.size == 1:
            return self.donor_bin[[bin_of(int(n[0]))]]
        return self.donor_bin[bin_of(n)]

    def channel_scores(self, distances: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Raw distances (m, channels) -> each channel's position on the benign scale of the
        bin (0 = the benign median, 2.33 = benign 99th percentile), negative below the median."""
        d = np.asarray(distances, dtype=np.float64).reshape(len(np.atleast_1d(n)), -1)
        if self.distance_norm is None:
            return d
        norm = self.distance_norm[: d.shape[1], self.donor_bin[bin_of(np.asarray(n))]]  # (channels, m, 2)
        med, q99 = norm[..., 0].T, norm[..., 1].T
        return on_benign_scale(d, med, q99)

    def signed_scores(self, distances: np.ndarray, n: np.ndarray) -> np.ndarray:
        """A query's signed score: the mean of its channels' (:meth:`channel_scores`)."""
        return combined_score(self.channel_scores(distances, n))

    def standardise(self, distances: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Per-query score: :meth:`signed_scores` floored at 0 (as typical as the benign
        median or more), and 0 before MIN_SCORED_QUERIES."""
        n = np.asarray(n)
        return np.where(n >= MIN_SCORED_QUERIES, np.maximum(self.signed_scores(distances, n), 0.0), 0.0)

    def topic_return_scores(self, features: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Per row, the topic-return statistic on the look-alike score's scale (0 while off).

        After n queries an account has made n - 1 comparisons with its past, k of which returned
        to an earlier subject. The statistic is -log10 P(Binomial(n - 1, p) <= k), with p the
        return rate that only TOPIC_RETURN_QUANTILE of long benign accounts fall below: a person
        comes back to what they asked before, so k grows with n, while an extraction script that
        draws its queries independently (random or corpus text, coverage-maximising selection,
        one wrapper around unrelated questions) keeps k near 0, and the evidence against it grows
        with every query. Times the weight that puts it on the look-alike score's scale."""
        n = np.asarray(n, dtype=np.float64)
        if self.topic_return is None:
            return np.zeros(n.shape)
        p, weight = self.topic_return
        return weight * topic_return_evidence(features, n, p)

    def framed_return_scores(self, features: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Per row, the topic-return statistic of the account's reported frame thread (the queries
        under one frame the account took up after it started; see ``prompt_memory.FRAME_THREADS``),
        with the account statistic's rate and weight: the thread is judged as an account of its
        own would be. 0 while off, and without a thread."""
        n = np.asarray(n, dtype=np.float64)
        if self.topic_return is None or not self.framed_returns:
            return np.zeros(n.shape)
        if not (np.atleast_2d(features)[:, _FRAMED_SHARE] > 0.0).any():  # most rows: no thread
            return np.zeros(n.shape)
        p, weight = self.topic_return
        return weight * framed_return_evidence(features, n, p)

    def walk_away_scores(self, features: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Per row, the walk-away statistic on the look-alike score's scale (0 while off).

        Of an account's n - 1 queries after its first, k were walk-away steps (a small edit of an
        earlier query, far from where its chain of edits began). The statistic is
        -log10 P(Binomial(n - 1, p) >= k), with p the step rate that only 1 - WALK_AWAY_QUANTILE of
        long benign accounts exceed: an augmentation attack (perturbation chains around seeds) keeps
        stepping, and the evidence grows with every step, while an editing user's few steps do not
        add up. Times the calibration's weight (1 as fitted: see ``_fit_walk_away``)."""
        return _count_statistic(self.walk_away, features, n, _WALK_AWAY)

    def probe_scores(self, features: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Per row, the neighbourhood-probe statistic on the look-alike score's scale (0 while off).

        Of an account's n - 1 queries after its first, k were neighbourhood probes (small word-level
        edits of three or more of its last 16 prompts, or variants of a seed those prompts share
        that was never sent; see probewatch.detect.probes). The statistic
        is -log10 P(Binomial(n - 1, p) >= k), p the probe rate that only 1 - PROBE_QUANTILE of long
        benign accounts exceed (at least PROBE_MIN_RATE): an explainer or boundary search keeps
        sampling around its seeds, while a person's edits build on their last version and rarely
        touch three earlier prompts at once. Times the calibration's weight (1 as fitted)."""
        return _count_statistic(self.neighbourhood_probe, features, n, _PROBE)

    def own_statistic_parts(
        self, features: np.ndarray, n: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """(topic return, frame thread's topic return, walk-away, neighbourhood probe) scores per
        row: the statistics judged on their own, beside the look-alike score, each apart (a
        verdict's reasons name the one that leads)."""
        return (
            self.topic_return_scores(features, n),
            self.framed_return_scores(features, n),
            self.walk_away_scores(features, n),
            self.probe_scores(features, n),
        )

    def own_statistic_scores(self, features: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(topic return, walk-away, neighbourhood probe) scores per row (``own_statistic_parts``),
        the topic-return score the higher of the account's and its frame thread's. An account's
        score is the largest of them and the look-alike score; the flag threshold is fitted
        (``fitting._cross_fitted``) and queries are scored (``Detector.judge_with_evidence``) on
        these same statistics."""
        topic, framed, walk, probe = self.own_statistic_parts(features, n)
        return np.maximum(topic, framed), walk, probe

    def deviations(self, features: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Signed marginal deviation per feature from the benign median, in benign spreads."""
        features = np.atleast_2d(features)
        b = self.donor_bin[bin_of(np.atleast_1d(n))]
        return (features - self.median[b]) / self.scale[b]

    def percentiles(self, features: np.ndarray, n: np.ndarray, feature_index: np.ndarray) -> np.ndarray:
        """``percentile`` for many (row, feature) pairs at once: ``feature_index`` is (m, r)
        feature numbers for rows of ``features`` (m, F) at history lengths ``n`` (m,)."""
        feature_index = np.asarray(feature_index)
        values = np.take_along_axis(features, feature_index, axis=1)
        rows_n = np.repeat(np.asarray(n), feature_index.shape[1])
        return self.percentiles_of(values.ravel(), rows_n, feature_index.ravel()).reshape(values.shape)

    def percentiles_of(self, values: np.ndarray, n: np.ndarray, feature_index: np.ndarray) -> np.ndarray:
        """``percentile`` for flat arrays of values, history lengths and feature numbers."""
        values = np.asarray(values, dtype=np.float64)
        if values.size <= 16:  # a few reasons of a lone query: per-value binary searches beat grouping
            out = np.full(values.shape, np.nan)
            donor = self.donor_bin
            for i, (count, j, v) in enumerate(
                zip(np.asarray(n).tolist(), np.asarray(feature_index).tolist(), values.tolist(), strict=True)
            ):
                out[i] = self._percentile_in_bin(int(donor[bin_of(count)]), j, v)
            return out
        bins = self.donor_bin[bin_of(np.asarray(n))]
        out = np.full(values.shape, np.nan)
        key = bins * N_FEATURES + feature_index
        for k in np.unique(key).tolist():
            at = np.flatnonzero(key == k)
            col = self._sorted[k // N_FEATURES][k % N_FEATURES]
            if col.size:
                v = values[at]
                out[at] = np.where(np.isnan(v), np.nan, 100.0 * np.searchsorted(col, v, side="right") / col.size)
        return out

    def percentile(self, feature_index: int, value: float, n: int) -> float:
        """Share (%) of benign values of the feature at ``n`` queries' bin at or below ``value``."""
        return self._percentile_in_bin(int(self.donor_bin[int(bin_of(n))]), feature_index, value)

    def _percentile_in_bin(self, b: int, feature_index: int, value: float) -> float:
        col = self._sorted[b][feature_index]
        if col.size == 0 or math.isnan(value):
            return math.nan
        return 100.0 * float(col.searchsorted(value, side="right")) / col.size

    # -- score -> risk ---------------------------------------------------------------
    def set_account_max_scores(self, maxima: np.ndarray) -> None:
        m = np.sort(np.asarray(maxima, dtype=np.float64))
        m = m[np.isfinite(m)]
        if m.size < 10:
            raise CalibrationError(
                f"calibration needs lifetime scores of at least 10 benign accounts with {MIN_SCORED_QUERIES}+ queries; "
                f"got {m.size}. Calibrate with more (or longer) benign accounts"
            )
        self.account_max_scores = m
        self.tail_start = float(np.quantile(m, 1.0 - TAIL_FRACTION))
        excess = m[m > self.tail_start] - self.tail_start
        self.tail_scale = max(float(excess.mean()) if excess.size else 0.0, 0.05)

    def exceedance(self, score: float | np.ndarray) -> np.ndarray:
        """Estimated share of benign accounts whose lifetime maximum reaches ``score``."""
        s = np.asarray(score, dtype=np.float64)
        m = self.account_max_scores
        empirical = 1.0 - np.searchsorted(m, s, side="left") / m.size
        tail = TAIL_FRACTION * np.exp(-(s - self.tail_start) / self.tail_scale)
        return np.clip(np.where(s > self.tail_start, tail, empirical), 0.0, 1.0)

    def log10_one_in(self, score: float | np.ndarray) -> np.ndarray:
        """log10 of N in "1 in N benign accounts ever score this high": ``-log10(exceedance)``
        computed in log space, so it keeps growing with the score where ``exceedance`` (and
        ``1 - risk``) underflow. Inside the calibrated range N is at most the number of
        benign accounts, beyond it the exponential tail extrapolates."""
        s = np.asarray(score, dtype=np.float64)
        m = self.account_max_scores
        empirical = np.maximum(1.0 - np.searchsorted(m, s, side="left") / m.size, 1.0 / m.size)
        tail = -math.log10(TAIL_FRACTION) + (s - self.tail_start) / (self.tail_scale * math.log(10.0))
        return np.minimum(np.where(s > self.tail_start, tail, -np.log10(empirical)), MAX_LOG10_ONE_IN)

    def threshold_for(self, fpr: float) -> float:
        """Score at which the estimated benign lifetime exceedance equals ``fpr``."""
        if fpr >= TAIL_FRACTION:
            return float(np.quantile(self.account_max_scores, 1.0 - fpr))
        return self.tail_start + self.tail_scale * math.log(TAIL_FRACTION / fpr)

    # -- snapshots --------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        out = {f"cal_bin_{b}": s.astype(np.float32) for b, s in enumerate(self.samples)}
        out["cal_account_max_scores"] = self.account_max_scores
        out["cal_off_reference_similarity"] = np.float64(self.off_reference_similarity)
        norm = self.distance_norm
        out["cal_distance_norm"] = norm[0] if norm is not None else np.zeros((0, 2))
        if norm is not None and norm.shape[0] > 1:
            out["cal_rank_distance_norm"] = norm[1]  # absent from calibrations older than the rank channel
        if self.topic_return is not None:
            out["cal_topic_return"] = np.array(self.topic_return)  # absent from older calibrations: off
        if self.walk_away is not None:
            out["cal_walk_away"] = np.array(self.walk_away)  # absent from older calibrations: off
        if self.neighbourhood_probe is not None:  # absent from calibrations before 0.13.0: off
            out["cal_neighbourhood_probe"] = np.array(self.neighbourhood_probe)
        out["cal_lookalike_rule"] = np.int64(self.lookalike_rule)  # absent from older calibrations: rule 1
        if self.evidence_norm is not None:
            out["cal_evidence_distance_norm"] = self.evidence_norm  # rule 2's campaign evidence scale
        return out

    def meta(self) -> dict[str, Any]:
        return {"source": self.source, "n_accounts": self.n_accounts, "features": list(FEATURE_NAMES)}

    @classmethod
    def from_arrays(cls, arrays, meta: dict[str, Any]) -> Calibration:
        stored = list(meta.get("features", []))
        if not stored or not set(stored) <= set(FEATURE_NAMES):
            raise CalibrationError(
                f"calibration was made for features {meta.get('features')} but this probewatch computes "
                f"{list(FEATURE_NAMES)}; recalibrate with this version"
            )
        # A calibration from before a feature existed loads with that feature unknown (NaN):
        # judged on the features it has, until it is rebuilt.
        columns = [stored.index(name) if name in stored else -1 for name in FEATURE_NAMES]
        samples = []
        for b in range(N_BINS):
            old = np.asarray(arrays[f"cal_bin_{b}"], dtype=np.float64).reshape(-1, len(stored))
            new = np.full((old.shape[0], N_FEATURES), np.nan)
            for j, c in enumerate(columns):
                if c >= 0:
                    new[:, j] = old[:, c]
            samples.append(new)
        norms = [np.asarray(arrays["cal_distance_norm"], dtype=np.float64)]
        if "cal_rank_distance_norm" in arrays:
            norms.append(np.asarray(arrays["cal_rank_distance_norm"], dtype=np.float64))
        for norm in norms:
            if norm.shape != (N_BINS, 2):
                raise CalibrationError(f"calibration distance tables must have shape ({N_BINS}, 2); got {norm.shape}")
        norm = np.stack(norms)
        topic_return = _rate_and_weight(arrays, "cal_topic_return", "topic-return")
        walk_away = _rate_and_weight(arrays, "cal_walk_away", "walk-away")
        probe = _rate_and_weight(arrays, "cal_neighbourhood_probe", "neighbourhood-probe")
        framed = "framed_return_rate" in stored  # its threshold was fitted with frame threads
        rule = int(np.asarray(arrays["cal_lookalike_rule"])) if "cal_lookalike_rule" in arrays else 1
        evidence_norm = None
        if "cal_evidence_distance_norm" in arrays:
            evidence_norm = np.asarray(arrays["cal_evidence_distance_norm"], dtype=np.float64)
            if evidence_norm.shape != (N_BINS, 2) or not np.isfinite(evidence_norm).all():
                raise CalibrationError(
                    f"calibration campaign-evidence scale must be finite with shape ({N_BINS}, 2); got shape "
                    f"{evidence_norm.shape}. Rebuild the calibration"
                )
        return cls(
            samples,
            np.asarray(arrays["cal_account_max_scores"]),
            float(arrays["cal_off_reference_similarity"]),
            distance_norm=norm,
            source=meta.get("source", ""),
            n_accounts=meta.get("n_accounts", 0),
            topic_return=topic_return,
            lookalike_rule=rule,
            evidence_norm=evidence_norm,
            walk_away=walk_away,
            neighbourhood_probe=probe,
            framed_returns=framed,
        )


def _rate_and_weight(arrays, key: str, name: str) -> tuple[float, float] | None:
    """A statistic's (benign rate, weight) from a calibration file; None where the file has
    none (made before the statistic existed: it stays off)."""
    if key not in arrays:
        return None
    values = np.asarray(arrays[key], dtype=np.float64)
    if values.shape != (2,) or not (0.0 < values[0] < 1.0 and values[1] > 0.0):
        raise CalibrationError(
            f"calibration {name} parameters must be (rate in (0, 1), weight > 0); got "
            f"{values.tolist()}. Rebuild the calibration"
        )
    return float(values[0]), float(values[1])


class BenignModel(NamedTuple):
    """What benign traffic looks like: the reference (bank, codebook, bandwidth), the
    calibration tables fitted with it, and the benign group tables of the campaign layer.
    A calibration file holds exactly this."""

    reference: BenignReference
    calibration: Calibration
    groups: GroupCalibration | None = None  # benign groups, for the campaign layer


class Detector:
    """Applies a :class:`Calibration`: scores, risks, levels and reasons for feature rows."""

    def __init__(self, calibration: Calibration, target_fpr: float, watch_fpr: float, n_reasons: int = 3):
        self.calibration = calibration
        self.target_fpr = target_fpr
        self.watch_fpr = watch_fpr
        self.n_reasons = n_reasons
        self.flag_threshold = calibration.threshold_for(target_fpr)
        self.watch_threshold = calibration.threshold_for(watch_fpr)

    def judge(
        self, features: np.ndarray, n: np.ndarray, recent_scores: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[Reason, ...]]]:
        """(scores, risks, reasons) for feature rows at history lengths ``n``, in order.

        ``recent_scores[i]`` is row i's account ring of per-query scores (SMOOTHING_QUERIES
        long); each row's per-query score is written into it in order (rows of one account
        share a ring) and the account score is the mean of the ring.
        """
        scores, risks, reasons, _ = self.judge_with_evidence(features, n, recent_scores)
        return scores, risks, reasons

    def judge_with_evidence(
        self, features: np.ndarray, n: np.ndarray, recent_scores: list[np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, list[tuple[Reason, ...]], np.ndarray]:
        """:meth:`judge` plus each row's signed campaign evidence (the campaign layer pools it;
        see :meth:`Calibration.evidence_scores`)."""
        cal = self.calibration
        n = np.asarray(n, dtype=np.int64)
        found = cal.neighbours(features, n)
        gap = found.gap
        signed = combined_score(found.channel_scores)
        per_query = np.where(n >= MIN_SCORED_QUERIES, np.maximum(signed, 0.0), 0.0).tolist()
        lookalike = np.empty(n.shape[0])
        for i, (ring, count) in enumerate(zip(recent_scores, n.tolist(), strict=True)):
            ring[(count - 1) % ring.size] = per_query[i]
            filled = min(count, ring.size)
            lookalike[i] = ring[:filled].sum() / filled  # what .mean() computes, without its overhead
        features = np.atleast_2d(features)
        topic, framed, walk, probe = cal.own_statistic_parts(features, n)
        own = np.maximum.reduce([topic, framed, walk, probe])  # the statistics judged on their own
        scores = np.maximum(lookalike, own)
        risks = 1.0 - cal.exceedance(scores)
        reasons = self._reasons(features, gap, n)
        for i in np.flatnonzero(own > lookalike).tolist():
            # the strongest statistic leads (max keeps the first of equals: walk-away, probes,
            # topic return, the frame thread's)
            feature, direction, strength = max(
                (
                    (_WALK_AWAY, "above", walk[i]),
                    (_PROBE, "above", probe[i]),
                    (_TOPIC_RETURN, "below", topic[i]),
                    (_FRAMED_RETURN, "below", framed[i]),
                ),
                key=lambda lead: lead[2],
            )
            lead = self._own_statistic_reason(feature, direction, features[i], int(n[i]), float(strength))
            reasons[i] = (lead, *reasons[i])[: self.n_reasons]
        # The campaign layer pools spread-channel evidence: the rank channel says little about
        # light accounts (most features are undefined before 16 queries) and would dilute it.
        return scores, risks, reasons, found.evidence

    def _own_statistic_reason(self, feature: int, direction: str, row: np.ndarray, n: int, strength: float) -> Reason:
        """The reason an account's score is a statistic judged on its own (topic return, walk-away,
        neighbourhood probes)."""
        value = float(row[feature])
        return Reason(
            feature=FEATURE_NAMES[feature],
            value=value,
            benign_percentile=self.calibration.percentile(feature, value, n),
            direction=direction,
            deviation=strength,
            description=FEATURES[FEATURE_NAMES[feature]],
        )

    def level_for(self, score: float) -> Level:
        return Level.for_score(score, self.flag_threshold, self.watch_threshold)

    def _reasons(self, features: np.ndarray, gap: np.ndarray, n: np.ndarray) -> list[tuple[Reason, ...]]:
        """Per row, the features that most separate it from its nearest benign look-alikes."""
        strength = np.where(np.isfinite(features), np.abs(gap), 0.0)
        order = np.argsort(-strength, axis=1, kind="stable")[:, : self.n_reasons]
        # Strengths fall along each row, so the kept reasons are a prefix of it.
        rows, ranks = np.nonzero(strength[np.arange(strength.shape[0])[:, None], order] > REASON_MIN_GAP)
        which = order[rows, ranks]
        kept = zip(
            rows.tolist(),
            which.tolist(),
            strength[rows, which].tolist(),
            features[rows, which].tolist(),
            (gap[rows, which] > 0).tolist(),
            self.calibration.percentiles_of(features[rows, which], n[rows], which).tolist(),
            strict=True,
        )
        out: list[list[Reason]] = [[] for _ in range(features.shape[0])]
        for i, j, size, value, above, pct in kept:
            out[i].append(
                Reason(
                    feature=FEATURE_NAMES[j],
                    value=value,
                    benign_percentile=pct if pct == pct else math.nan,  # one NaN object, as percentile()
                    direction="above" if above else "below",
                    deviation=size,
                    description=FEATURES[FEATURE_NAMES[j]],
                )
            )
        return [tuple(reasons) for reasons in out]
