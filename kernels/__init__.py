"""Array kernels behind probewatch's features: pure functions, NumPy or CuPy.

Each module holds one family: :mod:`.knn` (segmented top-k search), :mod:`.dispersion`
(nearest-neighbour distance statistics), :mod:`.coverage` (codebook cells), :mod:`.mmd`
(distribution shift), :mod:`.structure` (participation ratio). :mod:`.backend` is the one
place where NumPy or CuPy is chosen.

This folder is installed as ``probewatch.kernels``. In a checkout, the repository root is on
``sys.path`` (pytest, ``python -m`` from the root), and there this folder also answers to the
top-level name ``kernels``, which is Hugging Face's kernel-loader distribution: transformers
>= 5.25 depends on it and imports it on ``import sentence_transformers``. When a module of that
name is installed elsewhere on the path, an import of ``kernels`` that lands here hands over to
it, so the checkout never shadows it.
"""

import sys as _sys


def _installed_module_named_kernels():
    """The spec of a ``kernels`` found on ``sys.path`` outside this checkout, or None."""
    import os
    from importlib.machinery import PathFinder

    checkout_root = os.path.realpath(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    elsewhere = [entry for entry in _sys.path if os.path.realpath(entry or os.curdir) != checkout_root]
    spec = PathFinder.find_spec("kernels", elsewhere)
    # A bare folder named kernels (a namespace portion) is nobody's distribution: keep this one.
    return spec if spec is not None and spec.has_location else None


_installed = _installed_module_named_kernels() if __name__ == "kernels" else None

if _installed is not None:
    # The import system returns whatever sys.modules holds once this body ends.
    from importlib.util import module_from_spec as _module_from_spec

    _sys.modules[__name__] = _module_from_spec(_installed)
    _installed.loader.exec_module(_sys.modules[__name__])
else:
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
