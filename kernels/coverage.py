"""Coverage: which cells of a fixed partition of the embedding space an account visits.

The partition is the Voronoi diagram of a codebook (unit-norm centroids fitted on benign
reference text, shipped with probewatch): a vector's cell is its most similar centroid.
Per account the engine keeps a count per visited cell; the statistics here turn counts
into distinct cells, normalised entropy, and rate of new cells.
"""

from __future__ import annotations

from .backend import get_array_module


def assign_cells(vectors, codebook):
    """Index of the most similar codebook row for each row of ``vectors`` (int64)."""
    xp = get_array_module(vectors, codebook)
    return xp.argmax(vectors @ codebook.T, axis=1).astype(xp.int64)


def coverage_stats(cell_counts):
    """Statistics of visit counts over cells, one row per account.

    ``cell_counts`` has shape ``(n_cells,)`` or ``(m, n_cells)``. Returns, per row,
    ``[distinct_cells, entropy_bits, normalised_entropy]`` where the normalised entropy is
    the entropy divided by ``log2(min(n_visits, n_cells))`` (1.0 = visits spread as evenly
    as they could be, 0.0 = one cell).
    """
    xp = get_array_module(cell_counts)
    c = xp.asarray(cell_counts, dtype=xp.float64)
    squeeze = c.ndim == 1
    if squeeze:
        c = c[None, :]
    total = c.sum(axis=1)
    p = c / xp.maximum(total, 1.0)[:, None]
    visited = p > 0  # counts are never negative: the visited cells
    plogp = p * xp.log2(xp.where(visited, p, 1.0))  # an empty cell: 0 * log2(1) = 0
    ceiling = xp.log2(xp.maximum(xp.minimum(total, float(c.shape[1])), 2.0))
    # written into one (m, 3) block: stacking three rows cost more than the arithmetic
    out = xp.empty((c.shape[0], 3), dtype=xp.float64)
    out[:, 0] = visited.sum(axis=1)
    out[:, 1] = -plogp.sum(axis=1)
    out[:, 2] = xp.where(total > 1, out[:, 1] / ceiling, 0.0)
    return out[0] if squeeze else out
