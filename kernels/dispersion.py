"""Nearest-neighbour dispersion: how an account's k-NN distances are distributed.

Distances are cosine distances ``1 - similarity`` between unit vectors. The summary holds
the mean, spread, quantiles and near-duplicate rate of an account's recent minimum
distances, and the Shapiro–Wilk W of those distances (PRADA's normality statistic).
Every function is written against ``xp`` and runs unchanged on NumPy or CuPy arrays.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from .backend import get_array_module

# Quantiles reported by ``dispersion_summary``.
SUMMARY_QUANTILES = (0.1, 0.5, 0.9)


@functools.lru_cache(maxsize=512)
def _shapiro_wilk_coefficients(n: int) -> np.ndarray:
    """Royston's (1992) approximation of the Shapiro–Wilk coefficients for sample size n."""
    from scipy.special import ndtri

    i = np.arange(1, n + 1, dtype=np.float64)
    m = ndtri((i - 0.375) / (n + 0.25))
    mm = float(m @ m)
    c = m / math.sqrt(mm)
    u = 1.0 / math.sqrt(n)
    a = np.zeros(n, dtype=np.float64)
    an = c[-1] + 0.221157 * u - 0.147981 * u**2 - 2.071190 * u**3 + 4.434685 * u**4 - 2.706056 * u**5
    if n > 5:
        an1 = c[-2] + 0.042981 * u - 0.293762 * u**2 - 1.752461 * u**3 + 5.682633 * u**4 - 3.582633 * u**5
        phi = (mm - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * an**2 - 2 * an1**2)
        a[:] = m / math.sqrt(phi)
        a[-1], a[-2] = an, an1
        a[0], a[1] = -an, -an1
    else:
        phi = (mm - 2 * m[-1] ** 2) / (1 - 2 * an**2)
        a[:] = m / math.sqrt(phi)
        a[-1], a[0] = an, -an
    if n == 3:
        a[:] = (-math.sqrt(0.5), 0.0, math.sqrt(0.5))
    return a


def shapiro_wilk_w(samples):
    """Shapiro–Wilk W for each row of ``samples`` (shape ``(n,)`` or ``(m, n)``, n >= 3).

    W is near 1 for normal data and smaller the further the sample is from normal.
    A row with zero variance returns 1.0 (a point mass is not evidence of anything).
    """
    xp = get_array_module(samples)
    x = xp.asarray(samples, dtype=xp.float64)
    squeeze = x.ndim == 1
    if squeeze:
        x = x[None, :]
    if x.ndim != 2 or x.shape[1] < 3:
        raise ValueError(f"shapiro_wilk_w needs rows of at least 3 values; got shape {tuple(samples.shape)}")
    a = xp.asarray(_shapiro_wilk_coefficients(int(x.shape[1])))
    xs = xp.sort(x, axis=1)
    # sum / n and maximum/minimum: what mean and clip compute, without their per-call overhead
    centred = xs - xs.sum(axis=1, keepdims=True) / x.shape[1]
    ss = (centred**2).sum(axis=1)
    num = (xs @ a) ** 2
    spread = ss > 1e-18
    w = xp.where(spread, num / xp.where(spread, ss, 1.0), 1.0)
    w = xp.minimum(xp.maximum(w, 0.0), 1.0)
    return w[0] if squeeze else w


def dispersion_summary(min_distances, near_duplicate_distance: float):
    """Summary of one account's minimum distances (1-D, at least one value).

    Returns an array ``[mean, std, q10, q50, q90, near_duplicate_rate]`` (float64, same
    backend as the input); ``near_duplicate_rate`` is the share of distances at or below
    ``near_duplicate_distance``.
    """
    xp = get_array_module(min_distances)
    d = xp.asarray(min_distances, dtype=xp.float64)
    if d.ndim != 1 or d.shape[0] == 0:
        raise ValueError(f"dispersion_summary needs a non-empty 1-D array; got shape {tuple(d.shape)}")
    q = xp.quantile(d, xp.asarray(SUMMARY_QUANTILES, dtype=xp.float64))
    near = (d <= near_duplicate_distance).mean()
    return xp.concatenate([xp.stack([d.mean(), d.std()]), q, near[None]])
