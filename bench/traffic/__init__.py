"""Labelled per-account LLM API traffic from real text, for the detection benchmark.

    from bench.traffic import build_traffic
    traffic = build_traffic(size="quick", seed=0)
    print(traffic.describe())

    from bench.traffic import build_hydra  # cross-account campaigns, crowds, request metadata
    hydra = build_hydra(size="quick", seed=0)
    print(hydra.describe())

    from bench.traffic import build_populations  # 24 benign populations, for calibration / LOPO
    pop = build_populations(size="quick", seed=0)
    print(pop.describe())

See README.md in this folder for the sources, account classes, strategies and sizes.
"""

from .attacks import STRATEGIES
from .build import HARD_BENIGN, HELDOUT_MIXED_SHARES, LATER_WORDINGS, LONG_BENIGN, MIXED_SHARES, SIZES, build_traffic
from .eighth_attacks import EIGHTH_STRATEGIES
from .eleventh_attacks import ELEVENTH_STRATEGIES
from .fifth_attacks import FIFTH_STRATEGIES
from .fourteenth_attacks import FOURTEENTH_STRATEGIES
from .fourth_attacks import FOURTH_STRATEGIES
from .heldout_attacks import HELDOUT_STRATEGIES
from .hydra import (
    CROWD_TEMPLATES,
    HYDRA_ATTACKS,
    HYDRA_BENIGN,
    HYDRA_CROWDS,
    HYDRA_SCENARIOS,
    HYDRA_SIZES,
    HYDRA_UNSEEN_CROWDS,
    META_KEYS,
    HydraSizeSpec,
    HydraTraffic,
    build_hydra,
)
from .model import AccountStream, Traffic
from .ninth_attacks import NINTH_STRATEGIES
from .populations import POPULATIONS, Population, Populations, build_populations
from .seventh_attacks import SEVENTH_STRATEGIES
from .sixth_attacks import SIXTH_STRATEGIES
from .sources import MissingDataPackageError
from .tenth_attacks import TENTH_STRATEGIES
from .third_attacks import THIRD_STRATEGIES
from .thirteenth_attacks import THIRTEENTH_STRATEGIES
from .twelfth_attacks import TWELFTH_STRATEGIES

__all__ = [
    "CROWD_TEMPLATES",
    "EIGHTH_STRATEGIES",
    "ELEVENTH_STRATEGIES",
    "FIFTH_STRATEGIES",
    "FOURTEENTH_STRATEGIES",
    "FOURTH_STRATEGIES",
    "HARD_BENIGN",
    "HELDOUT_MIXED_SHARES",
    "HELDOUT_STRATEGIES",
    "HYDRA_ATTACKS",
    "HYDRA_BENIGN",
    "HYDRA_CROWDS",
    "HYDRA_SCENARIOS",
    "HYDRA_SIZES",
    "HYDRA_UNSEEN_CROWDS",
    "LATER_WORDINGS",
    "LONG_BENIGN",
    "META_KEYS",
    "MIXED_SHARES",
    "NINTH_STRATEGIES",
    "POPULATIONS",
    "SEVENTH_STRATEGIES",
    "SIXTH_STRATEGIES",
    "SIZES",
    "STRATEGIES",
    "TENTH_STRATEGIES",
    "THIRD_STRATEGIES",
    "THIRTEENTH_STRATEGIES",
    "TWELFTH_STRATEGIES",
    "AccountStream",
    "HydraSizeSpec",
    "HydraTraffic",
    "MissingDataPackageError",
    "Population",
    "Populations",
    "Traffic",
    "build_hydra",
    "build_populations",
    "build_traffic",
]
