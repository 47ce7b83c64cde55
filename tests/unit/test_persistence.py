"""Snapshots: atomic writes, float16 storage round trips, identical scores after reload."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest

import probewatch as pw
import probewatch.io.persistence as persistence
from tests.support import unit_rows

DIM = 384


def stream(seed, n_accounts=5, per=30):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_accounts, DIM))
    acc = rng.integers(0, n_accounts, size=n_accounts * per)
    vecs = unit_rows(centres[acc] * 0.6 + rng.standard_normal((acc.size, DIM)))
    return [f"acct-{a}" for a in acc], vecs


def key(v):
    return (v.account, v.n_queries, v.level, v.score, v.risk, v.peak_risk, tuple(map(str, v.reasons)))


def engine_with_state(**overrides):
    engine = pw.Engine(device="cpu", **overrides)
    acc, vecs = stream(0)
    ts = [float(i) if i % 3 else None for i in range(len(acc))]  # some items without timestamps
    for s in range(0, len(acc), 25):
        engine.observe_embeddings(acc[s : s + 25], vecs[s : s + 25], ts=ts[s : s + 25])
    engine.observe_embeddings(["no-ts"], vecs[:1])  # first_ts stays NaN -> null -> NaN
    return engine


def leftovers(folder):
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_atomic_write_replaces_target_and_leaves_no_temp(tmp_path):
    engine = engine_with_state()
    path = tmp_path / "snap.npz"
    engine.save(path)
    assert path.is_file() and leftovers(tmp_path) == []
    first = pw.Engine.load(path)
    engine.observe_embeddings(["late"], unit_rows(np.ones((1, DIM))))
    engine.save(path)  # over an existing snapshot
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["snap.npz"]
    second = pw.Engine.load(path)
    assert "late" in second.accounts() and "late" not in first.accounts()


def test_failed_write_keeps_old_snapshot_and_removes_temp(tmp_path, monkeypatch):
    engine = engine_with_state()
    path = tmp_path / "snap.npz"
    engine.save(path)
    old_bytes = path.read_bytes()
    engine.observe_embeddings(["late"], unit_rows(np.ones((1, DIM))))

    def boom(*args, **kwargs):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(persistence.np, "savez", boom)
    with pytest.raises(OSError, match="disk full"):
        engine.save(path)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []
    assert path.read_bytes() == old_bytes
    assert "late" not in pw.Engine.load(path).accounts()


def test_failed_rename_removes_temp(tmp_path, monkeypatch):
    engine = engine_with_state()
    path = tmp_path / "snap.npz"

    def no_replace(src, dst):
        raise PermissionError("rename refused (simulated)")

    monkeypatch.setattr(persistence.os, "replace", no_replace)
    with pytest.raises(PermissionError):
        engine.save(path)
    monkeypatch.undo()
    assert leftovers(tmp_path) == [] and not path.exists()


def test_snapshot_is_plain_arrays(tmp_path):
    engine = engine_with_state()
    path = tmp_path / "snap.npz"
    engine.save(path)
    with np.load(path, allow_pickle=False) as data:  # no pickles anywhere
        for name in data.files:
            assert data[name].dtype != object, name
        assert data["store_vectors"].dtype == np.dtype(engine.config.storage)  # as stored: no widening
        assert data["store_vectors"].shape == (engine.stats().stored_queries, DIM)


@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_round_trip_scores_identically(tmp_path, storage):
    engine = engine_with_state(storage=storage)
    path = tmp_path / f"{storage}.npz"
    engine.save(path)
    loaded = pw.Engine.load(path)
    assert loaded.config == engine.config and loaded.config.storage == storage
    assert loaded.accounts() == engine.accounts()
    with np.load(path, allow_pickle=False) as data:
        assert data["store_vectors"].dtype == (np.float32 if storage == "float32" else np.float16)
    ids, offsets, flat = engine.pipeline.store.export()
    ids2, offsets2, flat2 = loaded.pipeline.store.export()
    assert ids == ids2
    np.testing.assert_array_equal(offsets, offsets2)
    np.testing.assert_array_equal(flat, flat2)  # float16 and int8 values survive exactly
    for a in engine.accounts():
        assert loaded.report(a) == engine.report(a)
    assert loaded.report("no-ts").first_ts is None
    acc, vecs = stream(1)
    assert [key(v) for v in loaded.observe_embeddings(acc, vecs)] == [
        key(v) for v in engine.observe_embeddings(acc, vecs)
    ]
    # and a snapshot of the reloaded engine is the same again
    loaded.save(tmp_path / "again.npz")
    assert pw.Engine.load(tmp_path / "again.npz").report("acct-0") == loaded.report("acct-0")


@pytest.mark.parametrize("storage", ["float16", "int8"])
def test_rounded_storage_scores_close_to_float32(tmp_path, storage):
    a = engine_with_state(storage="float32")
    b = engine_with_state(storage=storage)
    for acc in a.accounts():
        ra, rb = a.report(acc), b.report(acc)
        assert ra.n_queries == rb.n_queries
        assert abs(ra.score - rb.score) <= 0.05 * max(1.0, ra.score)
    assert b.stats().bytes_held < a.stats().bytes_held


def test_load_overrides_runtime_settings(tmp_path):
    engine = engine_with_state()
    engine.save(tmp_path / "s.npz")
    loaded = pw.Engine.load(tmp_path / "s.npz", device="cpu", memory_budget_bytes=64 * 1024**2)
    assert loaded.config.memory_budget_bytes == 64 * 1024**2
    assert loaded.stats().device == "cpu"
    assert loaded.report("acct-1") == engine.report("acct-1")


def test_empty_engine_round_trip(tmp_path):
    engine = pw.Engine(device="cpu")
    engine.save(tmp_path / "empty.npz")
    loaded = pw.Engine.load(tmp_path / "empty.npz")
    assert loaded.accounts() == [] and loaded.stats().stored_queries == 0
    v = loaded.observe_embeddings(["a"], unit_rows(np.ones((1, DIM))))[0]
    assert v.n_queries == 1


def test_calibration_file_round_trip(tmp_path):
    engine = pw.Engine(device="cpu")
    engine.save_calibration(tmp_path / "cal.npz")
    assert leftovers(tmp_path) == []
    other = pw.Engine(device="cpu", calibration_path=tmp_path / "cal.npz")
    assert other.detector.flag_threshold == engine.detector.flag_threshold
    np.testing.assert_array_equal(other.reference.bank, engine.reference.bank)
    assert math.isclose(other.reference.gamma, engine.reference.gamma)
    acc, vecs = stream(2)
    assert [key(v) for v in other.observe_embeddings(acc, vecs)] == [
        key(v) for v in engine.observe_embeddings(acc, vecs)
    ]
    # a calibration file is not a snapshot and vice versa
    with pytest.raises(pw.SnapshotError, match="expected 'probewatch-snapshot'"):
        pw.Engine.load(tmp_path / "cal.npz")
    engine.save(tmp_path / "snap.npz")
    with pytest.raises(pw.SnapshotError, match="expected 'probewatch-calibration'"):
        pw.Engine(device="cpu", calibration_path=tmp_path / "snap.npz")
    assert os.path.getsize(tmp_path / "cal.npz") > 0


NEWER_FEATURES = (
    "follow_up_similarity",
    "topic_return_rate",
    "walk_away_rate",
    "neighbourhood_probe_rate",
    "framed_return_rate",
    "framed_share",
)


def _as_previous_version(path, out):
    """Rewrite a snapshot as 0.2.0 wrote it: 14 features (none of NEWER_FEATURES), three window
    statistics and no walk-away or probe counts, word sketches or frame threads per account, no
    learning state."""
    import json

    from probewatch.detect.features import FEATURE_NAMES

    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    header = json.loads(arrays["header"].tobytes().decode("utf-8"))
    newer = NEWER_FEATURES
    drop = [FEATURE_NAMES.index(name) for name in newer]
    header["calibration"]["features"] = [f for f in FEATURE_NAMES if f not in newer]
    header.pop("population", None)
    header.pop("clock", None)
    for name in list(arrays):
        if name.startswith("cal_bin_"):
            arrays[name] = np.delete(arrays[name], drop, axis=1)
        elif name.startswith("population_") or name in (
            "cal_topic_return",
            "cal_walk_away",
            "cal_neighbourhood_probe",
            "state_walk",
            "state_probes",
            "state_prompt_sketches",
            "state_prompt_words",
            "state_prompt_signatures",
            "state_frame_parts",
            "state_frame_counts",
            "state_frame_accounts",
            "state_frame_vectors",
        ):
            del arrays[name]
    arrays["state_gram_stats"] = arrays["state_gram_stats"][:, :3]
    arrays["header"] = np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8)
    np.savez(out, **arrays)


def test_a_previous_version_snapshot_loads_and_judges_without_the_new_feature(tmp_path):
    from probewatch.detect.features import FEATURE_NAMES

    engine = engine_with_state()
    engine.save(tmp_path / "now.npz")
    _as_previous_version(tmp_path / "now.npz", tmp_path / "old.npz")
    old = pw.Engine.load(tmp_path / "old.npz")
    columns = [FEATURE_NAMES.index(name) for name in NEWER_FEATURES]
    assert (old.calibration.known[columns] == 0).all()
    assert old.calibration.known.sum() == len(FEATURE_NAMES) - len(NEWER_FEATURES)
    assert all(np.isnan(s[:, columns]).all() for s in old.calibration.samples)
    assert old.calibration.topic_return is None  # judged by the look-alike score alone, as it was
    assert old.calibration.walk_away is None
    assert old.calibration.neighbourhood_probe is None
    assert not old.calibration.framed_returns  # its threshold was fitted without frame threads
    assert all(state.probes.tolist() == [0, 0] for state in old.pipeline.states.values())
    assert all((state.prompt_words == 0).all() for state in old.pipeline.states.values())
    assert all(state.walk.tolist() == [0, 0] for state in old.pipeline.states.values())
    assert old.stats().accounts == engine.stats().accounts
    acc, vecs = stream(9, per=10)
    verdicts = old.observe_embeddings(acc, vecs)
    assert all(math.isfinite(v.score) for v in verdicts)
    # the unknown feature never explains anything
    assert all(r.feature not in NEWER_FEATURES for v in verdicts for r in v.reasons)
    # and once its window statistics refresh, the restored accounts carry the new ones too
    assert not np.isnan(old.pipeline.states[acc[-1]].gram_stats[3])
    restored = old.pipeline.states[acc[-1]]
    assert 0 < restored.walk[0] <= restored.n  # judged from its next refresh on
