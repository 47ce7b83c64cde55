"""How the console words numbers: rarity as "1 in N benign accounts", reasons as sentences.

A risk of 0.92 reads as "92 % likely an attacker" although it means "above 92 % of benign
accounts", so the console never prints risk as a probability.

>>> one_in_text(1.34), one_in_text(12345.6), one_in_text(3.2e7), one_in_text(4.1e14)
('1 in 1.3', '1 in 12,346', '1 in 32 million', '1 in 10¹⁴')
>>> round(one_in_from_risk(0.999))
1000
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

SUPERSCRIPTS = str.maketrans("0123456789-", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻")
# One minus a risk of 0.999999 is about all a 6-digit risk can tell apart from 1.
ONE_IN_FROM_RISK_CAP = 1e6


def one_in_text(one_in: float | None) -> str:
    """ "1 in N" for an N of "1 in N benign accounts ever score this high"."""
    if one_in is None or math.isnan(one_in):
        return "–"
    if math.isinf(one_in):
        return f"1 in more than {one_in_text(ONE_IN_FROM_RISK_CAP)[5:]}"
    if one_in < 10:
        return f"1 in {one_in:.2g}"
    if one_in < 1e6:
        return f"1 in {one_in:,.0f}"
    if one_in < 1e9:
        return f"1 in {one_in / 1e6:.3g} million"
    if one_in < 1e12:
        return f"1 in {one_in / 1e9:.3g} billion"
    return f"1 in 10{str(math.floor(math.log10(one_in))).translate(SUPERSCRIPTS)}"


def one_in_from_risk(risk: float | None) -> float | None:
    """N of "1 in N" from a risk (1 - share of benign accounts reaching the score), capped
    where a rounded risk stops telling values apart."""
    if risk is None or math.isnan(risk):
        return None
    if risk >= 1.0 - 1.0 / ONE_IN_FROM_RISK_CAP:
        return ONE_IN_FROM_RISK_CAP
    return 1.0 / (1.0 - risk)


def when_text(ts: float | None) -> str:
    """A UTC time an analyst reads at a glance."""
    if ts is None or math.isnan(ts):
        return "–"
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def percent_text(share: float) -> str:
    """A share of benign accounts in percent, never rounded to 0 or 100 when it is not."""
    if share <= 0:
        return "0 %"
    if share >= 100:
        return "100 %"
    if share < 0.1:
        return "under 0.1 %"
    if share > 99.9:
        return "over 99.9 %"
    return f"{share:.1f} %"


def feature_title(name: str) -> str:
    return name.replace("_", " ")


def reason_sentence(reason: dict[str, Any]) -> str:
    """One reason of a report (``Reason.to_dict()``) as a plain sentence."""
    what = reason.get("description") or feature_title(reason["feature"])
    value = reason["value"]
    above = reason["direction"] == "above"
    sentence = f"{what[0].upper()}{what[1:]} is {value:.3g}"
    percentile = reason.get("benign_percentile")
    if percentile is not None and not math.isnan(percentile):
        beaten = percentile if above else 100.0 - percentile
        comparison = "higher" if above else "lower"
        share = "every benign account" if beaten >= 100.0 else f"{percent_text(beaten)} of benign accounts"
        sentence += f": {comparison} than {share} with a similar number of queries"
    deviation = reason.get("deviation")
    if deviation is not None and not math.isnan(deviation):
        side = "above" if above else "below"
        sentence += f", {deviation:.1f} benign spreads {side} its nearest benign look-alikes"
    return sentence + "."


def indicator_kind_text(kind: str) -> str:
    """What links a campaign's members, in words (metadata values are never shown)."""
    if kind == "template":
        return "a shared prompt template"
    if kind == "payload":
        return "a shared payload region"
    if kind.startswith("meta:"):
        return f"a shared {kind[5:].replace('_', ' ')} (hashed)"
    return kind
