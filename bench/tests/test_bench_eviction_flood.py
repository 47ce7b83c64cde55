"""The eviction flood, bounded: a flagged account keeps its level through 5,000 single-query
accounts and through a flood of flagged accounts that forces it out to its eviction record."""

from __future__ import annotations

import json

import pytest

from bench.eviction_flood import main, run_flood

BUDGET = 1024**2


def test_a_flood_of_single_query_accounts_evicts_them_not_the_flagged_account():
    result = run_flood(5_000, BUDGET, batch=256)
    assert result.before.level == "flag" and result.before.reasons
    # the budget really was under pressure: nearly every flood account was evicted
    assert result.evictions >= 5_000 - result.resident_at_end and result.resident_at_end < 1_000
    assert result.peak_bytes_held <= BUDGET * 1.1  # one batch over, then evicted back under
    assert result.attacker_resident_at_end and result.evicted_records == 0
    assert result.after.level == "flag" and result.after.peak_risk >= result.before.peak_risk
    assert result.after.reasons == result.before.reasons and result.after.n_queries == result.before.n_queries + 1
    assert result.kept_level


def test_a_flood_of_flagged_accounts_forces_the_attacker_out_but_its_record_brings_the_level_back():
    # 150 accounts of 120 queries outgrow 1 MiB with any storage (66 of them fit with int8 rows)
    result = run_flood(150, BUDGET, batch=256, flood_queries=120)
    assert not result.attacker_resident_at_end, "the budget holds fewer flagged accounts than the flood has"
    assert result.evicted_records >= 1
    assert result.after.level == "flag" and result.after.peak_risk == pytest.approx(result.before.peak_risk)
    assert result.after.n_queries == 1  # a new history, at its old level
    assert result.kept_level


def test_the_command_reports_json_and_refuses_bad_input(capsys):
    assert main(["--accounts", "300", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["accounts"] == 300 and out["kept_level"] is True and out["evictions"] > 0
    with pytest.raises(SystemExit):
        main(["--accounts", "0"])
    assert "--accounts, --batch and --flood-queries must be >= 1" in capsys.readouterr().err
