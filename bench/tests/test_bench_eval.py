"""The detection benchmark's pipeline (bench/eval.py, bench/report.py) and its metrics (bench/metrics.py).

These tests check that the benchmark measures correctly and follows its protocol; they do
not check how well any detector does.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from bench.eval import (
    BENIGN_POOL,
    OPERATING_FPRS,
    DetectorRun,
    benign_metrics,
    blended_metrics,
    detector_names,
    fpr_key,
    main,
    parse_args,
    scenario_metrics,
)
from bench.metrics import (
    account_score,
    delay_summary,
    detection_curve,
    flagged_share,
    queries_until_detection,
    roc_auc,
    roc_curve,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- metric functions ---------------------------------------------------------------------------
def brute_force_auc(benign: list[float], attack: list[float]) -> float:
    pairs = list(itertools.product(attack, benign))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


@pytest.mark.parametrize("seed", range(20))
def test_auc_matches_pairwise_count_with_ties_and_unscored_accounts(seed):
    rng = np.random.default_rng(seed)
    # few distinct values, so ties (and ties of -inf, the never-scored accounts) are common
    values = [-math.inf, 0.0, 0.5, 1.0, 2.0]
    benign = list(rng.choice(values, size=rng.integers(1, 9)))
    attack = list(rng.choice(values, size=rng.integers(1, 9)))
    assert roc_auc(benign, attack) == pytest.approx(brute_force_auc(benign, attack))


def test_auc_extremes_and_empty_sides():
    assert roc_auc([0.1, 0.2], [0.3, 0.4]) == 1.0
    assert roc_auc([0.3, 0.4], [0.1, 0.2]) == 0.0
    assert roc_auc([0.5, 0.5], [0.5]) == 0.5
    assert math.isnan(roc_auc([], [0.1]))
    assert math.isnan(roc_auc([0.1], []))
    with pytest.raises(ValueError, match="-inf"):
        roc_auc([float("nan")], [0.1])


@pytest.mark.parametrize("seed", range(10))
def test_roc_curve_is_monotone_from_origin_to_corner_and_its_area_is_the_auc(seed):
    rng = np.random.default_rng(seed)
    benign = list(rng.choice([-math.inf, 0.0, 0.3, 0.6, 0.9], size=7))
    attack = list(rng.choice([0.0, 0.3, 0.6, 0.9, 1.2], size=5))
    fpr, tpr = roc_curve(benign, attack)
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    # the trapezoid rule over the curve's corners counts ties as half, exactly like the AUC
    area = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))
    assert area == pytest.approx(roc_auc(benign, attack))


def test_account_score_is_the_stream_maximum_ignoring_unscored_queries():
    assert account_score(np.array([np.nan, 0.2, 0.7, 0.1])) == 0.7
    assert account_score(np.array([np.nan, np.nan])) == -math.inf
    assert account_score(np.array([])) == -math.inf


def test_queries_until_detection_is_the_first_query_reaching_the_threshold():
    scores = np.array([np.nan, 0.1, 0.5, 0.9, 0.2])
    assert queries_until_detection(scores, 0.5) == 3  # reaching (>=) counts, 1-based
    assert queries_until_detection(scores, 0.6) == 4
    assert queries_until_detection(scores, 1.0) is None
    assert queries_until_detection(np.array([np.nan, np.nan]), -math.inf) is None  # unscored never detects


def test_flagged_share_counts_accounts_reaching_the_threshold():
    assert flagged_share([-math.inf, 0.2, 0.5, 0.7], 0.5) == 0.5
    assert flagged_share([0.1, 0.2], 0.5) == 0.0
    assert math.isnan(flagged_share([], 0.5))


def test_delay_summary_over_detected_accounts_only():
    summary = delay_summary([3, None, 10, 5])
    assert summary["accounts"] == 4 and summary["detected"] == 3
    assert summary["detected_share"] == 0.75
    assert summary["median"] == 5.0
    assert summary["p90"] == pytest.approx(np.percentile([3, 5, 10], 90))
    none = delay_summary([None, None])
    assert none["detected_share"] == 0.0 and none["median"] is None and none["p90"] is None


def test_detection_curve_is_the_share_of_all_accounts_detected_by_each_query():
    queries, share = detection_curve([2, None, 4], 5)
    assert list(queries) == [1, 2, 3, 4, 5]
    assert share == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])


# -- scenario and benign metrics on hand-made records ------------------------------------------------
def _record(account, pool, kind, scores, label, campaign=None, reasons=None):
    thresholds = {0.001: 0.8, 0.01: 0.5}
    scores = np.asarray(scores, dtype=np.float64)
    record = {
        "account": account,
        "pool": pool,
        "kind": kind,
        "label": label,
        "campaign": campaign,
        "queries": len(scores),
        "attack_queries": len(scores) * label,
        "score": {"det": account_score(scores)},
        "queries_until_detection": {
            "det": {fpr_key(f): queries_until_detection(scores, t) for f, t in thresholds.items()}
        },
    }
    if reasons:
        record["reasons"] = reasons
    return record


def _run(name="det"):
    return DetectorRun(name, {0.001: 0.8, 0.01: 0.5}, [], {}, 0.0, 0.0)


def test_scenario_metrics_tpr_fpr_delay_and_campaign_share_at_the_thresholds():
    benign = [
        _record(f"b{i}", BENIGN_POOL, "benign:normal", s, 0)
        for i, s in enumerate([[0.1, 0.2], [0.6, 0.3], [np.nan], [0.4]])
    ]
    attack = [
        _record("a0", "split", "split:3:x", [0.2, 0.9, 0.3], 1, campaign="c"),
        _record("a1", "split", "split:3:x", [0.55, 0.6], 1, campaign="c"),
        _record("a2", "split", "split:3:x", [0.1, 0.2, 0.3, 0.85], 1, campaign="c"),
    ]
    m = scenario_metrics(benign, attack, _run())
    assert m["tpr"] == {"0.001": pytest.approx(2 / 3), "0.01": 1.0}
    assert m["benign_fpr"] == {"0.001": 0.0, "0.01": 0.25}
    assert m["auc"] == pytest.approx(brute_force_auc([0.2, 0.6, -math.inf, 0.4], [0.9, 0.6, 0.85]))
    delay = m["queries_until_detection"]["0.001"]
    assert (delay["detected"], delay["median"]) == (2, 3.0)  # first reached at queries 2 and 4
    assert m["queries_until_detection"]["0.01"]["median"] == 2.0  # queries 2, 1, 4
    campaign = m["campaigns"]["c"]
    assert campaign["accounts"] == 3
    assert campaign["flagged_share"]["0.001"] == pytest.approx(2 / 3)
    assert campaign["detected"] == {"0.001": True, "0.01": True}


def test_benign_metrics_per_class_with_probewatch_reasons():
    benign = [
        _record("b0", BENIGN_POOL, "benign:normal", [0.1], 0),
        _record(
            "b1", BENIGN_POOL, "benign:rag_app", [0.9], 0, reasons={"0.001": ["coverage", "dim"], "0.01": ["coverage"]}
        ),
        _record("b2", BENIGN_POOL, "benign:rag_app", [0.6], 0, reasons={"0.01": ["coverage", "drift"]}),
    ]
    for record in benign:
        record["score"]["probewatch"] = record["score"].pop("det")
    m = benign_metrics(benign, _run("probewatch"))
    assert m["fpr"] == {"0.001": pytest.approx(1 / 3), "0.01": pytest.approx(2 / 3)}
    rag = m["by_kind"]["benign:rag_app"]
    assert rag["accounts"] == 2 and rag["fpr"] == {"0.001": 0.5, "0.01": 1.0}
    assert rag["top_reasons"]["0.01"][0] == ["coverage", 2]
    assert m["by_kind"]["benign:normal"]["fpr"]["0.01"] == 0.0
    assert list(m["by_kind"]) == ["benign:normal", "benign:rag_app"]  # classes with no account are left out


def test_blended_metrics_compare_mixed_accounts_with_long_benign_users_only():
    from bench.report import blended_table

    records = [
        _record("short", BENIGN_POOL, "benign:normal", [5.0], 0),  # outscores everything, but not of their length
        _record("long0", BENIGN_POOL, "benign:long_chat", [0.2, 0.4], 0),
        _record("long1", BENIGN_POOL, "benign:long_chat", [0.7], 0),
        _record("m0", "mixed_5pct", "mixed:5pct:x", [0.1, 0.5], 1),
        _record("m1", "mixed_5pct", "mixed:5pct:x", [0.9], 1),
        _record("m2", "mixed_25pct", "mixed:25pct:x", [0.8, 0.3], 1),
    ]
    m = blended_metrics(records, [_run()])
    assert m["long_benign_accounts"] == 2 and list(m["scenarios"]) == ["mixed_5pct", "mixed_25pct"]
    five = m["scenarios"]["mixed_5pct"]["det"]
    assert five["auc"] == pytest.approx(brute_force_auc([0.4, 0.7], [0.5, 0.9]))
    assert five["median_mixed_score"] == pytest.approx(0.7) and five["max_long_benign_score"] == 0.7
    assert m["scenarios"]["mixed_25pct"]["det"]["auc"] == 1.0
    table = blended_table({"blended": m, "detectors": {"det": {}}})
    assert "| mixed_5pct | 0.75 (0.7 / 0.7) |" in table
    assert blended_metrics([r for r in records if r["kind"] != "benign:long_chat"], [_run()]) == {}
    assert blended_table({"blended": {}, "detectors": {"det": {}}}) is None


def test_unknown_detector_is_refused_with_the_valid_names(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["--detectors", "probewatch,nonesuch"])
    assert exc.value.code == 2
    assert "nonesuch" in capsys.readouterr().err
    args = parse_args(["--detectors", "prada,probewatch,prada"])
    assert args.detectors == ["prada", "probewatch"] and args.out == Path("bench/out/quick")


def test_population_calibration_shares_no_account_or_prompt_with_what_is_scored():
    from bench.eval import with_populations
    from bench.traffic import build_traffic
    from bench.traffic.populations import POPULATIONS, build_populations

    traffic = with_populations(build_traffic("quick", 0, embed=None), build_populations("quick", 0))
    calibration = {t for s in traffic.calibration for t in s.prompts}
    scored = list(traffic.test_benign) + [s for streams in traffic.attacks.values() for s in streams]
    assert {s.kind for s in traffic.calibration} >= {f"benign:{name}" for name in POPULATIONS}
    assert {s.account for s in build_traffic("quick", 0, embed=None).calibration} <= {
        s.account for s in traffic.calibration
    }  # build_traffic's own calibration accounts stay (the shipped calibration's mix)
    assert not calibration & {t for s in scored for t in s.prompts}
    assert not {s.account for s in traffic.calibration} & {s.account for s in scored}
    assert {s.kind for s in traffic.test_benign} >= {"benign:normal", *(f"benign:{n}" for n in POPULATIONS)}


# -- the whole quick pipeline ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    pytest.importorskip("matplotlib")
    out = tmp_path_factory.mktemp("eval-quick")
    assert main(["--size", "quick", "--out", str(out), "--quiet"]) == 0
    return out, json.loads((out / "results.json").read_text(encoding="utf-8"))


@pytest.mark.slow
def test_quick_pipeline_writes_report_results_and_plots(quick_run):
    out, results = quick_run
    for name in ("roc.png", "detection_delay.png", "risk_over_time.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_SIGNATURE), name
        import matplotlib.image

        image = matplotlib.image.imread(out / name)
        assert image.shape[0] > 100 and image.shape[1] > 100
    report = (out / "report.md").read_text(encoding="utf-8")
    assert "python -m bench.eval --size quick --seed 0" in report
    assert "## Protocol" in report and "## False positives per benign class" in report
    for scenario in results["scenarios"]:
        assert f"### {scenario}" in report


@pytest.mark.slow
def test_quick_results_cover_every_scenario_and_detector_with_valid_metrics(quick_run):
    from bench.traffic import HELDOUT_MIXED_SHARES, HELDOUT_STRATEGIES, LATER_WORDINGS, MIXED_SHARES, SIZES, STRATEGIES

    _, results = quick_run
    detectors = detector_names()
    expected = (
        list(STRATEGIES)
        + list(MIXED_SHARES)
        + list(SIZES["quick"].splits)
        + list(HELDOUT_STRATEGIES)
        + [name for wording in LATER_WORDINGS for name in wording]
        + list(HELDOUT_MIXED_SHARES)
    )
    assert list(results["scenarios"]) == expected
    keys = [fpr_key(f) for f in OPERATING_FPRS]

    def rate(x):
        return x is not None and 0.0 <= x <= 1.0

    for scenario, block in results["scenarios"].items():
        assert set(block["detectors"]) == set(detectors), scenario
        for name, m in block["detectors"].items():
            assert rate(m["auc"]), (scenario, name)
            for k in keys:
                assert rate(m["tpr"][k]) and rate(m["benign_fpr"][k]), (scenario, name, k)
                delay = m["queries_until_detection"][k]
                assert rate(delay["detected_share"])
                assert delay["detected_share"] == pytest.approx(m["tpr"][k])  # flagged == detected at some query
                if delay["median"] is not None:
                    assert 1 <= delay["median"] <= delay["p90"]
        if scenario.startswith("split_"):
            for m in block["detectors"].values():
                (campaign,) = m["campaigns"].values()
                assert campaign["accounts"] == block["accounts"]
    for name in detectors:
        d = results["detectors"][name]
        assert all(math.isfinite(d["thresholds"][k]) for k in keys)
        # a lower target rate never gives a lower threshold
        assert d["thresholds"][keys[0]] >= d["thresholds"][keys[1]]
        for block in [d["benign"], *d["benign"]["by_kind"].values()]:
            assert all(rate(block["fpr"][k]) for k in keys)
    assert any(t["label"] == 1 for t in results["risk_traces"]) and any(t["label"] == 0 for t in results["risk_traces"])


@pytest.mark.slow
def test_quick_unseen_apps_hold_out_every_population_and_measure_poisoning(quick_run):
    from bench.traffic import MIXED_SHARES, STRATEGIES
    from bench.traffic.populations import POPULATIONS, build_populations

    out, results = quick_run
    unseen = results["unseen"]
    populations = build_populations("quick", 0)
    assert [row["population"] for row in unseen["populations"]] == list(POPULATIONS)
    for row in unseen["populations"]:
        name = row["population"]
        both = len(populations.calibration[name]) + len(populations.test[name])
        assert row["unseen"]["accounts"] == both
        assert (
            row["test_half_before"]["accounts"]
            == row["test_half_after_warm_up"]["accounts"]
            == len(populations.test[name])
        )
        for block in (row["unseen"], row["test_half_before"], row["test_half_after_warm_up"]):
            assert 0.0 <= block["flag"] <= block["watch"] <= 1.0
    poison = unseen["poisoning"]
    developed = set(STRATEGIES) | set(MIXED_SHARES)  # not the held-out or later wordings, not splits
    assert developed <= set(results["scenarios"])
    assert set(poison["attacks"]) == developed  # the poisoning runs the developed strategies and mixes
    assert poison["warm_up"]["poisoners"] > 0
    # poisoners are scored among their scenario's accounts: the streams they ended with
    for block in poison["attacks"].values():
        assert block["before"]["accounts"] == block["after"]["accounts"] == block["accounts"]
        assert block["after_clean_warm_up"]["accounts"] == block["accounts"]
    assert "## Unseen apps" in (out / "report.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_quick_thresholds_come_from_calibration_accounts_only(quick_run):
    _, results = quick_run
    calibration = set(results["protocol"]["calibration_accounts"])
    scored = set(results["protocol"]["scored_accounts"])
    assert calibration and scored
    assert calibration.isdisjoint(scored)
    meta = results["meta"]
    assert len(calibration) == meta["calibration_accounts"]
    assert len(scored) == meta["benign_test_accounts"] + meta["attack_accounts"] == len(results["accounts"])
    for name, d in results["detectors"].items():
        assert set(d["fitted_accounts"]) == calibration, name
    benign = [r for r in results["accounts"] if r["pool"] == BENIGN_POOL]
    assert len(benign) == meta["benign_test_accounts"] and all(r["label"] == 0 for r in benign)
    assert all(r["label"] == 1 for r in results["accounts"] if r["pool"] != BENIGN_POOL)


@pytest.mark.slow
def test_report_can_be_redrawn_from_results_json(quick_run, tmp_path):
    from bench import report

    out, results = quick_run
    written = report.write_all(results, tmp_path)
    assert {p.name for p in written} == {p.name for p in out.iterdir()}
    assert (tmp_path / "report.md").read_text(encoding="utf-8") == (out / "report.md").read_text(encoding="utf-8")


def test_benign_doubles_name_the_class_a_scenario_is_hardest_to_tell_from():
    from bench.eval import benign_doubles
    from bench.report import doubles_table

    records = [_record(f"n{i}", BENIGN_POOL, "benign:normal", [0.1 * i], 0) for i in range(10)]
    records += [_record(f"s{i}", BENIGN_POOL, "benign:summary_app", [2.0 + 0.1 * i], 0) for i in range(10)]
    records += [_record(f"x{i}", BENIGN_POOL, "benign:rare", [9.0], 0) for i in range(3)]  # too few to count
    records += [_record(f"a{i}", "sweep", "attack:sweep", [2.05 + 0.2 * i], 1) for i in range(5)]
    for record in records:
        record["score"]["probewatch"] = record["score"].pop("det")
    doubles = benign_doubles(records, "probewatch")
    assert doubles["min_accounts"] == 10
    d = doubles["scenarios"]["sweep"]
    assert d["double"] == "benign:summary_app" and d["double_accounts"] == 10
    summary = [2.0 + 0.1 * i for i in range(10)]
    attack = [2.05 + 0.2 * i for i in range(5)]
    assert d["auc_vs_double"] == pytest.approx(brute_force_auc(summary, attack))
    assert d["double_share_at_or_above_median"] == pytest.approx(np.mean(np.array(summary) >= 2.45))
    everyone = [0.1 * i for i in range(10)] + summary + [9.0] * 3
    assert d["auc_vs_all_benign"] == pytest.approx(brute_force_auc(everyone, attack))
    results = {
        "doubles": doubles,
        "meta": {"primary_fpr": "0.001"},
        "scenarios": {"sweep": {"detectors": {"probewatch": {"tpr": {"0.001": 0.2}}}}},
    }
    assert "| sweep | 0.20 | `benign:summary_app` (10) |" in doubles_table(results)
    assert doubles_table({"doubles": {}}) is None
