"""The look-alike search behind every score: both channels against brute force, the rank
channel's bounds and the topic features it leaves out, the campaign evidence, look-alike
rule 2 (repetition is not evidence), and calibrations saved before the rank channel or rule 2
existed."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.special import ndtri

from probewatch.detect.features import FEATURE_NAMES
from probewatch.detect.scoring import (
    CHANNELS,
    HUMAN_SIDE_HIGH,
    LOOKALIKE_RULE,
    N_BINS,
    N_FEATURES,
    NEIGHBOURS,
    RANK_CHANNEL_SKIPS,
    REPETITION_FEATURES,
    Z_AT_Q99,
    Calibration,
    Detector,
    bin_of,
    lookalike_skips,
    nearest_k,
)
from probewatch.errors import CalibrationError
from tests.support import blas_sums_rows_alike


def _samples(seed: int = 0) -> list[np.ndarray]:
    """Benign feature rows per bin with what real tables have: features of very different
    spreads, ties, a feature undefined in short bins, and scattered NaN."""
    rng = np.random.default_rng(seed)
    spreads = rng.uniform(0.01, 10.0, N_FEATURES)
    out = []
    for b in range(N_BINS):
        rows = rng.standard_normal((200 + 20 * b, N_FEATURES)) * spreads
        rows[:, 3] = np.round(rows[:, 3])  # a counting feature: many ties
        if b < 4:
            rows[:, 4] = np.nan  # undefined before enough queries (min_distance_normality)
        rows[rng.random(rows.shape) < 0.02] = np.nan
        out.append(rows)
    return out


def _norm(channels: int, favour: int | None = None) -> np.ndarray:
    """Distance scales per channel and bin; ``favour`` shrinks one channel's scale so it scores highest."""
    rng = np.random.default_rng(1)
    med = rng.uniform(1.0, 2.0, (channels, N_BINS, 1))
    norm = np.concatenate([med, med + rng.uniform(0.5, 1.5, (channels, N_BINS, 1))], axis=2)
    if favour is not None:
        norm[favour] /= 1e3
    return norm


def _points_by_hand(cal: Calibration, x: np.ndarray, b: int, channel: int) -> np.ndarray:
    """Rows of ``x`` in one channel's scale for bin ``b``, feature by feature and in float64."""
    x = np.atleast_2d(np.asarray(x, dtype=np.float64)).copy()
    out = np.zeros_like(x)
    for j in range(N_FEATURES):
        if not cal.known[j] or FEATURE_NAMES[j] in lookalike_skips(cal.lookalike_rule):
            continue
        if cal.lookalike_rule >= 2 and FEATURE_NAMES[j] in HUMAN_SIDE_HIGH:
            x[:, j] = np.where(x[:, j] > cal.median[b, j], cal.median[b, j], x[:, j])
        if CHANNELS[channel] == "spread":
            out[:, j] = np.nan_to_num((x[:, j] - cal.median[b, j]) / cal.scale[b, j])
            continue
        if FEATURE_NAMES[j] in RANK_CHANNEL_SKIPS:
            continue
        benign = cal.samples[b][:, j]
        benign = benign[~np.isnan(benign)]
        m = benign.size
        for i, value in enumerate(x[:, j]):
            if m and not np.isnan(value):
                mid_rank = ((benign < value).sum() + (benign <= value).sum()) / 2.0
                out[i, j] = ndtri(np.clip(mid_rank / m, 0.5 / m, 1 - 0.5 / m))
    return out


@pytest.fixture(scope="module")
def calibration() -> Calibration:
    return Calibration(_samples(), np.linspace(0.0, 3.0, 100), 0.5, distance_norm=_norm(len(CHANNELS)))


def _with_rule(cal: Calibration, rule: int, evidence_norm: np.ndarray | None = None) -> Calibration:
    """``cal``'s benign rows under look-alike rule ``rule`` (and a campaign-evidence scale)."""
    return Calibration(
        cal.samples,
        np.linspace(0.0, 3.0, 100),
        0.5,
        distance_norm=_norm(len(CHANNELS)),
        lookalike_rule=rule,
        evidence_norm=evidence_norm,
    )


