"""The walk-away statistic: an account that walks away from its seeds one small edit at a time.

``walk_steps`` against a plain loop written the way its definition reads, what it finds in
walks, template clusters, short editing sessions and independent queries, the binomial tail
by hand, how the detector combines the statistic with the look-alike score, how calibration
fits it and how it travels through calibration files and snapshots.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from probewatch.detect.features import (
    FEATURE_NAMES,
    WALK_DEPTH,
    WALK_LINK_SIMILARITY,
    WALK_MAX_CLOSE,
    WALK_ROOT_SIMILARITY,
    AccountState,
    QueryFacts,
    walk_steps,
)
from probewatch.detect.fitting import _fit_walk_away
from probewatch.detect.scoring import (
    MIN_SCORED_QUERIES,
    MIN_TOPIC_RETURN_ACCOUNTS,
    N_FEATURES,
    WALK_AWAY_MIN_QUERIES,
    WALK_AWAY_MIN_RATE,
    WALK_AWAY_QUANTILE,
    Calibration,
    Detector,
)
from probewatch.errors import CalibrationError
from tests.support import feature_rows, uniform_calibration

RATE = FEATURE_NAMES.index("walk_away_rate")
DIM = 64


def reference_walk_steps(gram: np.ndarray, first: int) -> int:
    """One row at a time: parent = most similar earlier row if at least the link similarity;
    follow parents to the chain's first row; test depth, falling similarity, distance, density."""
    m = gram.shape[0]
    parent = list(range(m))
    for t in range(1, m):
        j = max(range(t), key=lambda i: (gram[t, i], -i))  # argmax, first on ties
        if gram[t, j] >= WALK_LINK_SIMILARITY:
            parent[t] = j
    steps = 0
    for t in range(max(first, 0), m):
        chain = [t]
        while parent[chain[-1]] != chain[-1]:
            chain.append(parent[chain[-1]])
        ancestors = chain[1:]
        if len(ancestors) < WALK_DEPTH:
            continue
        sims = [gram[t, a] for a in ancestors[:WALK_DEPTH]]
        if not all(later < earlier for earlier, later in itertools.pairwise(sims)):
            continue
        if gram[t, chain[-1]] >= WALK_ROOT_SIMILARITY:
            continue
        if sum(gram[t, i] >= WALK_LINK_SIMILARITY for i in range(t)) > WALK_MAX_CLOSE:
            continue
        steps += 1
    return steps


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def random_walk(rng, steps: int, step_size: float = 0.4) -> np.ndarray:
    """Each vector a small random move from the previous one: similar neighbours, far ends."""
    out = [unit(rng.normal(size=DIM))]
    for _ in range(steps - 1):
        out.append(unit(out[-1] + step_size * unit(rng.normal(size=DIM))))
    return np.array(out)


def template_cluster(rng, n: int) -> np.ndarray:
    """One fixed template with a different short field each time: everything close together."""
    base = unit(rng.normal(size=DIM))
    return unit(base + 0.12 * unit(rng.normal(size=(n, DIM))))


def gram_of(x: np.ndarray) -> np.ndarray:
    return (x @ x.T).astype(np.float64)


