"""The console's pieces without a server: the SVG charts, the benign bands and look-alikes
read from the shipped calibration, the wording of rarity and reasons, the session cookie."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from probewatch.detect.features import FEATURE_NAMES
from probewatch.detect.scoring import HUMAN_SIDE_HIGH, NEIGHBOURS, bin_of, lookalike_skips
from probewatch.engine import DEFAULT_CALIBRATION_PATH
from probewatch.io.persistence import read_calibration
from probewatch.serve.console import is_console_path
from probewatch.serve.console.benign import compare_with_benign
from probewatch.serve.console.charts import BenignBand, feature_chart, risk_chart, timeline_chart
from probewatch.serve.console.routes import account_href
from probewatch.serve.console.session import SessionKeeper
from probewatch.serve.console.wording import one_in_from_risk, one_in_text, reason_sentence

SVG = "{http://www.w3.org/2000/svg}"


def parse(svg) -> ET.Element:
    root = ET.fromstring(str(svg))
    assert root.tag == f"{SVG}svg"
    return root


def by_class(root: ET.Element, name: str) -> list[ET.Element]:
    return [el for el in root.iter() if el.get("class") == name]


def test_benign_band_holds_the_percentiles_of_finite_values():
    values = np.r_[np.arange(101, dtype=float), np.nan, np.inf]
    band = BenignBand.of(values)
    assert (band.p5, band.p25, band.p50, band.p75, band.p95, band.rows) == (5.0, 25.0, 50.0, 75.0, 95.0, 101)
    assert BenignBand.of(np.array([np.nan])) is None


def test_feature_chart_places_band_lookalike_and_value_in_order():
    band = BenignBand(0.2, 0.4, 0.5, 0.6, 0.8, 500)
    root = parse(feature_chart("near_duplicate_rate", 0.95, band, lookalike=0.55))
    outer, inner = by_class(root, "benign-band")[0], by_class(root, "benign-band-inner")[0]
    x_outer, w_outer = float(outer.get("x")), float(outer.get("width"))
    x_inner, w_inner = float(inner.get("x")), float(inner.get("width"))
    median = float(by_class(root, "benign-median")[0].get("x1"))
    value = float(by_class(root, "account-value")[0].get("cx"))
    diamond_x = float(re.match(r"M([\d.]+) ", by_class(root, "lookalike")[0].get("d")).group(1))
    # 5th < 25th < median < 75th < 95th percentile < value on the x axis, look-alikes inside the band
    assert x_outer < x_inner < median < x_inner + w_inner < x_outer + w_outer < value
    assert x_inner < diamond_x < x_inner + w_inner
    # the 25-75 band (0.2 wide) is a third of the 5-95 band (0.6 wide), as the numbers are
    assert w_inner / w_outer == pytest.approx(1 / 3, abs=0.01)
    label = root.get("aria-label")
    assert "0.2 to 0.8" in label and "this account 0.95" in label


def test_feature_chart_without_a_value_or_band_says_so():
    root = parse(feature_chart("follow_up_similarity", None, None))
    assert "no value yet" in "".join(root.itertext())
    root = parse(feature_chart("follow_up_similarity", None, BenignBand(0, 1, 2, 3, 4, 10)))
    assert not by_class(root, "account-value") and by_class(root, "benign-band")


def test_chart_text_is_escaped():
    root = parse(feature_chart("<script>alert(1)</script>", 1.0, None))
    assert "<script>" in root.get("aria-label")  # as text, so the parser read it back whole
    assert not list(root.iter("script")) and not list(root.iter(f"{SVG}script"))


def test_risk_chart_draws_rarity_on_a_log_scale_with_the_thresholds():
    points = [(10, 0.0), (20, 0.99), (30, 0.999), (40, 1.0)]
    root = parse(risk_chart(points, watch_one_in=100.0, flag_one_in=1000.0))
    line = by_class(root, "risk-line")[0]
    ys = [float(pair.split(",")[1]) for pair in line.get("points").split()]
    xs = [float(pair.split(",")[0]) for pair in line.get("points").split()]
    assert xs == sorted(xs) and ys == sorted(ys, reverse=True)  # rarer is higher up
    watch_y = float(by_class(root, "threshold-watch")[0].get("y1"))
    flag_y = float(by_class(root, "threshold-flag")[0].get("y1"))
    assert ys[1] == pytest.approx(watch_y, abs=0.2) and ys[2] == pytest.approx(flag_y, abs=0.2)
    # equal steps per decade: 1 -> 100 is twice 100 -> 1000 (log scale)
    assert (ys[0] - ys[1]) == pytest.approx(2 * (ys[1] - ys[2]), rel=0.01)
    texts = "".join(root.itertext())
    assert "1 in 1,000" in texts and "1 in 1 million" in texts
    empty = parse(risk_chart([], 100.0, 1000.0))
    assert "no scored queries yet" in "".join(empty.itertext()) and not by_class(empty, "risk-line")


def test_timeline_chart_names_both_ends():
    root = parse(timeline_chart(1764633600.0, 1764637200.0))
    text = "".join(root.itertext())
    assert "2025-12-02 00:00:00 UTC" in text and "2025-12-02 01:00:00 UTC" in text
    assert "no timestamps" in "".join(parse(timeline_chart(None, None)).itertext())


@pytest.mark.parametrize(
    ("one_in", "text"),
    [
        (1.0, "1 in 1"),
        (3.04, "1 in 3"),
        (27.4, "1 in 27"),
        (27060.0, "1 in 27,060"),
        (2.5e6, "1 in 2.5 million"),
        (7.1e10, "1 in 71 billion"),
        (1.2e20, "1 in 10²⁰"),
        (None, "–"),
        (math.inf, "1 in more than 1 million"),
    ],
)
def test_rarity_reads_as_one_in_n_never_as_a_probability(one_in, text):
    assert one_in_text(one_in) == text
    assert "%" not in one_in_text(one_in)


def test_risk_converts_to_one_in_n_capped_where_six_digits_stop():
    assert one_in_from_risk(0.0) == 1.0
    assert one_in_from_risk(0.99) == pytest.approx(100.0)
    assert one_in_from_risk(0.9999999) == 1e6 and one_in_from_risk(1.0) == 1e6
    assert one_in_from_risk(None) is None


def test_reasons_read_as_sentences():
    above = {
        "feature": "near_duplicate_rate",
        "description": "share of recent queries that nearly duplicate an earlier one",
        "value": 0.729,
        "benign_percentile": 98.3,
        "direction": "above",
        "deviation": 3.2,
    }
    assert reason_sentence(above) == (
        "Share of recent queries that nearly duplicate an earlier one is 0.729: higher than 98.3 % of benign "
        "accounts with a similar number of queries, 3.2 benign spreads above its nearest benign look-alikes."
    )
    below = {**above, "direction": "below", "benign_percentile": 0.0, "deviation": 2.0}
    assert "lower than every benign account" in reason_sentence(below)
    unknown = {**above, "benign_percentile": math.nan, "description": ""}
    assert reason_sentence(unknown).startswith("Near duplicate rate is 0.729, 3.2 benign spreads above")


@pytest.fixture(scope="module")
def calibration():
    return read_calibration(DEFAULT_CALIBRATION_PATH).calibration


def test_benign_comparison_uses_the_accounts_bin_and_the_detectors_look_alikes(calibration):
    n = 40
    b = int(calibration.donor_bin[bin_of(n)])
    table = calibration.samples[b]
    far = "off_reference_rate"  # a look-alike coordinate under every rule
    # an account at the median of its bin on every feature but one, far above on that one
    values = np.nanmedian(table, axis=0)
    values[FEATURE_NAMES.index(far)] = 0.99
    report = {"n_queries": n, "features": {name: {"value": float(values[j])} for j, name in enumerate(FEATURE_NAMES)}}
    benign = compare_with_benign(calibration, report)
    assert benign.bin_label == "benign accounts with 32-63 queries" and benign.rows == table.shape[0]
    assert benign.neighbours == NEIGHBOURS
    band = benign.bands[far]
    column = table[:, FEATURE_NAMES.index(far)]
    assert band.p50 == pytest.approx(np.nanpercentile(column, 50)) and band.rows == np.isfinite(column).sum()
    # the look-alikes are real benign rows: their mean sits inside the benign range, below 0.99
    lookalike = benign.lookalikes[far]
    assert np.nanmin(column) <= lookalike <= np.nanmax(column) and lookalike < 0.99
    # recomputed by hand: the NEIGHBOURS nearest benign rows in the spread channel, over the
    # look-alike coordinates of the calibration's rule (the human side of a feature at its median)
    coordinates = np.array(
        [
            calibration.known[j] and name not in lookalike_skips(calibration.lookalike_rule)
            for j, name in enumerate(FEATURE_NAMES)
        ]
    )
    rows, point = table.copy(), values.copy()
    if calibration.lookalike_rule >= 2:
        for name in HUMAN_SIDE_HIGH:
            j = FEATURE_NAMES.index(name)
            rows[:, j] = np.where(rows[:, j] > calibration.median[b][j], calibration.median[b][j], rows[:, j])
    scaled = np.nan_to_num((rows - calibration.median[b]) / calibration.scale[b]) * coordinates
    point = np.nan_to_num((point - calibration.median[b]) / calibration.scale[b]) * coordinates
    nearest = np.argsort(((scaled - point) ** 2).sum(axis=1))[:NEIGHBOURS]
    j = FEATURE_NAMES.index(far)
    expected = np.where(np.isnan(table[nearest, j]), calibration.median[b][j], table[nearest, j]).mean()
    assert lookalike == pytest.approx(expected, rel=1e-3, abs=1e-4)


def test_a_feature_without_a_value_has_no_look_alike(calibration):
    report = {"n_queries": 3, "features": {name: {"value": None} for name in FEATURE_NAMES}}
    benign = compare_with_benign(calibration, report)
    assert all(value is None for value in benign.lookalikes.values())
    assert benign.rows == calibration.samples[int(calibration.donor_bin[bin_of(3)])].shape[0]


def test_session_cookie_is_signed_expires_and_never_holds_the_token():
    token = "console-token-0123456789"
    keeper = SessionKeeper(token, ttl_s=60)
    session, cookie = keeper.issue(now=1000.0)
    assert token not in cookie
    assert keeper.read(cookie, now=1030.0) == session
    assert keeper.read(cookie, now=1061.0) is None  # expired
    nonce, expires, signature = cookie.split(".")
    assert keeper.read(f"{nonce}.{int(expires) + 9999}.{signature}", now=1030.0) is None  # extended by hand
    assert keeper.read(f"x{nonce}.{expires}.{signature}", now=1030.0) is None
    assert keeper.read("garbage", now=1030.0) is None and keeper.read(None) is None
    # another token (a rotated secret) ends every session
    assert SessionKeeper("another-token-0123456789", ttl_s=60).read(cookie, now=1030.0) is None
    csrf = keeper.csrf_token(session)
    assert keeper.csrf_ok(session, csrf) and not keeper.csrf_ok(session, csrf[:-1] + "0" if csrf[-1] != "0" else "1")
    other, _ = keeper.issue(now=1000.0)
    assert not keeper.csrf_ok(other, csrf) and not keeper.csrf_ok(session, None)


@pytest.mark.parametrize(
    "cookie",
    ["a." + "9" * 5000 + ".x", "a.\u00b2.x", "a.\u00b9\u00b3.sig", "n\u00e9.123.sig", "a.12.\u00e9"],
    ids=["5000-digits", "superscript-two", "superscripts", "non-ascii-nonce", "non-ascii-signature"],
)
def test_a_malformed_cookie_is_no_session_never_an_error(cookie):
    """isdigit() passes superscripts and digit runs int() refuses, and compare_digest takes only
    ASCII: each used to be a 500 on every console page, the login page included."""
    assert SessionKeeper("console-token-0123456789", ttl_s=60).read(cookie, now=1000.0) is None


def test_a_signed_out_session_is_refused_though_its_signature_holds():
    keeper = SessionKeeper("console-token-0123456789", ttl_s=60)
    session, cookie = keeper.issue(now=1000.0)
    other, other_cookie = keeper.issue(now=1000.0)
    keeper.revoke(session, now=1010.0)
    assert keeper.read(cookie, now=1020.0) is None and keeper.read(other_cookie, now=1020.0) == other
    keeper.revoke(other, now=2000.0)  # the first has expired by now: its entry is dropped
    assert list(keeper._revoked) == [other.nonce]


def test_an_account_named_dot_or_dot_dot_is_reached_by_query():
    """Browsers resolve "." and ".." path segments away, percent-encoded or not."""
    assert account_href(".") == "/ui/account?id=." and account_href("..") == "/ui/account?id=.."
    assert account_href("a/b c") == "/ui/accounts/a%2Fb%20c" and account_href("...") == "/ui/accounts/..."


def test_console_paths():
    assert is_console_path("/ui") and is_console_path("/ui/accounts/a%2Fb")
    assert not is_console_path("/uix") and not is_console_path("/v1/accounts")
