"""Structure: how many directions an account's traffic really spans.

The participation ratio of the covariance spectrum, ``(sum l)^2 / sum l^2``, is the
effective number of dimensions: 1 when all variance lies on one axis, ``d`` when it is
spread evenly. Template sweeps, which vary one slot of a fixed text, score low. It is
computed from the centred Gram matrix, whose non-zero spectrum equals the covariance's,
so a window of n rows costs O(n^2 d) and never a d x d matrix.
"""

from __future__ import annotations

from .backend import get_array_module


def participation_ratio_from_gram(gram):
    """Participation ratio from one (n, n) Gram matrix or a stack (m, n, n)."""
    xp = get_array_module(gram)
    g = xp.asarray(gram, dtype=xp.float64)
    squeeze = g.ndim == 2
    if squeeze:
        g = g[None]
    n = g.shape[-1]
    if n < 2:
        raise ValueError(f"participation ratio needs at least 2 rows; got {n}")
    # Centre: Gc = J G J with J = I - 11^T / n, written with row/column means.
    row = g.mean(axis=2, keepdims=True)
    col = g.mean(axis=1, keepdims=True)
    tot = g.mean(axis=(1, 2), keepdims=True)
    gc = g - row - col + tot
    trace = xp.trace(gc, axis1=1, axis2=2)
    frob2 = (gc**2).sum(axis=(1, 2))
    pr = xp.where(frob2 > 1e-18, trace**2 / xp.where(frob2 > 1e-18, frob2, 1.0), 1.0)
    return pr[0] if squeeze else pr


def participation_ratio(x):
    """Participation ratio of the rows of ``x`` (n, d)."""
    xp = get_array_module(x)
    x = xp.asarray(x, dtype=xp.float64)
    return participation_ratio_from_gram(x @ x.T)


def mean_pairwise_similarity_from_gram(gram) -> float:
    """Mean inner product over distinct pairs (topical spread: low = scattered)."""
    xp = get_array_module(gram)
    n = gram.shape[0]
    if n < 2:
        raise ValueError(f"mean pairwise similarity needs at least 2 rows; got {n}")
    return float((gram.sum() - xp.trace(gram)) / (n * (n - 1)))
