"""The topic-return statistic: an account that never comes back to an earlier subject.

``Calibration.topic_return_scores`` against the binomial tail written out with scipy.stats,
how the detector combines it with the look-alike score, how calibration fits it, and how it
travels through a calibration file.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from probewatch.detect.features import FEATURE_NAMES
from probewatch.detect.fitting import _fit_topic_return
from probewatch.detect.scoring import (
    MIN_SCORED_QUERIES,
    MIN_TOPIC_RETURN_ACCOUNTS,
    N_FEATURES,
    TOPIC_RETURN_MIN_QUERIES,
    TOPIC_RETURN_QUANTILE,
    Calibration,
    Detector,
)
from probewatch.errors import CalibrationError
from tests.support import feature_rows, uniform_calibration

RATE = FEATURE_NAMES.index("topic_return_rate")


def _calibration(topic_return=(0.12, 1.5)) -> Calibration:
    return uniform_calibration(topic_return=topic_return)


def _rows(rates, ns) -> tuple[np.ndarray, np.ndarray]:
    return feature_rows(RATE, rates, ns)


def test_the_statistic_is_the_binomial_tail_by_hand():
    cal = _calibration((0.12, 1.5))
    ns = [10, 11, 40, 64, 200, 500, 500]
    returns = [0, 3, 1, 0, 5, 60, 0]
    rates = [k / (n - 1) for k, n in zip(returns, ns, strict=True)]
    got = cal.topic_return_scores(*_rows(rates, ns))
    expected = [1.5 * -math.log10(stats.binom.cdf(k, n - 1, 0.12)) for k, n in zip(returns, ns, strict=True)]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_evidence_grows_with_every_query_that_returns_to_nothing():
    cal = _calibration()
    ns = np.arange(MIN_SCORED_QUERIES, 400)
    scores = cal.topic_return_scores(*_rows(np.zeros(ns.size), ns))
    assert (np.diff(scores) > 0).all()
    # an account that returns to its topics as often as the benign rate never builds any
    typical = cal.topic_return_scores(*_rows(np.full(ns.size, 0.3), ns))
    assert typical.max() < 0.1 < scores[0]


def test_no_evidence_while_off_too_young_or_undefined():
    x, n = _rows([0.0, 0.0, np.nan], [MIN_SCORED_QUERIES - 1, 300, 1])
    assert _calibration(None).topic_return_scores(x, n).tolist() == [0.0, 0.0, 0.0]
    scores = _calibration().topic_return_scores(x, n)
    assert scores[0] == 0.0 and scores[2] == 0.0 and scores[1] > 10


def test_the_score_is_the_higher_of_the_two_and_the_reason_says_which():
    cal = _calibration()
    detector = Detector(cal, target_fpr=0.001, watch_fpr=0.01)
    x, n = _rows([0.0, 0.4], [300, 300])
    rings = [np.zeros(16) for _ in range(2)]
    scores, risks, reasons = detector.judge(x, n, rings)
    lookalike = np.array([ring[: min(300, 16)].mean() for ring in rings])
    topic = cal.topic_return_scores(x, n)
    np.testing.assert_allclose(scores, np.maximum(lookalike, topic))
    assert topic[0] > lookalike[0] and risks[0] > risks[1]
    first = reasons[0][0]
    assert first.feature == "topic_return_rate" and first.direction == "below" and first.value == 0.0
    assert first.deviation == pytest.approx(topic[0]) and "topics" in first.description
    assert all(r.feature != "topic_return_rate" for r in reasons[1])
    assert len(reasons[0]) <= detector.n_reasons


def test_the_rate_is_no_look_alike_coordinate():
    """However far out the return rate is, the look-alike distances do not move: it is judged
    on its own, where fifteen other coordinates cannot dilute it."""
    cal = _calibration()
    x, n = _rows([0.5, 0.0], [128, 128])
    found = cal.neighbours(x, n)
    np.testing.assert_array_equal(found.distance[0], found.distance[1])


def test_a_calibration_file_keeps_it_and_refuses_nonsense():
    cal = _calibration((0.08, 2.0))
    arrays = cal.to_arrays()
    loaded = Calibration.from_arrays(arrays, cal.meta())
    assert loaded.topic_return == (0.08, 2.0)
    x, n = _rows([0.0, 0.05], [100, 900])
    np.testing.assert_array_equal(loaded.topic_return_scores(x, n), cal.topic_return_scores(x, n))
    off = _calibration(None)
    assert "cal_topic_return" not in off.to_arrays()
    assert Calibration.from_arrays(off.to_arrays(), off.meta()).topic_return is None
    for bad in ([0.0, 1.0], [0.1, -1.0], [0.1, 1.0, 2.0], [np.nan, 1.0]):
        arrays["cal_topic_return"] = np.array(bad)
        with pytest.raises(CalibrationError, match="topic-return parameters"):
            Calibration.from_arrays(arrays, cal.meta())


def _benign_stream(rng, n_accounts: int, length: int):
    """Feature rows of accounts that each return to their topics at their own rate."""
    features, ns, owner = [], [], []
    for a in range(n_accounts):
        rate = rng.uniform(0.05, 0.6)
        hits = np.cumsum(np.r_[0, rng.random(length - 1) < rate])
        n = np.arange(1, length + 1)
        rows = np.full((length, N_FEATURES), 0.5)
        rows[:, RATE] = np.where(n > 1, hits / np.maximum(n - 1, 1), np.nan)
        features.append(rows)
        ns.append(n)
        owner.append(np.full(length, a))
    return np.concatenate(features), np.concatenate(ns), np.concatenate(owner)


def test_calibration_fits_the_rate_and_the_weight_as_documented():
    rng = np.random.default_rng(3)
    features, ns, owner = _benign_stream(rng, 60, TOPIC_RETURN_MIN_QUERIES + 36)
    scored = np.arange(60)
    lookalike = rng.gamma(2.0, 0.5, ns.size)
    cal = _calibration(None)
    p, weight = _fit_topic_return(features, ns, owner, scored, lookalike)
    finals = features[np.r_[np.flatnonzero(np.diff(owner)), owner.size - 1], RATE]
    assert p == pytest.approx(np.quantile(finals, TOPIC_RETURN_QUANTILE))
    cal.topic_return = (p, 1.0)
    raw = cal.topic_return_scores(features, ns)
    raw_max = np.array([raw[owner == a].max() for a in scored])
    look_max = np.array([lookalike[owner == a].max() for a in scored])
    assert weight == pytest.approx(np.quantile(look_max, 0.99) / np.quantile(raw_max, 0.99))


def test_too_few_long_accounts_leave_it_off():
    rng = np.random.default_rng(4)
    features, ns, owner = _benign_stream(rng, MIN_TOPIC_RETURN_ACCOUNTS - 1, TOPIC_RETURN_MIN_QUERIES)
    got = _fit_topic_return(features, ns, owner, np.unique(owner), np.ones(ns.size))
    assert got is None
    short, short_ns, short_owner = _benign_stream(rng, 80, TOPIC_RETURN_MIN_QUERIES - 1)
    assert _fit_topic_return(short, short_ns, short_owner, np.arange(80), np.ones(short_ns.size)) is None