@pytest.mark.parametrize("seed", range(8))
def test_walk_steps_match_the_plain_loop(seed):
    rng = np.random.default_rng(seed)
    parts = [random_walk(rng, int(rng.integers(3, 16)), float(rng.uniform(0.05, 0.2))) for _ in range(4)]
    parts += [template_cluster(rng, 12), unit(rng.normal(size=(10, DIM)))]
    x = np.concatenate(parts)
    x = x[rng.permutation(len(x))] if seed % 2 else x  # interleaved as well as in order
    gram = gram_of(x)
    for first in (0, 1, len(x) // 2, len(x) - 1, len(x)):
        assert walk_steps(gram, first) == reference_walk_steps(gram, first), first


def test_a_walk_steps_where_templates_editing_sessions_and_independent_queries_do_not():
    rng = np.random.default_rng(3)
    walk = random_walk(rng, 40)
    walk_gram = gram_of(walk)
    assert walk_gram[0, -1] < WALK_ROOT_SIMILARITY < np.diagonal(walk_gram, 1).min()  # small steps, far ends
    assert walk_steps(walk_gram, 0) >= 20
    assert walk_steps(gram_of(template_cluster(rng, 60)), 0) == 0  # close together, no direction
    session = random_walk(rng, WALK_DEPTH)  # an edited prompt re-sent a few times
    sessions = np.concatenate([session] + [random_walk(rng, WALK_DEPTH) for _ in range(9)])
    assert walk_steps(gram_of(sessions), 0) == 0
    assert walk_steps(gram_of(unit(rng.normal(size=(60, DIM)))), 0) == 0


def test_each_query_is_judged_once_on_the_refresh_schedule():
    """Folding a stream in, every query after the first is judged by exactly one refresh, and
    the count equals judging each refresh's new rows against that refresh's window."""
    rng = np.random.default_rng(5)
    x = np.concatenate([random_walk(rng, 30), template_cluster(rng, 40), random_walk(rng, 50)]).astype(np.float32)
    window, refresh_every = 32, 4
    state = AccountState(window, 4)
    expected, judged_upto = 0, 0
    for n in range(1, len(x) + 1):
        state.update(QueryFacts(0.5, 0.5, 0.5, 0.5, 0), None)
        if state.needs_gram_refresh(refresh_every):
            recent = x[max(0, n - window) : n]
            gram = (recent @ recent.T).astype(np.float64)
            expected += reference_walk_steps(gram, len(recent) - min(n - judged_upto, len(recent)))
            judged_upto = n
            state.refresh_gram_stats(recent, 1.0, 1.0)
            assert state.walk[0] == n
    assert state.walk[1] == expected > 0


def _calibration(walk_away=(0.02, 1.0)) -> Calibration:
    return uniform_calibration(walk_away=walk_away)


def _rows(rates, ns) -> tuple[np.ndarray, np.ndarray]:
    return feature_rows(RATE, rates, ns)


def test_the_statistic_is_the_binomial_tail_by_hand():
    cal = _calibration((0.02, 1.3))
    ns = [10, 11, 40, 64, 200, 500, 500]
    steps = [1, 3, 0, 2, 30, 12, 100]
    rates = [k / (n - 1) for k, n in zip(steps, ns, strict=True)]
    got = cal.walk_away_scores(*_rows(rates, ns))
    expected = [
        1.3 * -math.log10(stats.binom.sf(k - 1, n - 1, 0.02)) if k else 0.0 for k, n in zip(steps, ns, strict=True)
    ]
    np.testing.assert_allclose(got, expected, rtol=1e-9, atol=1e-12)


def test_no_evidence_while_off_too_young_without_steps_or_undefined():
    x, n = _rows([0.5, 0.0, np.nan, 0.3], [MIN_SCORED_QUERIES - 1, 300, 1, 300])
    assert _calibration(None).walk_away_scores(x, n).tolist() == [0.0, 0.0, 0.0, 0.0]
    scores = _calibration().walk_away_scores(x, n)
    assert scores[:3].tolist() == [0.0, 0.0, 0.0] and scores[3] > 30


def test_the_score_is_the_higher_one_and_the_reason_says_so():
    cal = _calibration()
    detector = Detector(cal, target_fpr=0.001, watch_fpr=0.01)
    x, n = _rows([0.3, 0.0], [300, 300])
    rings = [np.zeros(16) for _ in range(2)]
    scores, risks, reasons = detector.judge(x, n, rings)
    lookalike = np.array([ring[:16].mean() for ring in rings])
    walk = cal.walk_away_scores(x, n)
    np.testing.assert_allclose(scores, np.maximum(lookalike, walk))
    assert walk[0] > lookalike[0] and walk[1] == 0.0 and risks[0] > risks[1]
    first = reasons[0][0]
    assert first.feature == "walk_away_rate" and first.direction == "above" and first.value == 0.3
    assert first.deviation == pytest.approx(walk[0]) and "edit" in first.description
    assert all(r.feature != "walk_away_rate" for r in reasons[1])


def test_the_rate_is_no_look_alike_coordinate():
    cal = _calibration()
    x, n = _rows([0.6, 0.0], [128, 128])
    found = cal.neighbours(x, n)
    np.testing.assert_array_equal(found.distance[0], found.distance[1])


def test_calibration_fits_the_benign_rate_with_unit_weight():
    rng = np.random.default_rng(1)
    accounts = MIN_TOPIC_RETURN_ACCOUNTS + 10
    ns = np.concatenate([np.arange(1, WALK_AWAY_MIN_QUERIES + 40) for _ in range(accounts)])
    owner = np.repeat(np.arange(accounts), WALK_AWAY_MIN_QUERIES + 39)
    features = np.full((ns.size, N_FEATURES), np.nan)
    final_rates = rng.uniform(0.1, 0.3, accounts)
    features[:, RATE] = final_rates[owner]
    p, weight = _fit_walk_away(features, ns, owner)
    assert p == pytest.approx(np.quantile(final_rates, WALK_AWAY_QUANTILE)) and weight == 1.0
    # most benign accounts never step: the rate is floored at what a benign account may do
    features[:, RATE] = 0.0
    assert _fit_walk_away(features, ns, owner)[0] == pytest.approx(WALK_AWAY_MIN_RATE)
    short = ns < WALK_AWAY_MIN_QUERIES  # no long account: the statistic stays off
    assert _fit_walk_away(features[short], ns[short], owner[short]) is None


def test_a_calibration_file_keeps_it_and_refuses_nonsense():
    cal = _calibration((0.03, 1.0))
    loaded = Calibration.from_arrays(cal.to_arrays(), cal.meta())
    assert loaded.walk_away == (0.03, 1.0)
    x, n = _rows([0.1, 0.4], [100, 900])
    np.testing.assert_array_equal(loaded.walk_away_scores(x, n), cal.walk_away_scores(x, n))
    off = _calibration(None)
    assert "cal_walk_away" not in off.to_arrays()
    assert Calibration.from_arrays(off.to_arrays(), off.meta()).walk_away is None
    for bad in ([0.0, 1.0], [0.1, -1.0], [0.1, 1.0, 2.0], [np.nan, 1.0]):
        arrays = cal.to_arrays()
        arrays["cal_walk_away"] = np.array(bad)
        with pytest.raises(CalibrationError, match="walk-away"):
            Calibration.from_arrays(arrays, cal.meta())