def _queries(cal: Calibration, b: int, seed: int = 2) -> np.ndarray:
    rng = np.random.default_rng(seed)
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the feature no row of a short bin has
        x = np.nanmedian(cal.samples[b], 0) + rng.standard_normal((40, N_FEATURES)) * np.nanstd(cal.samples[b], 0)
    x[:5] = cal.samples[b][:5]  # values that tie benign values exactly
    x[5, 3] = np.nan
    x[6, 0] = 1e9  # far past every benign value
    return x


@pytest.mark.parametrize("b", [2, 7])
def test_rank_channel_equals_mid_ranks_by_hand(calibration, b):
    x = _queries(calibration, b)
    got = calibration._points(x, b, len(CHANNELS))[CHANNELS.index("rank")]
    np.testing.assert_allclose(got, _points_by_hand(calibration, x, b, CHANNELS.index("rank")), atol=1e-6)


def test_rank_channel_is_bounded_where_the_spread_channel_is_not(calibration):
    b = 7
    col = calibration.samples[b][:, 0]
    m = int(np.isfinite(col).sum())
    far = np.nanmedian(calibration.samples[b], axis=0)[None, :].repeat(2, axis=0)  # bin 7 has every feature
    far[0, 0], far[1, 0] = np.nanmax(col) * 1.01, 1e9
    points = calibration._points(far, b, len(CHANNELS))
    rank, spread = points[CHANNELS.index("rank"), :, 0], points[CHANNELS.index("spread"), :, 0]
    assert rank[0] == rank[1] == pytest.approx(ndtri(1 - 0.5 / m), rel=1e-6)  # past the benign maximum: the top rank
    assert spread[1] > 1e6 * spread[0] > 0


@pytest.mark.parametrize("favour", range(len(CHANNELS)))
@pytest.mark.parametrize("b", [2, 7])
def test_neighbours_equal_brute_force_in_every_channel(b, favour):
    calibration = Calibration(_samples(), np.linspace(0.0, 3.0, 100), 0.5, distance_norm=_norm(len(CHANNELS), favour))
    x = _queries(calibration, b)
    n = np.full(x.shape[0], int(2**b))
    assert (calibration.donor_bin[bin_of(n)] == b).all()
    found = calibration.neighbours(x, n)
    for c in range(len(CHANNELS)):
        table = _points_by_hand(calibration, calibration.samples[b], b, c)
        point = _points_by_hand(calibration, x, b, c)
        d = np.sqrt(((point[:, None, :] - table[None, :, :]) ** 2).sum(axis=2))
        np.testing.assert_allclose(found.distance[:, c], np.sort(d, axis=1)[:, NEIGHBOURS - 1], rtol=1e-3, atol=1e-3)
    top = found.channel_scores.argmax(axis=1)
    assert (np.delete(top, 6) == favour).all()  # row 6, 1e9 past the benign values, wins in spread anyway
    # the reported look-alikes and gap are the top channel's
    for i in range(x.shape[0]):
        table = _points_by_hand(calibration, calibration.samples[b], b, int(top[i]))
        point = _points_by_hand(calibration, x[i : i + 1], b, int(top[i]))[0]
        d = np.sqrt(((table - point) ** 2).sum(axis=1))
        assert d[found.nearest[i]].max() <= np.sort(d)[NEIGHBOURS - 1] * (1 + 1e-6) + 1e-3
        np.testing.assert_allclose(found.gap[i], point - table[found.nearest[i]].mean(axis=0), rtol=1e-5, atol=2e-3)


def test_nearest_k_equals_a_stable_sort():
    """The k smallest per row, smallest first and ties to the lower index, as a stable argsort
    gives them; the k-th value exactly np.partition's."""
    rng = np.random.default_rng(4)
    d2 = rng.integers(0, 40, size=(3, 7, 300)).astype(np.float32)  # many ties
    d2[0, 0] = 5.0  # a row of one value
    for k in (1, 5):
        expected_idx = np.argsort(d2, axis=-1, kind="stable")[..., :k]
        expected_kth = np.partition(d2, k - 1, axis=-1)[..., k - 1]
        idx, kth = nearest_k(d2.copy(), k)
        np.testing.assert_array_equal(idx, expected_idx)
        np.testing.assert_array_equal(kth, expected_kth)
    lone = rng.standard_normal((1, 1, 4096)).astype(np.float32)
    idx, kth = nearest_k(lone.copy(), NEIGHBOURS)
    assert idx.shape == (1, 1, NEIGHBOURS) and kth[0, 0] == np.sort(lone[0, 0])[NEIGHBOURS - 1]


