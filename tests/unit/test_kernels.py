"""Every kernel against a direct float64 reference, and every CuPy twin against NumPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import pdist

from probewatch.kernels import (
    assign_cells,
    coverage_stats,
    dispersion_summary,
    mean_pairwise_similarity_from_gram,
    median_heuristic_gamma,
    mmd2_from_parts,
    mmd2_unbiased,
    participation_ratio,
    participation_ratio_from_gram,
    rbf_from_similarity,
    segmented_topk,
    segmented_topk_numpy,
    shapiro_wilk_w,
)
from probewatch.kernels.backend import MAX_TOPK
from tests.support import requires_gpu, unit_rows

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------------------------
# segmented top-k
# ---------------------------------------------------------------------------------------
def brute_topk(queries, base, offsets, segment, visible, k):
    """Per query: float64 sims to the visible prefix of its segment, (-sim, index) order."""
    n = queries.shape[0]
    sims = np.full((n, k), -np.inf)
    idx = np.full((n, k), -1, dtype=np.int64)
    for i in range(n):
        start = int(offsets[segment[i]])
        rows = base[start : start + int(visible[i])].astype(np.float64)
        s = rows @ queries[i].astype(np.float64)
        order = sorted(range(len(s)), key=lambda r: (-s[r], r))[:k]
        sims[i, : len(order)] = s[order]
        idx[i, : len(order)] = order
    return sims, idx


@st.composite
def segmented_layouts(draw, integer_valued: bool):
    seg_sizes = draw(st.lists(st.integers(0, 12), min_size=1, max_size=6))
    dim = draw(st.integers(1, 8))
    k = draw(st.integers(1, 10))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    total = sum(seg_sizes)
    if integer_valued:  # small integers: exact products, so ties are exact and common
        base = rng.integers(-2, 3, size=(total, dim)).astype(np.float32)
    else:
        base = rng.standard_normal((total, dim)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(seg_sizes)]).astype(np.int64)
    n_q = draw(st.integers(0, 15))
    segment = rng.integers(0, len(seg_sizes), size=n_q).astype(np.int64)
    # visible in [0, size] per query, zero-visible queries included
    visible = np.array([rng.integers(0, seg_sizes[s] + 1) for s in segment], dtype=np.int64)
    if integer_valued:
        queries = rng.integers(-2, 3, size=(n_q, dim)).astype(np.float32)
    else:
        queries = rng.standard_normal((n_q, dim)).astype(np.float32)
    return queries, base, offsets, segment, visible, k


def _twin_and_brute_force(layout):
    """(queries, visible, k, twin sims, twin idx, reference sims, reference idx) for one layout."""
    queries, base, offsets, segment, visible, k = layout
    sims, idx = segmented_topk_numpy(queries, base, offsets, segment, visible, k)
    ref_s, ref_i = brute_topk(queries, base, offsets, segment, visible, k)
    return queries, visible, k, sims, idx, ref_s, ref_i


@FAST
@given(segmented_layouts(integer_valued=True))
def test_segmented_topk_numpy_exact_ties_go_to_lower_index(layout):
    queries, visible, k, sims, idx, ref_s, ref_i = _twin_and_brute_force(layout)
    assert sims.shape == (len(queries), k) and idx.shape == (len(queries), k)
    np.testing.assert_array_equal(sims, ref_s.astype(np.float32))
    np.testing.assert_array_equal(idx, ref_i)
    # missing neighbours are -inf / -1 exactly where fewer than k rows are visible
    for i in range(len(queries)):
        have = min(k, int(visible[i]))
        assert np.all(idx[i, have:] == -1) and np.all(np.isneginf(sims[i, have:]))
        assert np.all(idx[i, :have] >= 0) and np.all(idx[i, :have] < visible[i])


@FAST
@given(segmented_layouts(integer_valued=False))
def test_segmented_topk_numpy_random_matches_brute_force(layout):
    queries, _visible, k, sims, idx, ref_s, ref_i = _twin_and_brute_force(layout)
    finite = np.isfinite(ref_s)
    np.testing.assert_array_equal(np.isfinite(sims), finite)
    np.testing.assert_allclose(sims[finite], ref_s[finite], rtol=0, atol=1e-5)
    # sims descending
    assert np.all(np.diff(np.where(finite, sims, -1e30), axis=1) <= 0)
    # indices agree wherever the neighbouring gaps are clear of float32 rounding
    for i in range(len(queries)):
        row = ref_s[i]
        for j in range(k):
            if not np.isfinite(row[j]):
                assert idx[i, j] == -1
                continue
            gaps = [abs(row[j] - row[t]) for t in (j - 1, j + 1) if 0 <= t < k and np.isfinite(row[t])]
            if all(g > 1e-4 for g in gaps):
                assert idx[i, j] == ref_i[i, j]


def test_segmented_topk_k_bounds_and_shapes():
    q = np.ones((2, 3), np.float32)
    b = np.ones((4, 3), np.float32)
    off = np.array([0, 4])
    seg = np.zeros(2, np.int64)
    vis = np.array([4, 0])
    with pytest.raises(ValueError, match="k must be between 1"):
        segmented_topk_numpy(q, b, off, seg, vis, 0)
    with pytest.raises(ValueError, match="k must be between 1"):
        segmented_topk_numpy(q, b, off, seg, vis, MAX_TOPK + 1)
    with pytest.raises(ValueError, match="same width"):
        segmented_topk_numpy(q, np.ones((4, 2), np.float32), off, seg, vis, 2)
    with pytest.raises(ValueError, match="query_segment"):
        segmented_topk_numpy(q, b, off, seg[:1], vis, 2)
    # the dispatcher picks the NumPy twin for NumPy input and gives the same answer
    s1, i1 = segmented_topk(q, b, off, seg, vis, 2)
    s2, i2 = segmented_topk_numpy(q, b, off, seg, vis, 2)
    np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(i1, i2)
    assert i1[0].tolist() == [0, 1] and i1[1].tolist() == [-1, -1]


# ---------------------------------------------------------------------------------------
# dispersion
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dist", ["normal", "uniform", "exponential", "heavy", "bimodal"])
def test_shapiro_wilk_w_matches_scipy(dist):
    rng = np.random.default_rng(hash(dist) % 2**32)
    for n in [*list(range(8, 21)), 25, 37, 50, 64, 100, 128, 200, 333, 500]:
        x = {
            "normal": lambda n: rng.standard_normal(n),
            "uniform": lambda n: rng.uniform(size=n),
            "exponential": lambda n: rng.exponential(size=n),
            "heavy": lambda n: rng.standard_t(2, size=n),
            "bimodal": lambda n: np.concatenate([rng.normal(0, 1, n // 2), rng.normal(6, 1, n - n // 2)]),
        }[dist](n)
        w = float(shapiro_wilk_w(x))
        assert abs(w - stats.shapiro(x).statistic) < 2e-3, (dist, n)


def test_shapiro_wilk_w_rows_point_mass_and_errors():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((5, 40))
    w = shapiro_wilk_w(x)
    assert w.shape == (5,)
    for r in range(5):
        assert abs(w[r] - stats.shapiro(x[r]).statistic) < 2e-3
    assert float(shapiro_wilk_w(np.full(20, 0.3))) == 1.0
    # scale and shift invariant
    assert abs(float(shapiro_wilk_w(3 * x[0] + 7)) - float(w[0])) < 1e-12
    with pytest.raises(ValueError, match="at least 3"):
        shapiro_wilk_w(np.zeros(2))


@FAST
@given(st.integers(1, 300), st.floats(0.0, 1.0), st.integers(0, 2**32 - 1))
def test_dispersion_summary_matches_numpy(n, thr, seed):
    rng = np.random.default_rng(seed)
    d = rng.uniform(0, 1, size=n) ** 2
    got = dispersion_summary(d, thr)
    want = [d.mean(), d.std(), *np.quantile(d, [0.1, 0.5, 0.9]), np.mean(d <= thr)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_dispersion_summary_rejects_empty():
    with pytest.raises(ValueError, match="non-empty 1-D"):
        dispersion_summary(np.zeros(0), 0.1)


# ---------------------------------------------------------------------------------------
# coverage
# ---------------------------------------------------------------------------------------
def direct_coverage(counts):
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    distinct = float((c > 0).sum())
    if total == 0:
        return [0.0, 0.0, 0.0]
    h = -sum(v / total * math.log2(v / total) for v in c if v > 0)
    norm = h / math.log2(max(min(total, len(c)), 2)) if total > 1 else 0.0
    return [distinct, h, norm]


@FAST
@given(
    st.lists(st.lists(st.integers(0, 30), min_size=1, max_size=20), min_size=1, max_size=6).filter(
        lambda rows: len({len(r) for r in rows}) == 1
    )
)
def test_coverage_stats_matches_direct_entropy(rows):
    counts = np.asarray(rows)
    got = coverage_stats(counts)
    assert got.shape == (len(rows), 3)
    for r in range(len(rows)):
        np.testing.assert_allclose(got[r], direct_coverage(counts[r]), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(coverage_stats(counts[r]), got[r], rtol=0, atol=0)


def test_coverage_stats_extremes():
    assert coverage_stats(np.array([0, 9, 0, 0])).tolist() == [1.0, 0.0, 0.0]
    even = coverage_stats(np.array([3, 3, 3, 3]))
    assert even[0] == 4 and abs(even[1] - 2.0) < 1e-12 and abs(even[2] - 1.0) < 1e-12
    # fewer visits than cells: the ceiling is log2(visits), so 3 distinct visits are fully spread
    assert abs(coverage_stats(np.array([1, 1, 1, 0, 0, 0, 0, 0]))[2] - 1.0) < 1e-12


def test_assign_cells_is_argmax():
    rng = np.random.default_rng(1)
    v = unit_rows(rng.standard_normal((50, 16)))
    cb = unit_rows(rng.standard_normal((7, 16)))
    want = np.argmax(v.astype(np.float64) @ cb.T.astype(np.float64), axis=1)
    got = assign_cells(v, cb)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------
# MMD
# ---------------------------------------------------------------------------------------
def unit64(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def double_loop_mmd2(x, y, gamma):
    def k(a, b):
        return math.exp(-gamma * float(np.sum((a - b) ** 2)))

    n, m = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return xx + yy - 2 * xy


@FAST
@given(st.integers(2, 9), st.integers(2, 9), st.integers(1, 6), st.floats(0.05, 5.0), st.integers(0, 2**32 - 1))
def test_mmd2_parts_equals_unbiased_equals_double_loop(n, m, dim, gamma, seed):
    rng = np.random.default_rng(seed)
    x = unit64(rng.standard_normal((n, dim)))
    y = unit64(rng.standard_normal((m, dim)) + 0.5)
    ref = double_loop_mmd2(x, y, gamma)
    direct = mmd2_unbiased(x, y, gamma)
    kxy = np.exp(-gamma * (2 - 2 * (x @ y.T)))
    kyy = np.exp(-gamma * (2 - 2 * (y @ y.T)))
    ref_self = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    parts = mmd2_from_parts(x @ x.T, kxy.mean(axis=1), ref_self, gamma)
    assert abs(direct - ref) < 1e-9
    assert abs(parts - ref) < 1e-9


def test_mmd2_zero_for_same_sample_shape_and_errors():
    rng = np.random.default_rng(0)
    x = unit_rows(rng.standard_normal((30, 8))).astype(np.float64)
    far = unit_rows(rng.standard_normal((30, 8)) + 4.0).astype(np.float64)
    assert mmd2_unbiased(x, far, 1.0) > mmd2_unbiased(x[:15], x[15:], 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        mmd2_unbiased(x[:1], x, 1.0)
    with pytest.raises(ValueError, match="at least 2"):
        mmd2_from_parts(np.ones((1, 1)), np.ones(1), 0.5, 1.0)


def test_rbf_from_similarity_matches_distance_form():
    rng = np.random.default_rng(2)
    x = unit_rows(rng.standard_normal((10, 5)))
    y = unit_rows(rng.standard_normal((7, 5)))
    gamma = 0.7
    got = rbf_from_similarity(x @ y.T, gamma)
    assert got.dtype == np.float32
    d2 = ((x[:, None, :].astype(np.float64) - y[None, :, :]) ** 2).sum(-1)
    np.testing.assert_allclose(got, np.exp(-gamma * d2), rtol=1e-5, atol=1e-6)


@FAST
@given(st.integers(2, 40), st.integers(2, 12), st.integers(0, 2**32 - 1))
def test_median_heuristic_gamma_matches_pdist(n, dim, seed):
    rng = np.random.default_rng(seed)
    x = unit64(rng.standard_normal((n, dim)))
    want = 1.0 / (2.0 * np.median(pdist(x, "sqeuclidean")))
    got = median_heuristic_gamma(x)
    assert got == pytest.approx(want, rel=1e-5)


def test_median_heuristic_gamma_errors_and_floor():
    with pytest.raises(ValueError, match="at least 2 rows"):
        median_heuristic_gamma(np.ones((1, 3)))
    same = np.tile(unit_rows(np.ones((1, 3))), (4, 1))
    assert math.isfinite(median_heuristic_gamma(same))


# ---------------------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------------------
def pr_from_cov(x):
    ev = np.linalg.eigvalsh(np.atleast_2d(np.cov(x.astype(np.float64), rowvar=False)))
    ev = np.clip(ev, 0, None)
    return ev.sum() ** 2 / (ev**2).sum()


@FAST
@given(st.integers(2, 30), st.integers(1, 20), st.integers(0, 2**32 - 1), st.floats(0.01, 1.0))
def test_participation_ratio_matches_covariance_eigenvalues(n, dim, seed, aniso):
    rng = np.random.default_rng(seed)
    scales = aniso ** np.arange(dim)
    x = rng.standard_normal((n, dim)) * scales
    want = pr_from_cov(x)
    assert participation_ratio(x) == pytest.approx(want, rel=1e-8)
    assert participation_ratio_from_gram(x @ x.T) == pytest.approx(want, rel=1e-8)
    assert 1.0 - 1e-9 <= participation_ratio(x) <= min(n - 1, dim) + 1e-9


def test_participation_ratio_stack_and_degenerate():
    rng = np.random.default_rng(5)
    xs = [rng.standard_normal((12, 6)) for _ in range(3)]
    grams = np.stack([x @ x.T for x in xs])
    got = participation_ratio_from_gram(grams)
    assert got.shape == (3,)
    np.testing.assert_allclose(got, [pr_from_cov(x) for x in xs], rtol=1e-8)
    # one direction only -> 1; identical rows -> 1 (no variance)
    line = np.outer(rng.standard_normal(10), rng.standard_normal(4))
    assert participation_ratio(line) == pytest.approx(1.0)
    assert participation_ratio(np.ones((5, 4))) == 1.0
    with pytest.raises(ValueError, match="at least 2 rows"):
        participation_ratio_from_gram(np.ones((1, 1)))


@FAST
@given(st.integers(2, 25), st.integers(1, 10), st.integers(0, 2**32 - 1))
def test_mean_pairwise_similarity_matches_double_loop(n, dim, seed):
    rng = np.random.default_rng(seed)
    x = unit_rows(rng.standard_normal((n, dim))).astype(np.float64)
    want = sum(float(x[i] @ x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    assert mean_pairwise_similarity_from_gram(x @ x.T) == pytest.approx(want, abs=1e-12)


def test_mean_pairwise_similarity_error():
    with pytest.raises(ValueError, match="at least 2 rows"):
        mean_pairwise_similarity_from_gram(np.ones((1, 1)))


# ---------------------------------------------------------------------------------------
# CuPy twins
# ---------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_gpu
class TestCupyTwins:
    @pytest.fixture(autouse=True)
    def _cp(self):
        import cupy

        self.cp = cupy

    def test_segmented_topk_cupy_matches_numpy_random(self):
        from probewatch.kernels.knn import segmented_topk_cupy

        cp = self.cp
        rng = np.random.default_rng(0)
        # segments from empty to longer than one block of threads, zero-visible queries included
        sizes = [0, 1, 5, 127, 128, 129, 700, 0, 3000]
        dim = 48
        base = unit_rows(rng.standard_normal((sum(sizes), dim)))
        offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        segment = rng.integers(0, len(sizes), size=400)
        visible = np.array([rng.integers(0, sizes[s] + 1) for s in segment])
        visible[:5] = 0
        queries = unit_rows(rng.standard_normal((400, dim)))
        for k in (1, 8, MAX_TOPK):
            ns, ni = segmented_topk_numpy(queries, base, offsets, segment, visible, k)
            gs, gi = segmented_topk_cupy(queries, base, offsets, segment, visible, k)
            assert isinstance(gs, cp.ndarray)
            gs, gi = gs.get(), gi.get()
            np.testing.assert_array_equal(np.isfinite(gs), np.isfinite(ns))
            np.testing.assert_allclose(gs[np.isfinite(ns)], ns[np.isfinite(ns)], atol=1e-5)
            # indices agree except where two sims are within float rounding of each other
            agree = (gi == ni) | (np.abs(gs - ns) < 1e-5)
            assert agree.all()
            # dispatcher routes CuPy input to the kernel
            ds, _ = segmented_topk(cp.asarray(queries), cp.asarray(base), offsets, segment, visible, k)
            assert isinstance(ds, cp.ndarray)

    def test_segmented_topk_cupy_ties_and_empty(self):
        from probewatch.kernels.knn import segmented_topk_cupy

        rng = np.random.default_rng(1)
        sizes = [300, 0, 40]
        base = rng.integers(-1, 2, size=(sum(sizes), 4)).astype(np.float32)
        offsets = np.concatenate([[0], np.cumsum(sizes)])
        segment = np.array([0, 0, 1, 2, 2, 0])
        visible = np.array([300, 17, 0, 40, 0, 1])
        queries = rng.integers(-1, 2, size=(6, 4)).astype(np.float32)
        ns, ni = segmented_topk_numpy(queries, base, offsets, segment, visible, 16)
        gs, gi = segmented_topk_cupy(queries, base, offsets, segment, visible, 16)
        np.testing.assert_array_equal(gs.get(), ns)
        np.testing.assert_array_equal(gi.get(), ni)
        es, ei = segmented_topk_cupy(
            queries,
            np.zeros((0, 4), np.float32),
            np.zeros(4, np.int64),
            np.zeros(6, np.int64),
            np.zeros(6, np.int64),
            3,
        )
        assert np.isneginf(es.get()).all() and (ei.get() == -1).all()

    def test_rbf_elementwise_kernel_matches_numpy(self):
        cp = self.cp
        rng = np.random.default_rng(2)
        sims = rng.uniform(-1, 1, size=(64, 33)).astype(np.float32)
        for dtype in (np.float32, np.float64):
            got = rbf_from_similarity(cp.asarray(sims.astype(dtype)), 1.7)
            assert isinstance(got, cp.ndarray) and got.dtype == dtype
            np.testing.assert_allclose(got.get(), rbf_from_similarity(sims.astype(dtype), 1.7), rtol=1e-6)

    def test_dispersion_coverage_structure_mmd_on_cupy(self):
        cp = self.cp
        rng = np.random.default_rng(3)
        samples = rng.exponential(size=(4, 100))
        np.testing.assert_allclose(shapiro_wilk_w(cp.asarray(samples)).get(), shapiro_wilk_w(samples), atol=1e-10)
        d = rng.uniform(size=200)
        np.testing.assert_allclose(dispersion_summary(cp.asarray(d), 0.1).get(), dispersion_summary(d, 0.1), atol=1e-12)
        counts = rng.integers(0, 5, size=(3, 64))
        np.testing.assert_allclose(coverage_stats(cp.asarray(counts)).get(), coverage_stats(counts), atol=1e-12)
        v = unit_rows(rng.standard_normal((50, 16)))
        cb = unit_rows(rng.standard_normal((8, 16)))
        np.testing.assert_array_equal(assign_cells(cp.asarray(v), cp.asarray(cb)).get(), assign_cells(v, cb))
        x = v.astype(np.float64)
        g = x @ x.T
        assert float(participation_ratio_from_gram(cp.asarray(g))) == pytest.approx(
            float(participation_ratio_from_gram(g)), rel=1e-10
        )
        assert mean_pairwise_similarity_from_gram(cp.asarray(g)) == pytest.approx(
            mean_pairwise_similarity_from_gram(g), rel=1e-10
        )
        y = unit_rows(rng.standard_normal((20, 16))).astype(np.float64)
        assert mmd2_unbiased(cp.asarray(x), cp.asarray(y), 0.8) == pytest.approx(mmd2_unbiased(x, y, 0.8), abs=1e-10)
        assert median_heuristic_gamma(cp.asarray(x)) == pytest.approx(median_heuristic_gamma(x), rel=1e-10)


# ---------------------------------------------------------------------------------------
# kernel compilation
# ---------------------------------------------------------------------------------------
def test_compiled_once_builds_lazily_and_once_per_device(monkeypatch):
    """The glue around cupy.memoize, with a stand-in CuPy that memoizes per current device."""
    import probewatch.kernels.backend as backend

    class FakeCupy:
        device = 0

        def memoize(self, for_each_device=False):
            assert for_each_device

            def decorate(build):
                memo = {}

                def get():
                    if self.device not in memo:
                        memo[self.device] = build()
                    return memo[self.device]

                return get

            return decorate

    fake, built = FakeCupy(), []
    monkeypatch.setattr(backend, "cupy_module", lambda: fake)
    kernel = backend.compiled_once(lambda cp: built.append(cp) or f"kernel-{len(built)}")
    assert built == []  # nothing is compiled (or imported) until first use
    assert kernel() == kernel() == "kernel-1" and built == [fake]
    fake.device = 1
    assert kernel() == "kernel-2" and kernel() == "kernel-2"
    assert len(built) == 2
