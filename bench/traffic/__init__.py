"""Labelled per-account LLM API traffic from real text, for the detection benchmark.

    from bench.traffic import build_traffic
    traffic = build_traffic(size="quick", seed=0)
    print(traffic.describe())

See README.md in this folder for the sources, account classes, strategies and sizes.
"""

from .attacks import STRATEGIES
from .build import HARD_BENIGN, MIXED_SHARES, SIZES, build_traffic
from .model import AccountStream, Traffic
from .sources import MissingDataPackageError

__all__ = [
    "HARD_BENIGN",
    "MIXED_SHARES",
    "SIZES",
    "STRATEGIES",
    "AccountStream",
    "MissingDataPackageError",
    "Traffic",
    "build_traffic",
]