@pytest.mark.parametrize("rule", [1, 2])
def test_a_lone_query_is_searched_bit_for_bit_as_in_a_batch(calibration, rule):
    """One row alone, the same row in a batch over several bins, and calibration's chunked
    distances: the same arithmetic, so the same bits (a lone query is judged exactly as the
    benign rows that set its thresholds were)."""
    cal = calibration if rule == 1 else _with_rule(calibration, 2, _norm(1)[0] * 1.5)
    x = np.concatenate([_queries(cal, 2)[:8], _queries(cal, 7)[:8]])
    n = np.array([4] * 8 + [128] * 8)
    batch = cal.neighbours(x, n)
    # bit for bit where the BLAS sums a row alike in any batch; within float32 rounding elsewhere
    same = np.testing.assert_array_equal if blas_sums_rows_alike() else _within_float32_rounding
    for i in range(x.shape[0]):
        alone = cal.neighbours(x[i : i + 1], n[i : i + 1])
        for field in batch._fields:
            same(getattr(alone, field)[0], getattr(batch, field)[i], err_msg=field)
    same(cal.raw_distances(x, n, chunk=5), batch.distance)


def _within_float32_rounding(actual, desired, err_msg: str = "") -> None:
    np.testing.assert_allclose(actual, desired, rtol=2e-6, atol=1e-6, err_msg=err_msg)


def test_a_query_scores_the_mean_of_its_channels(calibration):
    x = _queries(calibration, 7)
    n = np.full(x.shape[0], 128)
    found = calibration.neighbours(x, n)
    np.testing.assert_array_equal(calibration.signed_scores(found.distance, n), found.channel_scores.mean(axis=1))
    # each channel on its own bin's benign scale: 0 at the median distance, 2.33 at the 99th percentile
    med, q99 = calibration.distance_norm[:, 7, 0], calibration.distance_norm[:, 7, 1]
    np.testing.assert_allclose(found.channel_scores, 2.3263 * (found.distance - med) / (q99 - med))


def test_channels_survive_a_save_and_load(calibration):
    arrays = calibration.to_arrays()
    assert arrays["cal_distance_norm"].shape == (N_BINS, 2) and "cal_rank_distance_norm" in arrays
    loaded = Calibration.from_arrays(arrays, calibration.meta())
    assert loaded.n_channels == len(CHANNELS)
    # saved tables are float32: the same calibration built from rounded rows scores identically
    rounded = [s.astype(np.float32).astype(np.float64) for s in calibration.samples]
    expected = Calibration(rounded, calibration.account_max_scores, 0.5, distance_norm=calibration.distance_norm)
    x, n = _queries(calibration, 7), np.full(40, 128)
    np.testing.assert_array_equal(loaded.neighbours(x, n).channel_scores, expected.neighbours(x, n).channel_scores)


def test_a_calibration_saved_before_the_rank_channel_scores_with_spread_alone():
    """Its thresholds were set by the spread score: it keeps being judged by that alone."""
    old = Calibration(_samples(), np.linspace(0.0, 3.0, 100), 0.5, distance_norm=_norm(1)[0], lookalike_rule=1)
    arrays = dict(old.to_arrays())
    del arrays["cal_lookalike_rule"]  # such files predate rule 2
    assert "cal_rank_distance_norm" not in arrays
    loaded = Calibration.from_arrays(arrays, old.meta())
    assert old.n_channels == loaded.n_channels == 1
    x, n = _queries(old, 7), np.full(40, 128)
    found = loaded.neighbours(x, n)
    assert found.channel_scores.shape == (40, 1)
    spread = _points_by_hand(old, x, 7, 0)
    table = _points_by_hand(old, old.samples[7], 7, 0)
    d = np.sqrt(((spread[:, None, :] - table[None]) ** 2).sum(axis=2))
    np.testing.assert_allclose(found.distance[:, 0], np.sort(d, axis=1)[:, NEIGHBOURS - 1], rtol=1e-3, atol=1e-3)


def test_a_distance_table_of_the_wrong_shape_is_refused(calibration):
    arrays = dict(calibration.to_arrays())
    arrays["cal_rank_distance_norm"] = np.zeros((3, 2))
    with pytest.raises(Exception, match=r"shape \(14, 2\)"):
        Calibration.from_arrays(arrays, calibration.meta())


