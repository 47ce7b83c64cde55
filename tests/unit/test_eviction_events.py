"""Memory-budget evictions as events (Engine.take_evicted, Engine.evict, Engine.auto_evict): an
engine that replays the recorded evictions, in other batch sizes, ends where the live one did;
memory pressure that costs flagged accounts their history is reported."""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from tests.support import topical_calibration_engine, unit_rows

DIM = 48
BUDGET = 1024**2


@pytest.fixture(scope="module")
def calibration_path(tmp_path_factory):
    topics = np.random.default_rng(11).standard_normal((24, DIM))
    path = tmp_path_factory.mktemp("calibration") / "calibration.npz"
    topical_calibration_engine(topics, 12).save_calibration(path)
    return path


def _engine(calibration_path) -> pw.Engine:
    # float32 rows: the budget is sized so that flagged accounts have to be evicted too
    return pw.Engine(calibration_path=calibration_path, device="cpu", memory_budget_bytes=BUDGET, storage="float32")


def _traffic(seed: int = 5) -> list[tuple[list[str], np.ndarray]]:
    """Batches of 60 rows: two waves of 40 scatter accounts (flagged within their 120 queries),
    interleaved with single-query accounts; the second wave leaves no room for the first, whose
    flagged accounts have to go to eviction records."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, np.ndarray]] = []
    for wave in range(2):
        for q in range(120):
            rows += [(f"scatter-{wave}-{a}", rng.standard_normal(DIM)) for a in range(40)]
            rows += [(f"single-{wave}-{q}-{b}", rng.standard_normal(DIM)) for b in range(3)]
    return [
        ([a for a, _ in rows[i : i + 60]], unit_rows(np.stack([v for _, v in rows[i : i + 60]])))
        for i in range(0, len(rows), 60)
    ]


def _state(engine: pw.Engine) -> dict:
    stats = engine.stats()
    return {
        "resident": sorted(engine.accounts()),
        # a record's reasons by feature: their values are float32 sums, rounded by batch shape,
        # and so are its peak score and risk (kept to 6 significant digits)
        "records": {
            a: (r[0], *(float(f"{x:.6g}") for x in r[1:3]), *r[3:5], tuple(x.feature for x in r[5]))
            for a, r in sorted(engine.pipeline.evicted.items())
        },
        "evictions": stats.evicted,
        "levels": stats.levels,
    }


def test_replaying_recorded_evictions_in_other_batch_sizes_gives_the_same_state(calibration_path):
    live = _engine(calibration_path)
    events: list[tuple[str, object]] = []
    pressure = []
    for accounts, vectors in _traffic():
        live.observe_embeddings(accounts, vectors)
        events.append(("observe", (accounts, vectors)))
        evicted = live.take_evicted()
        if evicted:
            events.append(("evict", evicted))
            pressure.append(live.memory_pressure)
        assert live.take_evicted() == [], "each eviction is reported once"
    before = _state(live)
    assert before["evictions"] > 0 and before["records"], "the budget should have evicted flagged accounts"
    assert any(p and "watch or flag" in p for p in pressure)
    assert live.stats().to_dict()["memory_pressure"] == live.memory_pressure

    replay = _engine(calibration_path)
    replay.auto_evict = False
    pending_ids: list[str] = []
    pending_rows: list[np.ndarray] = []

    def flush() -> None:
        if pending_ids:
            replay.observe_embeddings(pending_ids, np.concatenate(pending_rows))
            pending_ids.clear()
            pending_rows.clear()

    for kind, payload in events:
        if kind == "evict":
            flush()
            replay.evict(payload)
        else:
            pending_ids.extend(payload[0])
            pending_rows.append(payload[1])
            if len(pending_ids) >= 250:  # other batch boundaries than the live run
                flush()
    flush()
    assert replay.take_evicted() == [], "with auto_evict off only the recorded evictions happen"
    assert _state(replay) == before


def test_without_the_recorded_evictions_replay_ends_elsewhere(calibration_path):
    """The control: the same traffic replayed in other batch sizes, evicting on its own, does not
    reproduce the live state, which is why the sidecar journals evictions."""
    live, other = _engine(calibration_path), _engine(calibration_path)
    traffic = _traffic()
    for accounts, vectors in traffic:
        live.observe_embeddings(accounts, vectors)
    for i in range(0, len(traffic), 4):
        chunk = traffic[i : i + 4]
        other.observe_embeddings([a for ids, _ in chunk for a in ids], np.concatenate([v for _, v in chunk]))
    assert _state(other) != _state(live)


def test_pressure_clears_when_the_budget_holds_again(calibration_path):
    engine = _engine(calibration_path)
    for accounts, vectors in _traffic():
        engine.observe_embeddings(accounts, vectors)
    for account in engine.accounts():
        engine.forget(account)
    engine.observe_embeddings(["calm"], unit_rows(np.ones((1, DIM))))
    assert engine.memory_pressure is None and engine.take_evicted() == []
