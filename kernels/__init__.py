"""Array kernels behind probewatch's features: pure functions, NumPy or CuPy.

Each module holds one family: :mod:`.knn` (segmented top-k search), :mod:`.dispersion`
(nearest-neighbour distance statistics), :mod:`.coverage` (codebook cells), :mod:`.mmd`
(distribution shift), :mod:`.structure` (participation ratio). :mod:`.backend` is the one
place where NumPy or CuPy is chosen.
"""

from .backend import cupy_available, get_array_module, to_numpy
from .coverage import assign_cells, coverage_stats
from .dispersion import dispersion_summary, shapiro_wilk_w
from .knn import segmented_topk, segmented_topk_numpy
from .mmd import median_heuristic_gamma, mmd2_from_parts, mmd2_unbiased, rbf_from_similarity
from .structure import mean_pairwise_similarity_from_gram, participation_ratio, participation_ratio_from_gram

__all__ = [
    "assign_cells",
    "coverage_stats",
    "cupy_available",
    "dispersion_summary",
    "get_array_module",
    "mean_pairwise_similarity_from_gram",
    "median_heuristic_gamma",
    "mmd2_from_parts",
    "mmd2_unbiased",
    "participation_ratio",
    "participation_ratio_from_gram",
    "rbf_from_similarity",
    "segmented_topk",
    "segmented_topk_numpy",
    "shapiro_wilk_w",
    "to_numpy",
]
