"""The sidecar latency ladder at tiny scale: two rates of 2 s each against one real sidecar,
written into a scaling.md the way ``python -m bench.scaling --sidecar-only`` does."""

from __future__ import annotations

import itertools
import random

import pytest

from bench import scaling
from bench.sidecar_latency import RequestStream, percentile, poisson_schedule

pytestmark = pytest.mark.timeout(150)  # one sidecar start (model load) plus 2 x 2 s of load


def test_the_schedule_is_poisson_at_the_asked_rate_and_inside_the_window():
    offsets = poisson_schedule(200.0, 5.0, random.Random(1))
    assert offsets == sorted(offsets) and offsets[0] > 0 and offsets[-1] < 5.0
    assert 900 < len(offsets) < 1100  # 1000 expected; a fixed seed, so no flakiness
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    assert max(gaps) > 5 * min(gaps)  # exponential gaps, not a metronome


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50 and percentile(values, 0.99) == 99 and percentile(values, 1.0) == 100
    assert percentile([7.0], 0.99) == 7.0


def test_prompts_are_distinct_unless_a_repeat_share_is_asked_for():
    stream = RequestStream(10, 0.0, seed=0)
    distinct = [stream.next_body()["prompt"] for _ in range(500)]
    assert len(set(distinct)) == 500
    stream = RequestStream(10, 0.5, seed=0)
    repeated = [stream.next_body()["prompt"] for _ in range(500)]
    assert 150 < 500 - len(set(repeated)) < 350  # about half are exact repeats


def test_sidecar_only_runs_the_ladder_and_replaces_just_its_section(tmp_path, capsys):
    report = tmp_path / "scaling.md"
    report.write_text(
        "# Scaling\n\n## Detection cost\n\n| kept |\n\n" + scaling.SIDECAR_HEADING + "\n\nan old table\n",
        encoding="utf-8",
    )
    argv = ["--sidecar-only", "--out", str(tmp_path), "--sidecar-rates", "5,20", "--sidecar-seconds", "2"]
    scaling.main([*argv, "--sidecar-accounts", "20"])

    text = report.read_text(encoding="utf-8")
    assert text.startswith("# Scaling\n\n## Detection cost\n\n| kept |\n")  # the other sections are kept
    assert "an old table" not in text and text.count(scaling.SIDECAR_HEADING) == 1
    assert (
        "`python -m bench.scaling --sidecar-only --sidecar-rates 5,20 --sidecar-seconds 2 --sidecar-accounts 20`"
        in text
    )
    assert (tmp_path / "sidecar_latency.png").stat().st_size > 10_000
    rows = [line for line in text.splitlines() if line.startswith(("| 5 |", "| 20 |"))]
    assert len(rows) == 2

    for row in rows:
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        offered, achieved, p50, p90, p99, max_ms, sent = (float(c) for c in cells[:7])
        assert achieved > 0 and sent > 0
        assert 0 < p50 <= p90 <= p99 <= max_ms < 10_000  # the client times out at 10 s
        assert achieved <= 2 * offered  # 2 s of Poisson arrivals may run over the rate, not double it
        assert float(cells[9]) >= 1  # mean micro-batch size
    assert "offered" in capsys.readouterr().out  # a line per rate as it finishes
