"""What an account is compared with: the benign rows of its history-length bin, the benign
band of each feature there, and the mean of its nearest benign look-alikes.

Read from the engine's live calibration (the shipped or fitted tables plus what the sidecar
learned of the provider's normal), exactly the rows the detector judged the account by.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...detect.features import FEATURE_NAMES
from ...detect.scoring import BIN_EDGES, NEIGHBOURS, Calibration, bin_of
from .charts import BenignBand


@dataclass(frozen=True)
class BenignComparison:
    """The benign side of an account page."""

    bin_label: str  # "benign accounts with 16-31 queries"
    rows: int  # benign feature rows in that bin's table
    neighbours: int  # look-alikes averaged
    source: str  # where the tables come from
    bands: dict[str, BenignBand | None]
    lookalikes: dict[str, float | None]  # mean of the nearest benign look-alikes, per feature


def _bin_label(b: int) -> str:
    low = int(BIN_EDGES[b])
    if b + 1 < len(BIN_EDGES):
        high = int(BIN_EDGES[b + 1]) - 1
        return f"benign accounts with {low:,}-{high:,} queries" if high > low else f"benign accounts with {low} query"
    return f"benign accounts with {low:,} queries or more"


def compare_with_benign(calibration: Calibration, report: dict[str, Any]) -> BenignComparison:
    """The benign comparison for a report (``AccountReport.to_dict()``)."""
    n = max(int(report["n_queries"]), 1)
    b = int(calibration.donor_bin[bin_of(n)])
    table = calibration.samples[b]
    bands = {name: BenignBand.of(table[:, j]) for j, name in enumerate(FEATURE_NAMES)}
    readings = report["features"]
    values = np.array(
        [
            math.nan if readings.get(name, {}).get("value") is None else readings[name]["value"]
            for name in FEATURE_NAMES
        ],
        dtype=np.float64,
    )
    # The detector's own look-alikes (in the channel that scores the account highest); a
    # feature a benign row has no value for yet counts at the benign median, as in the search.
    nearest = calibration.neighbours(values[None, :], np.array([n])).nearest[0]
    rows = table[nearest]
    mean = np.where(np.isnan(rows), calibration.median[b], rows).mean(axis=0)
    lookalikes = {
        name: None if math.isnan(values[j]) or not calibration.known[j] else float(mean[j])
        for j, name in enumerate(FEATURE_NAMES)
    }
    return BenignComparison(
        bin_label=_bin_label(b),
        rows=int(table.shape[0]),
        neighbours=min(NEIGHBOURS, int(table.shape[0])),
        source=calibration.source,
        bands=bands,
        lookalikes=lookalikes,
    )