def test_the_rank_channel_leaves_out_the_topic_features(calibration):
    """A user of a subject no reference corpus holds is far out on all three at once: only the
    spread channel, where they always counted, sees them."""
    b = 7
    base = np.nanmedian(calibration.samples[b], axis=0)
    off_topic = base.copy()
    for name in RANK_CHANNEL_SKIPS:
        j = FEATURE_NAMES.index(name)
        off_topic[j] = np.nanmax(calibration.samples[b][:, j]) * 10
    points = calibration._points(np.stack([base, off_topic]), b, len(CHANNELS))
    rank, spread = points[CHANNELS.index("rank")], points[CHANNELS.index("spread")]
    np.testing.assert_array_equal(rank[0], rank[1])
    skipped = [FEATURE_NAMES.index(name) for name in RANK_CHANNEL_SKIPS]
    assert (np.abs(spread[1, skipped] - spread[0, skipped]) > 1).all()


def test_campaign_evidence_is_the_spread_channels_score_under_rule_1(calibration):
    calibration = _with_rule(calibration, 1)
    detector = Detector(calibration, target_fpr=0.001, watch_fpr=0.01)
    x = _queries(calibration, 7)
    n = np.full(x.shape[0], 128)
    rings = [np.zeros(16) for _ in range(x.shape[0])]
    scores, _, _, evidence = detector.judge_with_evidence(x, n, rings)
    found = calibration.neighbours(x, n)
    np.testing.assert_allclose(evidence, found.channel_scores[:, CHANNELS.index("spread")])
    # while the account score is built from the mean of both channels (one of 16 ring slots filled)
    np.testing.assert_allclose(scores, np.maximum(found.channel_scores.mean(axis=1), 0.0) / 16, rtol=1e-6)


def _evidence_by_hand(cal: Calibration, x: np.ndarray, n: int, evidence_norm: np.ndarray) -> np.ndarray:
    """Rule 1's spread-channel distance to the NEIGHBOURS-th nearest benign row, brute force in
    float64, on the scale ``evidence_norm`` sets for the bin."""
    b = int(cal.donor_bin[bin_of(n)])
    rule_1 = [j for j in range(N_FEATURES) if cal.known[j] and FEATURE_NAMES[j] not in lookalike_skips(1)]

    def scaled(rows):
        out = np.zeros((rows.shape[0], N_FEATURES))
        out[:, rule_1] = np.nan_to_num((rows[:, rule_1] - cal.median[b, rule_1]) / cal.scale[b, rule_1])
        return out

    table, points = scaled(cal.samples[b]), scaled(np.atleast_2d(x))
    d = np.sqrt(((points[:, None, :] - table[None, :, :]) ** 2).sum(axis=2))
    kth = np.sort(d, axis=1)[:, min(NEIGHBOURS, table.shape[0]) - 1]
    med, q99 = evidence_norm[b]
    return Z_AT_Q99 * (kth - med) / (q99 - med)


@pytest.mark.parametrize("b", [3, 7])
def test_campaign_evidence_keeps_rule_1s_coordinates_under_rule_2(calibration, b):
    """A crowd re-sending and perturbing seeds together is what the campaign layer looks for, so
    its per-query evidence keeps the repetition features rule 2 takes out of the account score,
    on its own benign scale."""
    evidence_norm = _norm(1)[0] * 1.5
    cal = _with_rule(calibration, 2, evidence_norm)
    x = _queries(cal, b)[:20]
    x[6, 0] = 50.0  # far, but not so far that float32 rounding swamps the comparison
    n = np.full(x.shape[0], 2**b)
    found = cal.neighbours(x, n)
    np.testing.assert_allclose(found.evidence, _evidence_by_hand(cal, x, 2**b, evidence_norm), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        cal.evidence_scores(cal.raw_evidence_distances(x, n), n), found.evidence, rtol=1e-5, atol=1e-5
    )
    rings = [np.zeros(16) for _ in range(x.shape[0])]
    *_, evidence = Detector(cal, target_fpr=0.001, watch_fpr=0.01).judge_with_evidence(x, n, rings)
    np.testing.assert_array_equal(evidence, found.evidence)
    # repetition moves the evidence, though not the account's look-alike distance
    base = np.nanmedian(cal.samples[7], axis=0)
    repetitive = base.copy()
    j = FEATURE_NAMES.index("near_duplicate_rate")
    repetitive[j] = base[j] + 20.0 * cal.scale[7, j]
    both = cal.neighbours(np.stack([base, repetitive]), np.full(2, 128))
    np.testing.assert_array_equal(both.distance[1], both.distance[0])
    assert both.evidence[1] > both.evidence[0] + 1.0


