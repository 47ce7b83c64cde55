"""Batched feature rows against a plain per-account reference.

:class:`~probewatch.detect.features.FeatureBatch` computes a whole batch's features in array
calls from copies of each account's rings. The reference below recomputes each feature
from one account's ring contents with nothing but scalar NumPy reductions, the way the
definitions in ``FEATURES`` read.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from probewatch.detect.features import (
    FEATURE_NAMES,
    MIN_NORMALITY_SAMPLES,
    SIM_HIST_EDGES,
    TOPIC_RETURN_SIMILARITY,
    AccountState,
    DueRefresh,
    FeatureBatch,
    QueryFacts,
    shares_below,
    walk_steps,
    window_statistics,
)
from tests.support import unit_rows

N_CELLS = 16
NEAR_DUP, OFF_REF = 0.95, 0.3


def filled(ring: np.ndarray, n: int) -> np.ndarray:
    return ring[: min(n, ring.size)]


def lifetime_share_at_least(hist: np.ndarray, threshold: float) -> float:
    """Share of histogram mass at or above ``threshold``, linear inside the straddling bin."""
    width = SIM_HIST_EDGES[1] - SIM_HIST_EDGES[0]
    total = 0.0
    for count, lo in zip(hist, SIM_HIST_EDGES[:-1], strict=True):
        overlap = min(max((lo + width - threshold) / width, 0.0), 1.0)
        total += count * overlap
    return total / hist.sum() if hist.sum() else math.nan


def reference_features(state: AccountState) -> dict[str, float]:
    n = state.n
    out = dict.fromkeys(FEATURE_NAMES, math.nan)
    nn = filled(state.ring_nn, n).astype(np.float64)
    nn = nn[~np.isnan(nn)]
    if nn.size:
        out["nn_similarity_mean"] = nn.mean()
        out["nn_similarity_spread"] = nn.std()
        knn = filled(state.ring_knn, n).astype(np.float64)
        out["knn_similarity_mean"] = knn[~np.isnan(knn)].mean()
        out["near_duplicate_rate"] = np.mean(nn >= NEAR_DUP)
        out["near_duplicate_rate_lifetime"] = lifetime_share_at_least(state.nn_hist, NEAR_DUP)
        out["topic_return_rate"] = lifetime_share_at_least(state.nn_hist, TOPIC_RETURN_SIMILARITY)
    if nn.size >= MIN_NORMALITY_SAMPLES:
        out["min_distance_normality"] = stats.shapiro(1.0 - nn).statistic
    out["reference_similarity"] = filled(state.ring_ref, n).astype(np.float64).mean()
    cells = filled(state.ring_cell, n)
    _, counts = np.unique(cells, return_counts=True)
    p = counts / counts.sum()
    if cells.size > 1:
        out["cell_entropy"] = -(p * np.log2(p)).sum() / math.log2(min(cells.size, N_CELLS))
    out["distinct_cell_rate"] = counts.size / cells.size
    (
        out["participation_ratio"],
        out["mean_pairwise_similarity"],
        out["mmd_to_benign"],
        out["follow_up_similarity"],
    ) = state.gram_stats
    out["off_reference_rate"] = 1.0 - lifetime_share_at_least(state.ref_hist, OFF_REF)
    out["new_cell_rate"] = (state.cell_counts > 0).sum() / n
    if n >= 2:
        out["walk_away_rate"] = state.walk[1] / (n - 1)
        out["neighbourhood_probe_rate"] = state.probes[1] / (n - 1)
    return out


def random_state(rng: np.random.Generator, window: int, n: int) -> AccountState:
    state = AccountState(window, N_CELLS)
    tight = rng.random() < 0.5  # a template-like account: near-duplicates, few cells
    for i in range(n):
        nn = (
            math.nan
            if i == 0
            else float(np.clip(rng.normal(0.97 if tight else 0.5, 0.05 if tight else 0.2), -0.2, 1.0))
        )
        knn = math.nan if i == 0 else nn - abs(rng.normal(0, 0.05))
        cell = int(rng.integers(0, 3 if tight else N_CELLS))
        state.update(QueryFacts(nn, knn, float(rng.uniform(0.1, 0.9)), float(rng.uniform(0, 1)), cell), None)
    state.gram_stats[:] = rng.random(state.gram_stats.size)
    state.walk[:] = (n, rng.integers(0, max(n, 1)))
    state.probes[:] = (n, rng.integers(0, max(n, 1)))
    return state


@pytest.mark.parametrize("seed", range(6))
def test_batch_matches_reference(seed):
    rng = np.random.default_rng(seed)
    window = 32
    # Every regime: first query, short of the normality minimum, partly filled, wrapped rings.
    sizes = [1, 2, 3, MIN_NORMALITY_SAMPLES - 1, MIN_NORMALITY_SAMPLES, 20, window, window + 1, 3 * window + 7]
    states = [random_state(rng, window, n) for n in sizes]
    batch = FeatureBatch(len(states), window, N_CELLS)
    for i, state in enumerate(states):
        batch.capture(i, state)
    rows = batch.features(NEAR_DUP, OFF_REF)
    for state, row in zip(states, rows, strict=True):
        expected = reference_features(state)
        for j, name in enumerate(FEATURE_NAMES):
            if math.isnan(expected[name]):
                assert math.isnan(row[j]), (state.n, name, row[j])
            else:
                # Shapiro-Wilk: Royston's coefficients here vs SciPy's algorithm (AS R94), ~1e-4 apart.
                tol = 2e-3 if name == "min_distance_normality" else 1e-9
                assert row[j] == pytest.approx(expected[name], abs=tol), (state.n, name)


@pytest.mark.parametrize("threshold", [-0.5, float(SIM_HIST_EDGES[0]), 0.0, 0.37, float(SIM_HIST_EDGES[-1]), 1.5])
def test_shares_below_equal_the_straddling_share_and_leave_empty_rows_nan(threshold):
    rng = np.random.default_rng(4)
    hist = rng.integers(0, 5, size=(4, SIM_HIST_EDGES.size - 1))
    hist[2] = 0  # an account with no neighbour yet
    with np.errstate(invalid="ignore", divide="ignore"):
        (got,) = shares_below(hist, (threshold,))
    for row, value in zip(hist, got, strict=True):
        if row.sum() == 0:
            assert math.isnan(value)
        else:
            assert value == pytest.approx(1.0 - lifetime_share_at_least(row, threshold), abs=1e-12)


def test_one_state_features_equal_its_batch_row():
    rng = np.random.default_rng(11)
    states = [random_state(rng, 32, n) for n in (5, 40, 90)]
    batch = FeatureBatch(3, 32, N_CELLS)
    for i, s in enumerate(states):
        batch.capture(i, s)
    rows = batch.features(NEAR_DUP, OFF_REF)
    for s, row in zip(states, rows, strict=True):  # equal up to BLAS summation order
        np.testing.assert_allclose(s.features(NEAR_DUP, OFF_REF), row, rtol=1e-12, atol=0)


@pytest.mark.parametrize("seed", range(4))
def test_a_lone_row_takes_the_short_path_to_the_same_bits(seed):
    """A one-item batch (a lone query) is computed by its own short path; it must give the
    array path's values bit for bit, NaN where that gives NaN, in every regime: first query,
    short of the normality minimum, partly filled and wrapped rings, rings with gaps."""
    rng = np.random.default_rng(100 + seed)
    window = 32
    for n in [1, 2, 3, MIN_NORMALITY_SAMPLES - 1, MIN_NORMALITY_SAMPLES, 20, window, window + 1, 3 * window + 7]:
        state = random_state(rng, window, n)
        if n > 4 and rng.random() < 0.5:  # a gap in a ring (a query with no neighbour mid-stream)
            state.ring_nn[1] = state.ring_knn[1] = np.nan
            state.ring_ref[2] = np.nan
        batch = FeatureBatch(1, window, N_CELLS)
        batch.capture(0, state)
        lone = batch.features(NEAR_DUP, OFF_REF)
        arrays = batch._array_features(NEAR_DUP, OFF_REF)
        assert lone.shape == arrays.shape == (1, len(FEATURE_NAMES))
        assert lone.tobytes() == arrays.tobytes(), (n, lone - arrays)  # bit for bit, NaN included


def test_capture_copies_state_at_that_moment():
    rng = np.random.default_rng(3)
    state = random_state(rng, 32, 10)
    batch = FeatureBatch(2, 32, N_CELLS)
    batch.capture(0, state)
    before = state.features(NEAR_DUP, OFF_REF)
    state.update(QueryFacts(0.99, 0.98, 0.5, 0.5, 0), None)
    batch.capture(1, state)
    rows = batch.features(NEAR_DUP, OFF_REF)
    np.testing.assert_allclose(rows[0], before, rtol=1e-12, atol=0)
    assert batch.n.tolist() == [10, 11]
    assert not np.array_equal(rows[0], rows[1], equal_nan=True)


def test_follow_up_similarity_separates_conversations_from_independent_samples():
    rng = np.random.default_rng(3)
    dim, m = 64, 32

    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    # a conversation: each turn a small step from the last; samples: independent draws
    chain = [unit(rng.standard_normal(dim))]
    for _ in range(m - 1):
        chain.append(unit(chain[-1] + 0.6 * unit(rng.standard_normal(dim))))
    chain = np.asarray(chain, dtype=np.float32)
    centre = unit(rng.standard_normal(dim))
    samples = unit(centre + 0.5 * rng.standard_normal((m, dim)) / np.sqrt(dim) * 8).astype(np.float32)
    got = {}
    for name, x in (("chain", chain), ("samples", samples)):
        state = AccountState(m, N_CELLS)
        state.n = m
        state.refresh_gram_stats(x, 1.0, 1.0)
        gram = x.astype(np.float64) @ x.T.astype(np.float64)
        consecutive = np.mean([gram[i, i + 1] for i in range(m - 1)])
        pairs = gram[np.triu_indices(m, 1)].mean()
        assert state.gram_stats[3] == pytest.approx(consecutive - pairs, abs=1e-5)  # brute force
        got[name] = state.gram_stats[3]
    assert got["chain"] > 0.2 and abs(got["samples"]) < 0.05


def _walk(rng, m: int, dim: int = 48) -> np.ndarray:
    """A perturbation chain: each row a small step from the one before."""
    rows = [unit_rows(rng.standard_normal((1, dim)))[0]]
    for _ in range(m - 1):
        rows.append(unit_rows((rows[-1] + 0.35 * unit_rows(rng.standard_normal((1, dim)))[0])[None])[0])
    return np.asarray(rows, dtype=np.float32)


def test_window_statistics_are_the_same_alone_and_in_any_stack():
    """A window's statistics and walk-away steps do not depend on which other windows share
    its stack (so a batch equals one query at a time), and match their definitions written
    out by hand: the covariance spectrum's participation ratio, the mean over distinct pairs,
    the unbiased MMD^2 from parts, consecutive minus all pairs."""
    rng = np.random.default_rng(21)
    dim, gamma, self_kernel = 48, 0.7, 0.31
    lengths = [2, 3, 5, 5, 5, 9, 32, 32, 128]
    due = []
    for j, m in enumerate(lengths):
        rows = _walk(rng, m, dim) if j % 2 else unit_rows(rng.standard_normal((m, dim))).astype(np.float32)
        due.append(DueRefresh(rows, rng.random(m).astype(np.float32), int(rng.integers(0, m))))
    together, steps_together = window_statistics(due, self_kernel, gamma)
    for order in (list(range(len(due))), list(range(len(due)))[::-1]):
        shuffled, shuffled_steps = window_statistics([due[j] for j in order], self_kernel, gamma)
        for pos, j in enumerate(order):
            assert np.array_equal(shuffled[pos], together[j]) and shuffled_steps[pos] == steps_together[j]
    for j, d in enumerate(due):
        alone, alone_steps = window_statistics([d], self_kernel, gamma)
        assert np.array_equal(alone[0], together[j]) and alone_steps[0] == steps_together[j], lengths[j]

        x = d.rows.astype(np.float64)
        m = x.shape[0]
        spectrum = np.linalg.eigvalsh(np.cov(x.T, bias=True))
        gram = x @ x.T
        off = ~np.eye(m, dtype=bool)
        pairs = gram[off].mean()
        kxx = np.exp(-gamma * (2.0 - 2.0 * gram))[off].mean()
        want = [
            spectrum.sum() ** 2 / (spectrum**2).sum(),
            pairs,
            kxx + self_kernel - 2.0 * d.kernel_means.astype(np.float64).mean(),
            np.mean([gram[i, i + 1] for i in range(m - 1)]) - pairs,
        ]
        np.testing.assert_allclose(together[j], want, rtol=1e-5, atol=1e-6, err_msg=str(lengths[j]))
        assert steps_together[j] == walk_steps((d.rows @ d.rows.T).astype(np.float64), d.first_unjudged)
    assert steps_together[[j for j, m in enumerate(lengths) if m > 5 and j % 2]].sum() > 0  # the walks step


@pytest.mark.parametrize("pending_bytes", [None, 1, 6000], ids=["one-flush", "flush-each", "flush-every-few"])
def test_a_batch_refreshes_like_one_query_at_a_time(pending_bytes, monkeypatch):
    """Young accounts interleaved in one batch (each refreshing at every query, and each
    wrapping its 16-slot ring inside the batch) end with the same state and captured rows as
    the same items folded in one at a time, whether the batch's pending refreshes are computed
    at its end or flushed along the way."""
    import probewatch.detect.features as features
    from probewatch.detect.features import advance

    if pending_bytes is not None:
        monkeypatch.setattr(features, "PENDING_WINDOW_BYTES", pending_bytes)
    from probewatch.detect.reference import BenignReference

    rng = np.random.default_rng(5)
    reference = BenignReference(unit_rows(rng.standard_normal((256, 24))), unit_rows(rng.standard_normal((8, 24))), 0.7)
    accounts = rng.integers(0, 2, size=60)
    vectors = {a: _walk(rng, 60, 24) for a in range(2)}
    seen = dict.fromkeys(range(2), 0)
    items = []
    for a in accounts:
        items.append((int(a), seen[a]))
        seen[a] += 1
    # each query's own kernel mean: a pending refresh must read the values of its own window
    facts = [QueryFacts(0.5, 0.4, 0.6, float(rng.uniform(0.1, 0.5)), int(rng.integers(0, 8))) for _ in items]

    def run(batches):
        states = {a: AccountState(16, 8) for a in range(2)}
        rows = []
        for start, stop in batches:
            part = items[start:stop]
            batch = advance(
                [states[a] for a, _ in part],
                facts[start:stop],
                [None] * len(part),
                16,
                4,
                lambda i, part=part: vectors[part[i][0]][: part[i][1] + 1],
                reference,
            )
            rows.append(batch.features(0.95, 0.5))
        return states, np.concatenate(rows)

    together_states, together_rows = run([(0, 60)])
    alone_states, alone_rows = run([(i, i + 1) for i in range(60)])
    np.testing.assert_array_equal(together_rows, alone_rows)
    for a in range(2):
        assert np.array_equal(together_states[a].gram_stats, alone_states[a].gram_stats)
        assert np.array_equal(together_states[a].walk, alone_states[a].walk)
    assert sum(int(s.walk[1]) for s in together_states.values()) > 0
