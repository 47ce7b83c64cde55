"""bench.unseen_kinds: a kind held out of the whole calibration, every source at once."""

from __future__ import annotations

import pytest

from bench.unseen_kinds import main


@pytest.mark.slow
def test_a_held_out_kind_is_scored_as_new_accounts(capsys):
    assert main(["--size", "quick", "--kinds", "edit_resender"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("benign:edit_resender")]
    assert len(lines) == 1
    _, accounts, flag, watch, threshold, _ = lines[0].split()
    assert int(accounts) > 0 and float(threshold) > 0
    assert 0.0 <= float(flag.rstrip("%")) <= float(watch.rstrip("%")) <= 100.0


def test_an_unknown_kind_is_refused_with_the_known_ones(capsys):
    assert main(["--size", "quick", "--kinds", "no_such_app"]) == 2
    err = capsys.readouterr().err
    assert "benign:no_such_app" in err and "benign:normal" in err
