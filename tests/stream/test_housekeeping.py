"""Evictions at fixed observation counts: a partition replayed in other poll sizes ends in the same state."""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from probewatch.stream.worker import in_housekeeping_chunks
from tests.support import unit_rows

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]
DIM = 16


def _benign() -> pw.Engine:
    rng = np.random.default_rng(0)
    accounts = [f"b{i % 40}" for i in range(800)]
    return pw.Engine.from_benign_embeddings(accounts, unit_rows(rng.standard_normal((800, DIM))), device="cpu")


def _stream(n_accounts: int = 500, per_account: int = 6):
    rng = np.random.default_rng(1)
    accounts = [f"a{i}" for i in rng.permutation(np.repeat(np.arange(n_accounts), per_account))]
    return accounts, unit_rows(rng.standard_normal((len(accounts), DIM)))


def _run(benign: pw.Engine, polls: tuple[int, ...], housekeeping: bool) -> pw.Engine:
    engine = pw.Engine(benign.config.replace(memory_budget_bytes=1024**2), benign=benign.pipeline.benign)
    accounts, vectors = _stream()
    rows = list(range(len(accounts)))

    def observe(chunk: list[int]) -> None:
        engine.observe_embeddings([accounts[i] for i in chunk], vectors[chunk])

    start, k = 0, 0
    while start < len(rows):
        poll = rows[start : start + polls[k % len(polls)]]
        if housekeeping:
            in_housekeeping_chunks(engine, poll, 64, observe)
        else:
            observe(poll)
        start, k = start + len(poll), k + 1
    return engine


def _state(engine: pw.Engine):
    states = engine.pipeline.states
    return sorted((a, s.n) for a, s in states.items()), engine.stats().evicted


def test_evictions_fall_at_the_same_queries_whatever_the_polls():
    benign = _benign()
    one = _run(benign, (7, 50, 13), housekeeping=True)
    other = _run(benign, (256,), housekeeping=True)
    assert one.stats().evicted > 0, "the budget should evict"
    assert _state(one) == _state(other)
    # the control: the engine's own end-of-batch evictions follow the polls
    assert _state(_run(benign, (7, 50, 13), housekeeping=False)) != _state(_run(benign, (256,), housekeeping=False))
