"""From features to a calibrated risk, a level and the reasons behind it.

Calibration is benign-only. For each feature and each history-length bin, the benign
distribution gives a median and 1st/99th percentiles; a feature's deviation ``z`` is its
distance from the median in units of that spread (scaled so the 99th percentile sits at
z = 2.33, as for a normal), in either direction, extrapolated linearly past the sample.
An account's score is the root sum of squares of the deviations beyond z = 1, so several
moderately unusual features add up. The score is turned into a risk by the distribution of
benign accounts' *lifetime maximum* scores (empirical, with an exponential tail fitted to
its top decile), so ``risk = 1 - (share of benign accounts that ever score this high)``
and the flag threshold holds the target false-positive rate per account, over the whole
life of the account.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import CalibrationError
from .features import FEATURE_NAMES, FEATURES, N_FEATURES

# History-length bins: features of a 5-query account are compared with benign 4-7 query accounts.
BIN_EDGES = np.array([1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192], dtype=np.int64)
N_BINS = len(BIN_EDGES)
MIN_BIN_SAMPLES = 40
MAX_BIN_SAMPLES = 2048
Z_AT_Q99 = 2.3263  # normal quantile of 0.99
Z_FLOOR = 1.0  # deviations below this are ordinary fluctuation
TAIL_FRACTION = 0.1
LEVELS = ("ok", "watch", "flag")


def bin_of(n: np.ndarray | int) -> np.ndarray:
    return np.clip(np.searchsorted(BIN_EDGES, n, side="right") - 1, 0, N_BINS - 1)


# Each bin's benign quantiles describe accounts near the bin's geometric centre; between
# centres they are interpolated in log2(n), so an account at the top of a bin is not judged
# against the shorter accounts at its bottom.
_BIN_CENTRES = np.log2(np.sqrt(BIN_EDGES * np.append(BIN_EDGES[1:], BIN_EDGES[-1] * 2)))


def _interpolation(n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.log2(np.maximum(np.asarray(n, dtype=np.float64), 1.0))
    hi = np.clip(np.searchsorted(_BIN_CENTRES, x, side="right"), 1, N_BINS - 1)
    lo = hi - 1
    w = np.clip((x - _BIN_CENTRES[lo]) / (_BIN_CENTRES[hi] - _BIN_CENTRES[lo]), 0.0, 1.0)
    return lo, hi, w


@dataclass(frozen=True)
class Reason:
    feature: str
    value: float
    benign_percentile: float  # 0-100, the share of benign accounts (same history length) below this value
    direction: str  # "above" or "below" the benign median
    deviation: float  # z units

    def to_dict(self) -> dict[str, Any]:
        return {
            "feature": self.feature,
            "description": FEATURES[self.feature],
            "value": round(self.value, 6),
            "benign_percentile": round(self.benign_percentile, 3),
            "direction": self.direction,
            "deviation": round(self.deviation, 3),
        }

    def __str__(self) -> str:
        return f"{self.feature}={self.value:.4g} ({self.direction} benign; percentile {self.benign_percentile:.1f}, z={self.deviation:.1f})"


@dataclass(frozen=True)
class Verdict:
    """probewatch's judgement of an account right after one of its queries."""

    account: str
    risk: float  # 1 - share of benign accounts that ever reach this score
    level: str  # "ok", "watch" or "flag"; sticky at the account's peak
    flagged: bool
    n_queries: int
    score: float
    peak_risk: float
    reasons: tuple[Reason, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "risk": round(self.risk, 6),
            "level": self.level,
            "flagged": self.flagged,
            "n_queries": self.n_queries,
            "score": round(self.score, 4),
            "peak_risk": round(self.peak_risk, 6),
            "reasons": [r.to_dict() for r in self.reasons],
        }


