"""Structure: how many directions an account's traffic really spans.

The participation ratio of the covariance spectrum, ``(sum l)^2 / sum l^2``, is the
effective number of dimensions: 1 when all variance lies on one axis, ``d`` when it is
spread evenly. Template sweeps, which vary one slot of a fixed text, score low. It is
computed from the centred Gram matrix, whose non-zero spectrum equals the covariance's,
so a window of n rows costs O(n^2 d) and never a d x d matrix.
"""

from __future__ import annotations

from .backend import get_array_module


def _stack(gram, xp, what: str):
    """``gram`` as a float64 stack (m, n, n), and whether it came as one matrix."""
    g = xp.asarray(gram, dtype=xp.float64)
    one = g.ndim == 2
    if one:
        g = g[None]
    if g.shape[-1] < 2:
        raise ValueError(f"{what} needs at least 2 rows; got {g.shape[-1]}")
    return g, one


def matrix_sums(g):
    """Per-matrix sums of a stack (m, n, n): row sums first, then their sum, so a matrix's
    total does not depend on how many others share its stack (a batch equals one at a time)."""
    return g.sum(axis=2).sum(axis=1)


def participation_ratio_from_gram(gram):
    """Participation ratio from one (n, n) Gram matrix or a stack (m, n, n)."""
    xp = get_array_module(gram)
    g, one = _stack(gram, xp, "participation ratio")
    # Centre: Gc = J G J with J = I - 11^T / n, written with row/column means.
    row = g.mean(axis=2, keepdims=True)
    col = g.mean(axis=1, keepdims=True)
    tot = row.mean(axis=1, keepdims=True)
    gc = g - row - col + tot
    trace = xp.trace(gc, axis1=1, axis2=2)
    frob2 = matrix_sums(gc * gc)
    pr = xp.where(frob2 > 1e-18, trace**2 / xp.where(frob2 > 1e-18, frob2, 1.0), 1.0)
    return pr[0] if one else pr


def participation_ratio(x):
    """Participation ratio of the rows of ``x`` (n, d)."""
    xp = get_array_module(x)
    x = xp.asarray(x, dtype=xp.float64)
    return participation_ratio_from_gram(x @ x.T)


def mean_pairwise_similarity_from_gram(gram):
    """Mean inner product over distinct pairs (topical spread: low = scattered), of one
    (n, n) Gram matrix (a float) or of each matrix of a stack (m, n, n)."""
    xp = get_array_module(gram)
    g, one = _stack(gram, xp, "mean pairwise similarity")
    n = g.shape[-1]
    out = (matrix_sums(g) - xp.trace(g, axis1=1, axis2=2)) / (n * (n - 1))
    return float(out[0]) if one else out
