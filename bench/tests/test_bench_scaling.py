"""The scaling report's words follow its measurements."""

from __future__ import annotations

from bench.scaling import million_note


def test_million_note_extrapolates_from_the_last_point():
    rows = [
        {"accounts": 1_000, "ms_per_query": 0.19, "rss_bytes_per_account": 40 * 1024},
        {"accounts": 100_000, "ms_per_query": 0.23, "rss_bytes_per_account": 20 * 1024},
    ]
    note = million_note(rows)
    assert "stops at 100,000 accounts" in note
    assert "~20 KiB of RSS each" in note and "about 19 GiB" in note  # 20 KiB x 1M = 19.07 GiB
    assert "from 0.190 to 0.230 ms" in note
    assert "fell as fixed costs spread" in note and "at most ~20 KiB each" in note
    rows[1]["rss_bytes_per_account"] = 50 * 1024
    assert "rose from 40 KiB" in million_note(rows)


def test_history_curve_calls_the_engine_default_the_default():
    import probewatch as pw
    from bench.scaling import HISTORY_STORAGES

    assert HISTORY_STORAGES[0] == pw.EngineConfig().storage  # the page calls the first storage "the default"