class Calibration:
    """Benign feature tables per history bin, and the tail of benign lifetime-max scores."""

    def __init__(self, samples: list[np.ndarray], account_max_scores: np.ndarray | None, off_reference_similarity: float,
                 source: str = "", n_accounts: int = 0):
        if len(samples) != N_BINS:
            raise CalibrationError(f"calibration needs one sample table per bin ({N_BINS}); got {len(samples)}")
        self.samples = [np.sort(np.asarray(s, dtype=np.float64), axis=0) if len(s) else np.zeros((0, N_FEATURES)) for s in samples]
        self.off_reference_similarity = float(off_reference_similarity)
        self.source = source
        self.n_accounts = int(n_accounts)
        self._build_quantiles()
        if account_max_scores is not None:  # None only while calibration cross-fits its folds
            self.set_account_max_scores(account_max_scores)

    # -- per-feature deviations ---------------------------------------------------------
    def _build_quantiles(self) -> None:
        q = np.full((N_BINS, 3, N_FEATURES), np.nan)
        pooled = [[] for _ in range(N_FEATURES)]
        for b, s in enumerate(self.samples):
            for j in range(N_FEATURES):
                col = s[:, j][~np.isnan(s[:, j])] if s.shape[0] else np.zeros(0)
                if col.size >= MIN_BIN_SAMPLES:
                    q[b, :, j] = np.quantile(col, [0.01, 0.5, 0.99])
                    pooled[j].append(col)
        # Bins with too little benign data borrow the nearest populated bin (shorter first).
        donors = np.tile(np.arange(N_BINS)[:, None], (1, N_FEATURES))
        for j in range(N_FEATURES):
            have = np.flatnonzero(~np.isnan(q[:, 1, j]))
            if have.size == 0:
                continue
            for b in range(N_BINS):
                if np.isnan(q[b, 1, j]):
                    donor = have[np.argmin(np.abs(have - b) + (have > b) * 0.5)]
                    q[b, :, j] = q[donor, :, j]
                    donors[b, j] = donor
        self.donor_bin = donors  # bin whose samples stand in for (bin, feature): percentiles use it too
        # A spread floor per feature, so a feature that benign accounts hold constant in one
        # bin (say, no near-duplicates) does not turn the tiniest change into infinite z.
        # The pooled standard deviation still sees a rare benign tail (a few retries) where
        # the 1-99 % range is zero.
        floor = np.ones(N_FEATURES)
        for j in range(N_FEATURES):
            if pooled[j]:
                allv = np.concatenate(pooled[j])
                spread = 0.25 * float(np.quantile(allv, 0.99) - np.quantile(allv, 0.01))
                floor[j] = max(spread, float(allv.std()), 1e-9)
        self.q = q
        self.spread_floor = floor
        self.has_feature = ~np.isnan(q[:, 1, :])

    def deviations(self, features: np.ndarray, n: np.ndarray) -> np.ndarray:
        """Signed z per feature (positive = above the benign median); NaN where unknown."""
        features = np.atleast_2d(features)
        b0, b1, w = _interpolation(np.atleast_1d(n))
        q = self.q[b0] * (1.0 - w)[:, None, None] + self.q[b1] * w[:, None, None]
        lo, med, hi = q[:, 0, :], q[:, 1, :], q[:, 2, :]
        up = np.maximum(hi - med, self.spread_floor)
        down = np.maximum(med - lo, self.spread_floor)
        diff = features - med
        return np.where(diff >= 0, Z_AT_Q99 * diff / up, Z_AT_Q99 * diff / down)

    @staticmethod
    def combine(z: np.ndarray) -> np.ndarray:
        excess = np.maximum(np.abs(np.nan_to_num(z, nan=0.0)) - Z_FLOOR, 0.0)
        return np.sqrt((excess**2).sum(axis=-1))

    def scores(self, features: np.ndarray, n: np.ndarray) -> np.ndarray:
        return self.combine(self.deviations(features, n))

    def percentile(self, feature_index: int, value: float, n: int) -> float:
        s = self.samples[int(self.donor_bin[int(bin_of(n)), feature_index])]
        col = s[:, feature_index] if s.shape[0] else np.zeros(0)
        col = col[~np.isnan(col)]
        if col.size == 0:
            return math.nan
        return 100.0 * float(np.searchsorted(col, value, side="right")) / col.size

    # -- score -> risk ---------------------------------------------------------------
    def set_account_max_scores(self, maxima: np.ndarray) -> None:
        m = np.sort(np.asarray(maxima, dtype=np.float64))
        m = m[np.isfinite(m)]
        if m.size < 10:
            raise CalibrationError(
                f"calibration needs lifetime scores of at least 10 benign accounts; got {m.size}. "
                "Calibrate with more benign accounts"
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
        return out

    def meta(self) -> dict[str, Any]:
        return {"source": self.source, "n_accounts": self.n_accounts, "features": list(FEATURE_NAMES)}

    @classmethod
    def from_arrays(cls, arrays, meta: dict[str, Any]) -> "Calibration":
        if list(meta.get("features", [])) != list(FEATURE_NAMES):
            raise CalibrationError(
                f"calibration was made for features {meta.get('features')} but this probewatch computes "
                f"{list(FEATURE_NAMES)}; recalibrate with this version"
            )
        samples = [np.asarray(arrays[f"cal_bin_{b}"], dtype=np.float64) for b in range(N_BINS)]
        return cls(samples, np.asarray(arrays["cal_account_max_scores"]), float(arrays["cal_off_reference_similarity"]),
                   source=meta.get("source", ""), n_accounts=meta.get("n_accounts", 0))


class Detector:
    """Applies a :class:`Calibration`: score, risk, level and reasons for one account state."""

    def __init__(self, calibration: Calibration, target_fpr: float, watch_fpr: float, n_reasons: int = 3):
        self.calibration = calibration
        self.target_fpr = target_fpr
        self.watch_fpr = watch_fpr
        self.n_reasons = n_reasons
        self.flag_threshold = calibration.threshold_for(target_fpr)
        self.watch_threshold = calibration.threshold_for(watch_fpr)

    def judge(self, features: np.ndarray, n: int) -> tuple[float, float, np.ndarray]:
        """(score, risk, signed deviations) for one feature vector at history length n."""
        z = self.calibration.deviations(features, np.asarray([n]))[0]
        score = float(Calibration.combine(z[None, :])[0])
        risk = 1.0 - float(self.calibration.exceedance(score))
        return score, risk, z

    def level_for(self, score: float) -> str:
        if score >= self.flag_threshold:
            return "flag"
        if score >= self.watch_threshold:
            return "watch"
        return "ok"

    def reasons(self, features: np.ndarray, z: np.ndarray, n: int) -> tuple[Reason, ...]:
        order = np.argsort(-np.abs(np.nan_to_num(z, nan=0.0)))
        out = []
        for j in order[: self.n_reasons]:
            if not np.isfinite(z[j]) or abs(z[j]) <= Z_FLOOR:
                break
            out.append(Reason(
                feature=FEATURE_NAMES[j],
                value=float(features[j]),
                benign_percentile=self.calibration.percentile(int(j), float(features[j]), n),
                direction="above" if z[j] > 0 else "below",
                deviation=float(abs(z[j])),
            ))
        return tuple(out)
