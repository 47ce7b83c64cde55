"""Bench commands refuse bad numbers with a usage error (exit 2), before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("command", "needle"),
    [
        ("transcript_resenders --accounts 0", "--accounts: must be >= 1"),  # NaN to int, a traceback
        ("gpu_throughput --prompts 0", "--prompts: must be >= 1"),  # ZeroDivisionError
        ("sidecar_overload --capacity -1", "--capacity: must be > 0"),  # ran for ever
        ("hydra_eval --campaign-fpr-share -1", "--campaign-fpr-share: must be > 0"),  # failed after embedding
        ("heavy_users --min-queries -3", "--min-queries: must be >= 2"),  # IndexError
        ("heavy_users --per-kind nan", "--per-kind: expected a whole number >= 1"),
        ("journal_store --dir /nonexistent/folder", "--dir must be an existing folder"),  # a traceback
        ("cross_account_probes --memory 0", "--memory: must be >= 1"),  # every row read 0
        ("hidden_context --hidden 0", "--hidden: must be 1 to 32"),
        ("long_prompts --queries 5", "--queries: must be >= 10"),
    ],
)
def test_bad_numbers_are_usage_errors(command, needle):
    module, *args = command.split()
    done = subprocess.run(
        [sys.executable, "-m", f"bench.{module}", *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2 and needle in done.stderr, done.stderr[-2000:]


def test_lone_stages_names_each_stage_and_they_do_not_exceed_the_whole(capsys):
    from bench import lone_stages

    assert lone_stages.main(["--history", "2000", "--calls", "200"]) == 0
    out = capsys.readouterr().out
    head, *stages = out.strip().splitlines()
    assert head.startswith("lone query at a 2,000 history (float16)")
    shares = {line[:42].strip(): int(line.rsplit("(", 1)[1].rstrip("%)")) for line in stages}
    assert {"history search and add", "scoring (look-alike search, reasons)", "input checks"} <= set(shares)
    assert 95 <= sum(shares.values()) <= 105  # the stages and the rest make up the call
