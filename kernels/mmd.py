"""Maximum mean discrepancy between an account's recent window and benign reference traffic.

Vectors are unit-norm, so the RBF kernel is a function of the inner product:
``k(x, y) = exp(-gamma * |x - y|^2) = exp(-gamma * (2 - 2 <x, y>))``. The engine already
computes inner products to the reference bank for every query, so the MMD is assembled
from parts: the window's Gram matrix, each window row's mean kernel to the reference, and
the reference's own mean kernel (fixed at calibration).
"""

from __future__ import annotations

import numpy as np

from .backend import compiled_once, get_array_module
from .structure import matrix_sums

_rbf_kernel = compiled_once(
    lambda cp: cp.ElementwiseKernel(
        "T sim, T gamma", "T k", "k = exp(-gamma * (2 - 2 * sim))", "probewatch_rbf_from_similarity"
    )
)


def rbf_from_similarity_numpy(sims, gamma: float):
    sims = np.asarray(sims)
    return np.exp(-gamma * (2.0 - 2.0 * sims)).astype(sims.dtype, copy=False)


def rbf_from_similarity(sims, gamma: float):
    """RBF kernel values from inner products of unit vectors (fused on CUDA)."""
    xp = get_array_module(sims)
    if xp is np:
        return rbf_from_similarity_numpy(sims, gamma)
    return _rbf_kernel()(sims, sims.dtype.type(gamma))


def median_heuristic_gamma(x) -> float:
    """``gamma = 1 / (2 * median(|x_i - x_j|^2))`` over distinct pairs of unit rows of ``x``."""
    xp = get_array_module(x)
    x = xp.asarray(x, dtype=xp.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"median_heuristic_gamma needs at least 2 rows; got shape {tuple(x.shape)}")
    sq = 2.0 - 2.0 * (x @ x.T)
    iu = xp.triu_indices(x.shape[0], k=1)
    med = float(xp.median(sq[iu]))
    return 1.0 / (2.0 * max(med, 1e-12))


def mmd2_unbiased(x, y, gamma: float) -> float:
    """Direct unbiased MMD^2 between samples ``x`` (n, d) and ``y`` (m, d) of unit vectors."""
    xp = get_array_module(x, y)
    x = xp.asarray(x, dtype=xp.float64)
    y = xp.asarray(y, dtype=xp.float64)
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"mmd2_unbiased needs at least 2 rows in each sample; got {n} and {m}")
    kxx = rbf_from_similarity(x @ x.T, gamma)
    kyy = rbf_from_similarity(y @ y.T, gamma)
    kxy = rbf_from_similarity(x @ y.T, gamma)
    term_xx = (kxx.sum() - xp.trace(kxx)) / (n * (n - 1))
    term_yy = (kyy.sum() - xp.trace(kyy)) / (m * (m - 1))
    return float(term_xx + term_yy - 2.0 * kxy.mean())


def mmd2_from_parts(window_gram, window_ref_kernel_mean, ref_self_kernel_mean: float, gamma: float):
    """Unbiased MMD^2 of a window against the reference, from precomputed parts.

    ``window_gram``: (n, n) inner products of the window; ``window_ref_kernel_mean``: (n,)
    mean kernel value of each window row to the reference; ``ref_self_kernel_mean``: the
    reference's mean off-diagonal kernel value. Equals :func:`mmd2_unbiased` on the same data.
    A stack of windows, (m, n, n) and (m, n), gives (m,) values.
    """
    xp = get_array_module(window_gram)
    g = xp.asarray(window_gram, dtype=xp.float64)
    one = g.ndim == 2
    if one:
        g = g[None]
    n = g.shape[-1]
    if n < 2:
        raise ValueError(f"mmd2_from_parts needs a window of at least 2 rows; got {n}")
    kxx = rbf_from_similarity(g, gamma)
    term_xx = (matrix_sums(kxx) - xp.trace(kxx, axis1=1, axis2=2)) / (n * (n - 1))
    kmean = xp.asarray(window_ref_kernel_mean).reshape(g.shape[0], n).mean(axis=1)
    out = term_xx + ref_self_kernel_mean - 2.0 * kmean
    return float(out[0]) if one else out
