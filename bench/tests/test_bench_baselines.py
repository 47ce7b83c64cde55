"""Contract and sanity tests for the published-detector baselines in bench/baselines/."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import pdist

from bench.baselines import (
    BenignMmd,
    Blacklight,
    CoverageLsh,
    Prada,
    Seat,
    StatefulKnn,
    StreamingBaseline,
    all_baselines,
)
from bench.baselines.benign_mmd import unbiased_mmd2
from bench.baselines.prada import _shapiro_w
from probewatch.errors import CalibrationError, ConfigError, InputError, ProbewatchError

DIM = 384
N_TOPICS = 24


# -- synthetic embeddings ----------------------------------------------------------------
def _unit(a: np.ndarray) -> np.ndarray:
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def _topics(seed: int = 123) -> np.ndarray:
    return _unit(np.random.default_rng(seed).standard_normal((N_TOPICS, DIM)))


def topical_account(rng: np.random.Generator, n: int, n_topics: int = 3) -> np.ndarray:
    """Benign-like: a few topics in turn; each query ~0.6 cosine to its topic centre."""
    topics = _topics()
    chosen = rng.choice(N_TOPICS, size=n_topics, replace=False)
    which = chosen[np.minimum(np.arange(n) * n_topics // n, n_topics - 1)]
    return _unit(topics[which] + 0.065 * rng.standard_normal((n, DIM))).astype(np.float32)


def mixed_topic_account(rng: np.random.Generator, n: int) -> np.ndarray:
    """Benign-like traffic drawn from all topics (what the MMD reference sample looks like)."""
    which = rng.integers(0, N_TOPICS, size=n)
    return _unit(_topics()[which] + 0.065 * rng.standard_normal((n, DIM))).astype(np.float32)


def uniform_account(rng: np.random.Generator, n: int) -> np.ndarray:
    return _unit(rng.standard_normal((n, DIM))).astype(np.float32)


def near_duplicate_chain(rng: np.random.Generator, n: int, step: float = 0.01) -> np.ndarray:
    """Perturbation chain: each query a small random step from the previous one."""
    out = np.empty((n, DIM))
    out[0] = _unit(rng.standard_normal(DIM))
    for i in range(1, n):
        out[i] = _unit(out[i - 1] + step * rng.standard_normal(DIM))
    return out.astype(np.float32)


@pytest.fixture(scope="module")
def benign_accounts() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [topical_account(rng, int(rng.integers(60, 160))) for _ in range(24)]


@pytest.fixture(scope="module")
def fitted(benign_accounts) -> dict[str, StreamingBaseline]:
    return {b.name: b.fit(benign_accounts) for b in all_baselines(seed=0)}


NAMES = [b.name for b in all_baselines()]


@pytest.fixture(scope="module")
def streams() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(11)
    return {"a": topical_account(rng, 120), "b": uniform_account(rng, 90), "c": near_duplicate_chain(rng, 70)}


# -- the common contract -------------------------------------------------------------------
def test_all_baselines_are_distinct_streaming_baselines():
    baselines = all_baselines(seed=3)
    assert all(isinstance(b, StreamingBaseline) for b in baselines)
    assert len({b.name for b in baselines}) == len(baselines)
    assert {"prada", "stateful_knn", "coverage_lsh", "benign_mmd"} <= {b.name for b in baselines}


@pytest.mark.parametrize("name", NAMES)
def test_score_is_float64_one_per_query_nan_only_at_start(name, fitted, streams):
    for X in streams.values():
        s = fitted[name].score_stream(X)
        assert s.dtype == np.float64 and s.shape == (len(X),)
        nan = np.isnan(s)
        first_finite = int(np.argmin(nan)) if not nan.all() else len(s)
        assert not nan[first_finite:].any(), "NaN after the first finite score"
        assert first_finite < 40, "a detector should score a 70+ query account"
        assert np.isfinite(s[first_finite:]).all()


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_seed(name, benign_accounts, streams, fitted):
    fresh = {b.name: b for b in all_baselines(seed=0)}[name].fit(benign_accounts)
    for X in streams.values():
        np.testing.assert_array_equal(fresh.score_stream(X), fitted[name].score_stream(X))
        np.testing.assert_array_equal(fresh.score_stream(X), fresh.score_stream(X))


@pytest.mark.parametrize("name", NAMES)
def test_no_state_leaks_between_accounts(name, benign_accounts, streams):
    alone = {b.name: b for b in all_baselines()}[name].fit(benign_accounts)
    expected_b = alone.score_stream(streams["b"])
    shared = {b.name: b for b in all_baselines()}[name].fit(benign_accounts)
    shared.score_stream(streams["a"])
    shared.score_stream(streams["c"])
    np.testing.assert_array_equal(shared.score_stream(streams["b"]), expected_b)


@pytest.mark.parametrize("name", NAMES)
def test_scores_are_causal_prefix_of_stream_gives_same_scores(name, fitted, streams):
    # the score after query i may only depend on queries 0..i
    X = streams["a"]
    full = fitted[name].score_stream(X)
    for m in (1, 37, 80):
        np.testing.assert_allclose(fitted[name].score_stream(X[:m]), full[:m], rtol=1e-9, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("name", NAMES)
def test_float32_and_float64_inputs_agree(name, fitted, streams):
    X = streams["a"]
    np.testing.assert_allclose(
        fitted[name].score_stream(X), fitted[name].score_stream(X.astype(np.float64)), rtol=1e-9, equal_nan=True
    )


@pytest.mark.parametrize("name", NAMES)
def test_scoring_before_fit_raises_clear_error(name, streams):
    baseline = {b.name: b for b in all_baselines()}[name]
    with pytest.raises(CalibrationError, match=r"not fitted.*fit"):
        baseline.score_stream(streams["a"])


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_raise_probewatch_errors(name, fitted, benign_accounts):
    baseline = fitted[name]
    with pytest.raises(InputError, match="dimension 384"):
        baseline.score_stream(np.ones((5, 10)))
    with pytest.raises(InputError, match="2-D"):
        baseline.score_stream(np.ones(DIM))
    bad = benign_accounts[0].copy()
    bad[3, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        baseline.score_stream(bad)
    with pytest.raises(ProbewatchError):
        {b.name: b for b in all_baselines()}[name].fit([])


@pytest.mark.parametrize("name", NAMES)
def test_empty_and_single_query_streams(name, fitted, streams):
    assert fitted[name].score_stream(np.empty((0, DIM))).shape == (0,)
    one = fitted[name].score_stream(streams["a"][:1])
    assert one.shape == (1,) and np.isnan(one).all()


# -- calibrated_threshold ----------------------------------------------------------------
def _streams_with_maxima(maxima) -> list[np.ndarray]:
    return [np.array([np.nan, m - 1.0, m, m - 0.5]) for m in maxima]


def test_calibrated_threshold_admits_at_most_fpr_of_accounts():
    det = Seat()
    scores = _streams_with_maxima(np.arange(1, 101, dtype=float))
    t = det.calibrated_threshold(scores, fpr=0.05)
    assert t == np.nextafter(95.0, np.inf)  # just above the 6th-largest maximum
    assert sum(np.nanmax(s) >= t for s in scores) == 5
    assert det.calibrated_threshold(scores, fpr=0.07) == np.nextafter(93.0, np.inf)  # floor(0.07 * 100) == 7


def test_calibrated_threshold_with_too_few_accounts_is_max_plus_epsilon():
    scores = _streams_with_maxima([0.2, 0.9, 0.4])
    t = Seat().calibrated_threshold(scores, fpr=0.01)  # 3 accounts < 1 / 0.01
    assert t == np.nextafter(0.9, np.inf) and t - 0.9 < 1e-12
    assert not any(np.nanmax(s) >= t for s in scores)


def test_calibrated_threshold_ties_and_all_nan_accounts():
    det = Seat()
    # ties: three accounts at 2.0 with 2 allowed -> none of them may pass
    assert det.calibrated_threshold(_streams_with_maxima([1.0, 2.0, 2.0, 2.0]), fpr=0.5) == np.nextafter(2.0, np.inf)
    # all-NaN accounts never reach any threshold and count as accounts
    scores = [np.full(5, np.nan)] * 3 + _streams_with_maxima([0.5])
    assert det.calibrated_threshold(scores, fpr=0.25) == np.nextafter(-np.inf, np.inf)
    with pytest.raises(CalibrationError, match="finite"):
        det.calibrated_threshold([np.full(4, np.nan)], fpr=0.1)
    with pytest.raises(CalibrationError):
        det.calibrated_threshold([], fpr=0.1)
    for bad in (0.0, 1.0, -0.1, float("nan")):
        with pytest.raises(ConfigError):
            det.calibrated_threshold(_streams_with_maxima([1.0]), fpr=bad)


@settings(max_examples=60, deadline=None)
@given(
    maxima=st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=60),
    fpr=st.floats(0.001, 0.999),
)
def test_calibrated_threshold_is_the_smallest_admissible(maxima, fpr):
    scores = _streams_with_maxima(maxima)
    t = Seat().calibrated_threshold(scores, fpr)
    reach = np.array([np.nanmax(s) for s in scores])
    allowed = math.floor(fpr * len(maxima) + 1e-9)
    assert (reach >= t).sum() <= allowed
    below = np.nextafter(t, -np.inf)  # any smaller threshold admits too many
    assert (reach >= below).sum() > allowed


# -- per-detector sanity -------------------------------------------------------------------
def _max_scores(det, accounts):
    return np.array([np.nanmax(det.score_stream(X)) for X in accounts])


def test_prada_matches_a_direct_implementation_of_algorithm_1(fitted, streams):
    X = streams["a"].astype(np.float64)
    growing, dists, growing_dists, expected = [X[0]], [], [], np.full(len(X), np.nan)
    for i in range(1, len(X)):
        d_min = min(np.linalg.norm(X[i] - g) for g in growing)
        dists.append(d_min)
        threshold = np.mean(growing_dists) - np.std(growing_dists) if growing_dists else -np.inf
        if d_min > threshold:
            growing.append(X[i])
            growing_dists.append(d_min)
        if len(dists) >= 30:
            expected[i] = 1.0 - stats.shapiro(dists).statistic
    np.testing.assert_allclose(fitted["prada"].score_stream(X), expected, rtol=1e-7, atol=1e-8, equal_nan=True)
    assert np.isnan(expected[:30]).all() and np.isfinite(expected[30:]).all()


@pytest.mark.parametrize("n", [3, 4, 5, 6, 7, 11, 30, 31, 257, 2000, 6000])
def test_prada_shapiro_w_matches_scipy(n):
    rng = np.random.default_rng(n)
    for x in (rng.standard_normal(n), rng.exponential(size=n), np.round(3 * rng.random(n)), rng.random(n) ** 4):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # n > 5000 p-value note
            assert _shapiro_w(x) == pytest.approx(stats.shapiro(x).statistic, abs=1e-8)
    assert _shapiro_w(np.full(n, 0.3)) == 1.0  # zero range: W = 1 as in scipy


def test_stateful_knn_matches_brute_force_and_flags_near_duplicate_chain(fitted, benign_accounts, streams):
    det = fitted["stateful_knn"]
    X = streams["b"].astype(np.float64)
    s = det.score_stream(X)
    for i in (5, 30, 60, 89):  # k_eff = min(50, i)
        d = np.sort(np.linalg.norm(X[:i] - X[i], axis=1))[: min(50, i)]
        assert s[i] == pytest.approx(-d.mean(), rel=1e-9)
    assert np.isnan(s[:5]).all()
    assert det.benign_knn_distances_.size > 0 and det.paper_threshold_ == pytest.approx(
        -np.percentile(det.benign_knn_distances_, 0.1)
    )
    threshold = det.calibrated_threshold([det.score_stream(a) for a in benign_accounts], fpr=0.1)
    rng = np.random.default_rng(5)
    chains = [near_duplicate_chain(rng, 80) for _ in range(3)]
    assert all(np.nanmax(det.score_stream(c)) >= threshold for c in chains)
    assert np.nanmax(det.score_stream(streams["c"])) > det.paper_threshold_


def test_coverage_lsh_counts_distinct_buckets_and_flags_uniform_spread(fitted, benign_accounts):
    det = fitted["coverage_lsh"]
    rng = np.random.default_rng(9)
    X = uniform_account(rng, 150)
    ids = det.bucket_ids(X)
    assert ids.min() >= 0 and ids.max() < 2**12
    np.testing.assert_array_equal(det.coverage_curve(X), [len(set(ids[: i + 1])) for i in range(len(X))])
    threshold = det.calibrated_threshold([det.score_stream(a) for a in benign_accounts], fpr=0.1)
    uniform = [uniform_account(rng, 150) for _ in range(3)]
    assert all(np.nanmax(det.score_stream(u)) >= threshold for u in uniform)
    assert np.isnan(det.score_stream(X)[:9]).all()
    # two-sided variant is |z|; a single-topic sweep covers little, so it scores low one-sided
    two = CoverageLsh(seed=0, two_sided=True).fit(benign_accounts)
    one_topic = topical_account(rng, 150, n_topics=1)
    np.testing.assert_allclose(two.score_stream(one_topic), np.abs(det.score_stream(one_topic)), equal_nan=True)
    assert np.nanmedian(det.score_stream(one_topic)) < 0


def test_coverage_lsh_needs_enough_calibration_accounts():
    rng = np.random.default_rng(0)
    with pytest.raises(CalibrationError, match="at least 5 benign accounts"):
        CoverageLsh().fit([topical_account(rng, 50) for _ in range(3)])


def test_benign_mmd_incremental_equals_direct_unbiased_mmd():
    rng = np.random.default_rng(3)
    benign = [mixed_topic_account(rng, 100) for _ in range(8)]
    det = BenignMmd(window=40, min_window=20, reference_size=300, seed=1).fit(benign)
    assert det.reference_.shape == (300, DIM)
    assert det.bandwidth_ == pytest.approx(np.median(pdist(det.reference_)), rel=1e-9)
    X = np.vstack([mixed_topic_account(rng, 60), uniform_account(rng, 40), near_duplicate_chain(rng, 50)])
    s = det.score_stream(X)  # 150 queries, window 40: exercises eviction many times
    assert np.isnan(s[:19]).all() and np.isfinite(s[19:]).all()
    for i in (19, 25, 39, 40, 41, 77, 101, 149):
        window = X[max(0, i - 39) : i + 1]
        assert s[i] == pytest.approx(unbiased_mmd2(window, det.reference_, det.bandwidth_), rel=1e-8, abs=1e-10)


def test_benign_mmd_block_boundaries_and_default_window():
    # longer than one block (256 rows) with eviction inside and across blocks
    rng = np.random.default_rng(4)
    benign = [mixed_topic_account(rng, 80) for _ in range(5)]
    det = BenignMmd(window=300, reference_size=200).fit(benign)
    X = np.vstack([mixed_topic_account(rng, 400), uniform_account(rng, 200)])
    s = det.score_stream(X)
    for i in (255, 256, 299, 300, 511, 512, 599):
        window = X[max(0, i - 299) : i + 1]
        assert s[i] == pytest.approx(unbiased_mmd2(window, det.reference_, det.bandwidth_), rel=1e-8, abs=1e-10)


def test_benign_mmd_flags_traffic_unlike_the_reference():
    rng = np.random.default_rng(6)
    benign = [mixed_topic_account(rng, 120) for _ in range(20)]
    det = BenignMmd(reference_size=500, seed=0).fit(benign[:10])
    threshold = det.calibrated_threshold([det.score_stream(a) for a in benign[10:]], fpr=0.1)
    far = [near_duplicate_chain(rng, 120, step=0.05) for _ in range(2)] + [topical_account(rng, 120, n_topics=1)]
    assert all(np.nanmax(det.score_stream(a)) >= threshold for a in far)


def test_blacklight_fingerprints_match_duplicates_not_unrelated_queries(fitted, benign_accounts):
    det = fitted["blacklight"]
    rng = np.random.default_rng(8)
    base = uniform_account(rng, 40)
    prints = det.fingerprints(base)
    assert prints.shape == (40, 50) and prints.dtype == np.uint64
    assert all(len(np.unique(p)) == 50 for p in prints)
    # unrelated queries share (almost) no hashes; an exact repeat shares all 50
    np.testing.assert_array_equal(det.match_counts(np.vstack([base, base[:5]]))[40:], 50)
    assert det.match_counts(base).max() < det.match_threshold / 2
    # an account that keeps re-sending slight variants of a few seeds is flagged
    seeds = uniform_account(rng, 4)
    variants = _unit(seeds[rng.integers(0, 4, 60)] + 0.004 * rng.standard_normal((60, DIM)))  # cos ~0.997
    threshold = det.calibrated_threshold([det.score_stream(a) for a in benign_accounts], fpr=0.1)
    s = det.score_stream(variants)
    assert s[-1] > 0.8 and np.nanmax(s) >= threshold
    assert np.nanmax(det.score_stream(uniform_account(rng, 60))) == 0.0


def test_seat_counts_similar_pairs(fitted, benign_accounts):
    det = fitted["seat"]
    rng = np.random.default_rng(10)
    X = uniform_account(rng, 30).astype(np.float64)
    X[10] = X[2]
    X[20] = _unit(X[2] + 0.01 * rng.standard_normal(DIM))
    counts = det.similar_pair_counts(X)
    cos = X @ X.T
    np.testing.assert_array_equal(counts, [(cos[i, :i] >= 0.9).sum() for i in range(30)])
    assert counts[10] == 1 and counts[20] == 2
    s = det.score_stream(X)
    assert np.isnan(s[:19]).all() and s[19] == pytest.approx(1 / 20) and s[29] == pytest.approx(3 / 30)
    threshold = det.calibrated_threshold([det.score_stream(a) for a in benign_accounts], fpr=0.1)
    assert np.nanmax(det.score_stream(near_duplicate_chain(rng, 60, step=0.005))) >= threshold


def test_configuration_errors():
    with pytest.raises(ConfigError):
        StatefulKnn(k=0)
    with pytest.raises(ConfigError):
        Prada(min_distances=2)
    with pytest.raises(ConfigError):
        Blacklight(match_threshold=60, top_k=50)
    with pytest.raises(ConfigError):
        BenignMmd(min_window=1)
    with pytest.raises(ConfigError):
        Seat(similarity_threshold=1.5)
