"""Published stateful extraction detectors, re-implemented as benchmark baselines.

Each baseline scores one account's stream of unit-norm prompt embeddings (time order) and
is calibrated on benign accounts only; see :class:`StreamingBaseline` for the contract.
"""

from __future__ import annotations

from .base import StreamingBaseline
from .benign_mmd import BenignMmd
from .blacklight import Blacklight
from .coverage_lsh import CoverageLsh
from .prada import Prada
from .seat import Seat
from .stateful_knn import StatefulKnn

__all__ = [
    "BenignMmd",
    "Blacklight",
    "CoverageLsh",
    "Prada",
    "Seat",
    "StatefulKnn",
    "StreamingBaseline",
    "all_baselines",
]


def all_baselines(seed: int = 0) -> list[StreamingBaseline]:
    """One default-configured, unfitted instance of every baseline; ``seed`` drives the randomised ones
    (LSH planes, MMD reference sample, Blacklight rotation and hash keys)."""
    return [
        Prada(),
        StatefulKnn(),
        CoverageLsh(seed=seed),
        BenignMmd(seed=seed),
        Blacklight(seed=seed),
        Seat(),
    ]