def test_the_campaign_evidence_scale_is_saved_and_checked(calibration):
    evidence_norm = _norm(1)[0]
    cal = _with_rule(calibration, 2, evidence_norm)
    arrays = dict(cal.to_arrays())
    loaded = Calibration.from_arrays(arrays, cal.meta())
    np.testing.assert_array_equal(loaded.evidence_norm, evidence_norm)
    x, n = _queries(cal, 7), np.full(40, 128)
    # samples are stored in float32
    np.testing.assert_allclose(loaded.neighbours(x, n).evidence, cal.neighbours(x, n).evidence, rtol=1e-5)
    arrays["cal_evidence_distance_norm"] = np.full((N_BINS, 2), np.nan)
    with pytest.raises(CalibrationError, match="campaign-evidence scale must be finite"):
        Calibration.from_arrays(arrays, cal.meta())


def test_repetition_is_not_evidence_under_rule_2(calibration):
    """Nearly duplicating earlier queries, failing PRADA's normality test and building on the
    last turn more than any benign account are what editing and re-sending users do: under
    rule 2 none of it moves a row away from its benign look-alikes; too little follow-up does."""
    assert calibration.lookalike_rule == LOOKALIKE_RULE == 2  # the default
    calibration = _with_rule(calibration, 2)
    b = 7
    base = np.nanmedian(calibration.samples[b], axis=0)
    repetitive = base.copy()
    for name in REPETITION_FEATURES + HUMAN_SIDE_HIGH:
        j = FEATURE_NAMES.index(name)
        away = -20.0 if name == "min_distance_normality" else 20.0  # the repetitive side
        repetitive[j] = base[j] + away * calibration.scale[b, j]
    no_follow_up = base.copy()
    j = FEATURE_NAMES.index("follow_up_similarity")
    no_follow_up[j] = np.nanmin(calibration.samples[b][:, j]) - 10 * calibration.scale[b, j]
    n = np.full(3, 2**b)
    found = calibration.neighbours(np.stack([base, repetitive, no_follow_up]), n)
    np.testing.assert_array_equal(found.distance[1], found.distance[0])
    assert (found.distance[2] > found.distance[0]).all()


def test_a_calibration_saved_before_rule_2_keeps_scoring_repetition(calibration):
    """Its thresholds were set with repetition as evidence: it loads with rule 1 and scores so."""
    calibration = _with_rule(calibration, 2)
    arrays = dict(calibration.to_arrays())
    assert int(arrays["cal_lookalike_rule"]) == 2
    assert Calibration.from_arrays(arrays, calibration.meta()).lookalike_rule == 2
    del arrays["cal_lookalike_rule"]
    old = Calibration.from_arrays(arrays, calibration.meta())
    assert old.lookalike_rule == 1
    b = 7
    base = np.nanmedian(calibration.samples[b], axis=0)
    repetitive = base.copy()
    j = FEATURE_NAMES.index("near_duplicate_rate")
    repetitive[j] = base[j] + 20.0 * calibration.scale[b, j]
    n = np.full(2, 2**b)
    found = old.neighbours(np.stack([base, repetitive]), n)
    assert (found.distance[1] > found.distance[0]).all()
    x = _queries(calibration, b)
    for channel in range(len(CHANNELS)):
        np.testing.assert_allclose(
            old._points(x, b, len(CHANNELS))[channel], _points_by_hand(old, x, b, channel), atol=1e-6
        )


def test_rule_2_refuses_a_calibration_with_one_channel():
    with pytest.raises(CalibrationError, match="look-alike rule 2 scores with every channel"):
        Calibration(_samples(), np.linspace(0.0, 3.0, 100), 0.5, distance_norm=_norm(1)[0], lookalike_rule=2)


def test_an_unknown_lookalike_rule_is_refused(calibration):
    arrays = dict(calibration.to_arrays())
    arrays["cal_lookalike_rule"] = np.int64(7)
    with pytest.raises(Exception, match="look-alike rule must be 1 or 2; got 7"):
        Calibration.from_arrays(arrays, calibration.meta())
