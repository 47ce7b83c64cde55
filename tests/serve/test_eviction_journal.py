"""Evictions are journal events: a sidecar whose memory budget evicts accounts, killed without a
snapshot, replays to the same resident accounts and the same eviction records; memory pressure
it cannot relieve cleanly is reported in /readyz and /metrics."""

from __future__ import annotations

import asyncio
import json

import pytest

from probewatch.serve import ServerConfig
from probewatch.serve.operations import readyz
from probewatch.serve.service import ObservationService
from tests.support import TOKEN, parse_prometheus, random_word_prompts

pytestmark = pytest.mark.timeout(600)

BUDGET = 1024**2  # the smallest the engine takes: a few dozen accounts with history
ATTACKERS = 28
ATTACK_QUERIES = 24
BYSTANDERS = 120


def _config(tmp_path) -> ServerConfig:
    # lenient thresholds: word-salad accounts reach flag within ~20 queries; float32 rows, so
    # the smallest budget cannot hold every flagged account and has to evict some of them too
    engine = {"device": "cpu", "memory_budget_bytes": BUDGET, "target_fpr": 0.2, "watch_fpr": 0.4, "storage": "float32"}
    return ServerConfig(
        data_dir=str(tmp_path), api_token=TOKEN, engine=engine, max_batch_size=16, request_deadline_ms=120_000
    )


def _traffic() -> list[tuple[str, str]]:
    """Word-salad attackers (interleaved, so they flag while bystanders come and go), then a wave
    of single-query bystanders."""
    prompts = {a: random_word_prompts(ATTACK_QUERIES, seed=a) for a in range(ATTACKERS)}
    items = [(f"attacker-{a}", prompts[a][q]) for q in range(ATTACK_QUERIES) for a in range(ATTACKERS)]
    items += [(f"bystander-{b}", f"Could you tell me something about subject number {b}?") for b in range(BYSTANDERS)]
    return items


def _snapshot_of(engine) -> dict:
    stats = engine.stats()
    return {
        "resident": sorted(engine.accounts()),
        # a record's reasons by feature: their values are float32 sums, rounded by batch shape
        "records": {a: [*r[:5], [x.feature for x in r[5]]] for a, r in sorted(engine.pipeline.evicted.items())},
        "evictions": stats.evicted,
        "levels": stats.levels,
    }


def test_replay_after_a_kill_gives_the_same_resident_accounts_and_eviction_records(tmp_path):
    config = _config(tmp_path)
    live = ObservationService(config)
    pressure_seen: dict = {}

    async def run_live():
        await live.start()
        assert live.ready, live.load_error
        traffic = _traffic()
        for start in range(0, len(traffic), 16):
            chunk = traffic[start : start + 16]
            items = [live.prepare_item(a, p, None, 1.7e9 + start + i, None) for i, (a, p) in enumerate(chunk)]
            outcomes = await live.observe(items)
            assert all(o.fallback is None and o.error is None for o in outcomes), outcomes[0]
            if live.engine.memory_pressure is not None and not pressure_seen:
                pressure_seen["readyz"] = await readyz(live)
                pressure_seen["metrics"] = parse_prometheus(live.metrics.render().decode())
        state = _snapshot_of(live.engine)
        live.ready = False  # as after a SIGKILL: no shutdown snapshot, the journal holds everything
        await live.stop()
        return state

    before = asyncio.run(run_live())
    assert before["evictions"] > 0 and before["records"], before  # the budget evicted, flagged accounts too
    lines = [
        json.loads(line.split("\t")[0]) for p in (tmp_path / "journal").iterdir() for line in p.read_text().splitlines()
    ]
    evict_lines = [r for r in lines if r["op"] == "evict"]
    assert sum(len(r["accounts"]) for r in evict_lines) == before["evictions"]
    assert [p.name for p in (tmp_path / "snapshots").iterdir()] == ["snapshot-000000000000000.pwsnap"]

    # pressure: flagged accounts had to go, reported while still ready
    assert pressure_seen, "the flood should have evicted accounts at watch or flag"
    assert (
        pressure_seen["readyz"]["status"] == "ready" and "watch or flag" in pressure_seen["readyz"]["memory_pressure"]
    )
    assert pressure_seen["metrics"][("probewatch_memory_pressure", ())] == 1.0

    replayed = ObservationService(config)

    async def run_replay():
        await replayed.start()
        assert replayed.ready, replayed.load_error
        state = _snapshot_of(replayed.engine)
        # a flagged account evicted to a record comes back at its level
        gone = next(a for a, r in before["records"].items() if r[0] == "flag")
        item = replayed.prepare_item(gone, "violin sodium gothic harbor", None, 1.8e9, None)
        (outcome,) = await replayed.observe([item])
        await replayed.stop()
        return state, outcome.verdict

    after, verdict = asyncio.run(run_replay())
    assert after == before
    assert verdict["level"] == "flag" and verdict["flagged"] is True


def test_evict_records_replay_only_through_the_engine_api(tmp_path, text_engine_factory):
    """Engine.evict on a held account keeps a record for watch/flag and drops an ok one whole;
    unknown ids are skipped; take_evicted reports a batch's evictions once."""
    engine = text_engine_factory(device="cpu", target_fpr=0.2, watch_fpr=0.4)
    prompts = random_word_prompts(24, seed=3)
    engine.observe_batch(["salad"] * 24, prompts)
    engine.observe_batch(["calm"], ["How do I repot a cactus?"])
    assert engine.report("salad").level.value == "flag"
    assert engine.evict(["salad", "calm", "nobody"]) == ["salad", "calm"]
    assert set(engine.pipeline.evicted) == {"salad"} and engine.accounts() == []
    assert engine.stats().evicted == 2
    assert engine.take_evicted() == [], "explicit evictions are the caller's own, not reported again"
    with pytest.raises(Exception, match="account"):
        engine.evict(["bad\u2028id"])
