"""The hydra benchmark's metrics (bench/hydra_eval.py) on hand-made traffic, and its quick run.

Like test_bench_eval, these check that the benchmark measures correctly and follows its
protocol, plus one property of probewatch that holds by construction: its campaign layer
only ever raises levels, so with it probewatch finds every member it finds without it.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench.hydra_eval import (
    DETECTION_BUDGET,
    PER_ACCOUNT,
    PROBEWATCH,
    RUNS,
    Embedded,
    benign_metrics,
    main,
    precision,
    scenario_metrics,
)
from bench.traffic import AccountStream
from bench.traffic.hydra import HydraTraffic


def _stream(account, label, kind, n, campaign=None):
    return AccountStream(
        account=account,
        label=label,
        kind=kind,
        prompts=[f"{account} prompt {i}" for i in range(n)],
        ts=[float(i) for i in range(n)],
        is_attack=[bool(label)] * n,
        campaign=campaign,
    )


@pytest.fixture
def tiny():
    attacks = {
        "hydra_cot": [_stream(f"c{i}", 1, "hydra:cot", 5, "camp-a" if i < 3 else "camp-b") for i in range(6)],
    }
    benign = {
        "ordinary": [_stream(f"o{i}", 0, "benign:normal", 4) for i in range(8)],
        "nat": [_stream(f"n{i}", 0, "benign:nat", 4) for i in range(4)],
    }
    traffic = HydraTraffic("quick", 0, calibration=[], test_benign=benign, attacks=attacks)
    texts = traffic.all_texts()
    return Embedded(traffic, np.zeros((len(texts), 4), dtype=np.float32), {t: i for i, t in enumerate(texts)})


def test_scenario_metrics_count_campaigns_members_and_the_query_budget(tiny):
    flagged = {"c0": 5, "c1": 3, "c3": None, "o1": 2}
    detected = {"camp-a": 40, "camp-b": DETECTION_BUDGET + 1}
    m = scenario_metrics(tiny, "hydra_cot", flagged, {"c0", "c1"}, detected)
    assert m["campaigns"] == 2 and m["members"] == 6
    assert m["member_recall"] == pytest.approx(2 / 6)
    assert m["campaigns_detected"] == pytest.approx(0.5)  # camp-b only after the budget
    assert m["queries_until_detection"] == [40, DETECTION_BUDGET + 1]
    assert m["flagged_via_campaign"] == 2
    assert m["member_recall_watch"] is None  # no watch set given
    watched = {"c0", "c1", "c2", "o1"}  # c2 at watch only; o1 is not a member
    assert scenario_metrics(tiny, "hydra_cot", flagged, {"c0"}, detected, watched)["member_recall_watch"] == 0.5
    # per-account detectors: a campaign counts when any member is flagged at all
    per_account = scenario_metrics(tiny, "hydra_cot", {"c4": 1}, None, None)
    assert per_account["campaigns_detected"] == pytest.approx(0.5) and per_account["queries_until_detection"] is None


def test_benign_metrics_and_precision(tiny):
    flagged = {"o0": 3, "o1": None, "n2": 1, "c0": 2}
    via = {"n2", "c0"}
    b = benign_metrics(tiny, flagged, via)
    assert b["ordinary"]["flagged"] == 1 and b["ordinary"]["fpr"] == pytest.approx(1 / 8)
    assert b["nat"]["flagged_via_campaign"] == 1 and b["nat"]["groups_with_a_campaign_flag"] == 1
    assert b["all"]["accounts"] == 12 and b["all"]["fpr_via_campaign"] == pytest.approx(1 / 12)
    assert precision(tiny, ["hydra_cot"], flagged, via) == pytest.approx(0.5)
    assert "watch_or_flag" not in b["all"]
    w = benign_metrics(tiny, flagged, via, {"o0", "o5", "n2", "c0"})
    assert (w["ordinary"]["watch_or_flag"], w["nat"]["watch_or_flag"], w["all"]["watch_or_flag"]) == (2, 1, 3)
    assert precision(tiny, ["hydra_cot"], {}, set()) is None


@pytest.mark.slow
def test_quick_hydra_run(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "hydra"
    # quick campaigns are a few dozen accounts: judged at the account-level rate (share 1.0), not
    # at the default's hundredth of it, which the benchmark's campaigns of hundreds need
    argv = ["--size", "quick", "--out", str(out), "--detectors", f"{PER_ACCOUNT},prada", "--campaign-fpr-share", "1.0"]
    assert main(argv) == 0
    results = json.loads((out / "hydra_results.json").read_text(encoding="utf-8"))
    report = (out / "hydra_report.md").read_text(encoding="utf-8")
    assert "python -m bench.hydra_eval --size quick" in report and "--campaign-fpr-share 1.0" in report
    assert (out / "hydra_detection.png").read_bytes().startswith(b"\x89PNG")
    scenarios = [s for names in RUNS.values() for s in names]
    assert sorted(results["scenarios"]) == sorted(scenarios)
    for scenario in scenarios:
        rows = results["scenarios"][scenario]
        assert set(rows) == {PROBEWATCH, PER_ACCOUNT, "prada"}
        for m in rows.values():
            for key in ("member_recall", "campaigns_detected"):
                assert 0.0 <= m[key] <= 1.0, (scenario, key)
        # the campaign layer only raises levels: it never loses a member the account detector finds
        assert rows[PROBEWATCH]["member_recall"] >= rows[PER_ACCOUNT]["member_recall"]
    for run in RUNS:
        benign = results["benign"][run][PROBEWATCH]
        assert set(benign) >= {"ordinary", "nat", "class_assignment", "all"}
        # end to end on real text: the reasoning-harvesting campaigns are found, and no user of a
        # shared framework template is flagged through a campaign
        if run in ("content", "meta"):
            assert results["scenarios"][RUNS[run][0]][PROBEWATCH]["campaigns_detected"] >= 0.5
        for crowd in ("crowd_rag", "crowd_json", "crowd_agent", "eval_harness"):
            assert benign[crowd]["flagged_via_campaign"] == 0, (run, crowd)
