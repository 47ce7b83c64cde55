"""The detector contract on an engine calibrated from synthetic benign embeddings.

Benign calibration traffic: ~100 accounts, each wandering around one of a few topic centres.
Everything here goes through ``observe_embeddings``; no text model is loaded.
"""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest

import probewatch as pw
from probewatch.detect.scoring import bin_of
from tests.support import topical_stream, unit_rows
from tests.unit.conftest import DIM

# the engine under test and its synthetic calibration: tests/unit/conftest.py


def mixed_stream(topics, seed=7, n_benign=6):
    """(accounts, vectors) interleaved: benign topical accounts, a template sweep, a scatter."""
    rng = np.random.default_rng(seed)
    acc, vec = topical_stream(rng, n_benign, DIM, q_range=(30, 60), topics=topics, prefix="live")
    centre = rng.standard_normal(DIM)
    tmpl = unit_rows(centre + 0.45 * rng.standard_normal((90, DIM)))
    scatter = unit_rows(rng.standard_normal((90, DIM)))
    accounts = list(acc) + ["sweep"] * 90 + ["scatter"] * 90
    vectors = np.concatenate([vec, tmpl, scatter])
    # interleave, keeping each account's own order
    order = rng.permutation(len(accounts))
    acc_arr = np.asarray(accounts)
    new_acc = acc_arr[order]
    out = np.empty_like(vectors)
    for name in np.unique(acc_arr):
        out[np.flatnonzero(new_acc == name)] = vectors[np.flatnonzero(acc_arr == name)]
    return list(new_acc), out


def feed(engine, accounts, vectors, batch_sizes=(1, 5, 17, 3, 40)):
    """Observe in batches of varying size; verdicts in input order."""
    out, i, j = [], 0, 0
    while i < len(accounts):
        b = batch_sizes[j % len(batch_sizes)]
        out.extend(engine.observe_embeddings(accounts[i : i + b], vectors[i : i + b]))
        i += b
        j += 1
    return out


def key(v: pw.Verdict):
    return (
        v.account,
        v.n_queries,
        v.level,
        v.flagged,
        v.score,
        v.risk,
        v.peak_risk,
        tuple((r.feature, r.value, r.benign_percentile, r.direction, r.deviation) for r in v.reasons),
    )


@pytest.fixture(scope="module")
def stream(topics):
    return mixed_stream(topics)


# ---------------------------------------------------------------------------------------
# snapshots, reset, replay
# ---------------------------------------------------------------------------------------
def test_save_continue_reload_replay_identical(make_engine, stream, tmp_path):
    accounts, vectors = stream
    t = len(accounts) // 2
    engine = make_engine()
    first = feed(engine, accounts[:t], vectors[:t])
    snap = tmp_path / "at_t.npz"
    engine.save(snap)
    continued = feed(engine, accounts[t:], vectors[t:])

    loaded = pw.Engine.load(snap)
    replayed = feed(loaded, accounts[t:], vectors[t:])
    assert [key(v) for v in replayed] == [key(v) for v in continued]
    assert loaded.stats().observations == engine.stats().observations == len(accounts)

    # restore() into an engine with other state, then replay: identical again
    other = make_engine()
    other.observe_embeddings(["someone-else"] * 3, vectors[:3])
    other.restore(snap)
    assert "someone-else" not in other.accounts()
    assert [key(v) for v in feed(other, accounts[t:], vectors[t:])] == [key(v) for v in continued]

    # reset() then replay from scratch reproduces the original stream's scores
    engine.reset()
    assert engine.accounts() == [] and engine.stats().stored_queries == 0
    again = feed(engine, accounts[:t], vectors[:t]) + feed(engine, accounts[t:], vectors[t:])
    assert [key(v) for v in again] == [key(v) for v in first + continued]
    assert {v.level for v in first + continued} >= {"ok", "flag"}


def test_reports_identical_after_reload(make_engine, stream, tmp_path):
    accounts, vectors = stream
    engine = make_engine()
    feed(engine, accounts, vectors)
    engine.save(tmp_path / "s.npz")
    loaded = pw.Engine.load(tmp_path / "s.npz")
    assert loaded.accounts() == engine.accounts()
    for a in set(accounts):
        assert loaded.report(a) == engine.report(a)


# ---------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------
def test_same_seed_same_calibration_and_scores(topics, stream):
    rng = np.random.default_rng(99)
    accounts, vectors = topical_stream(rng, 36, DIM, q_range=(8, 20), topics=topics, prefix="cal")
    a = pw.Engine.from_benign_embeddings(accounts, vectors, device="cpu", seed=5)
    b = pw.Engine.from_benign_embeddings(accounts, vectors, device="cpu", seed=5)
    assert a.detector.flag_threshold == b.detector.flag_threshold
    assert a.detector.watch_threshold == b.detector.watch_threshold
    np.testing.assert_array_equal(a.reference.bank, b.reference.bank)
    np.testing.assert_array_equal(a.reference.codebook, b.reference.codebook)
    np.testing.assert_array_equal(a.calibration.account_max_scores, b.calibration.account_max_scores)
    acc, vec = stream
    assert [key(v) for v in feed(a, acc, vec)] == [key(v) for v in feed(b, acc, vec)]


# ---------------------------------------------------------------------------------------
# batch boundaries
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("storage", ["float32", "float16", "int8"])
def test_batch_equals_one_at_a_time(make_engine, stream, storage):
    accounts, vectors = stream
    whole = make_engine(storage=storage).observe_embeddings(accounts, vectors)
    single = make_engine(storage=storage)
    ones = [single.observe_embeddings([a], vectors[i : i + 1])[0] for i, a in enumerate(accounts)]
    mixed = feed(make_engine(storage=storage), accounts, vectors, batch_sizes=(7, 1, 33, 2))
    for w, o, m in zip(whole, ones, mixed, strict=True):
        assert w.account == o.account == m.account and w.n_queries == o.n_queries == m.n_queries
        assert abs(w.score - o.score) <= 1e-4 * max(1.0, abs(o.score))
        assert abs(m.score - o.score) <= 1e-4 * max(1.0, abs(o.score))
        assert abs(w.risk - o.risk) <= 1e-4 and abs(m.risk - o.risk) <= 1e-4
    # sticky levels agree except where a score sits within rounding of a threshold
    for w, o in zip(whole, ones, strict=True):
        if w.level != o.level:
            thr = [single.detector.flag_threshold, single.detector.watch_threshold]
            assert min(abs(w.score - t) for t in thr) < 1e-3


# ---------------------------------------------------------------------------------------
# verdicts, reasons, reports
# ---------------------------------------------------------------------------------------
def test_verdict_fields(make_engine, stream):
    accounts, vectors = stream
    engine = make_engine()
    verdicts = feed(engine, accounts, vectors)
    rank = {"ok": 0, "watch": 1, "flag": 2}
    last: dict[str, pw.Verdict] = {}
    for v in verdicts:
        assert 0.0 <= v.risk <= 1.0 and 0.0 <= v.peak_risk <= 1.0
        assert v.level in ("ok", "watch", "flag")
        assert v.flagged == (v.level == "flag")
        assert math.isfinite(v.score) and v.score >= 0
        prev = last.get(v.account)
        if prev is None:
            assert v.n_queries == 1
        else:
            assert v.n_queries == prev.n_queries + 1
            assert rank[v.level] >= rank[prev.level]  # sticky at the peak
            assert v.peak_risk >= prev.peak_risk
        last[v.account] = v
        if v.level == "flag":
            assert v.score >= engine.detector.flag_threshold or v.peak_risk >= v.risk
    # The scatter is flagged. The sweep (one tight cluster) is at least watched: under look-alike
    # rule 2 its near-duplicates are not evidence by themselves, as a templated app's are not.
    assert last["scatter"].flagged and last["sweep"].level in ("watch", "flag")
    benign_levels = [last[a].level for a in last if a.startswith("live")]
    assert benign_levels.count("flag") <= 1
    d = last["scatter"].to_dict()
    assert d["flagged"] is True and d["level"] == "flag" and isinstance(d["reasons"], list)

    # the level stays at its peak when the account then behaves normally
    rng = np.random.default_rng(3)
    _calm, calm_vec = topical_stream(rng, 1, DIM, q_range=(40, 40), topics=np.zeros((1, DIM)) + 3.0, prefix="x")
    after = engine.observe_embeddings(["scatter"] * 40, calm_vec)
    assert all(v.level == "flag" for v in after)
    assert (
        after[-1].peak_risk == pytest.approx(last["scatter"].peak_risk)
        or after[-1].peak_risk >= last["scatter"].peak_risk
    )


def test_one_in_keeps_ranking_where_risk_saturates(make_engine, stream):
    engine = make_engine()
    cal = engine.calibration
    scores = np.linspace(0.0, cal.tail_start + 200 * cal.tail_scale, 400)
    log_n = cal.log10_one_in(scores)
    risks = 1.0 - cal.exceedance(scores)
    beyond = scores > cal.tail_start
    assert (np.diff(log_n[beyond]) > 0).all()  # strictly increasing past the calibrated range
    assert (risks[beyond][-50:] == 1.0).all()  # where risk itself can no longer tell scores apart
    assert (np.diff(log_n) >= -1e-12).all() and log_n.min() >= 0.0
    # the flag line keeps its calibrated meaning: 1 in 1/target_fpr benign accounts
    flag = engine.detector.flag_threshold
    assert float(cal.log10_one_in(flag)) == pytest.approx(-math.log10(engine.config.target_fpr), rel=1e-9)
    accounts, vectors = stream
    last = {v.account: v for v in feed(engine, accounts, vectors)}
    for v in last.values():
        assert v.peak_one_in >= 1.0 and (v.peak_one_in >= 1.0 / engine.config.target_fpr) == (v.level == "flag")
    assert last["sweep"].to_dict()["peak_one_in"] == pytest.approx(last["sweep"].peak_one_in, rel=1e-3)


def test_reasons_name_features_with_benign_percentiles(make_engine, stream):
    accounts, vectors = stream
    engine = make_engine()
    verdicts = feed(engine, accounts, vectors)
    flagged = [v for v in verdicts if v.account in ("sweep", "scatter") and v.level == "flag"]
    assert flagged
    for v in flagged[-10:]:
        assert 1 <= len(v.reasons) <= 3
        for r in v.reasons:
            assert r.feature in pw.FEATURE_NAMES
            assert math.isfinite(r.benign_percentile) and 0.0 <= r.benign_percentile <= 100.0
            assert r.direction in ("above", "below") and r.deviation > 1.0
            # an 'above' reason sits in the top of the benign distribution, 'below' at the bottom
            assert r.benign_percentile >= 50.0 if r.direction == "above" else r.benign_percentile <= 50.0
            assert r.feature in str(r)
        devs = [r.deviation for r in v.reasons]
        assert devs == sorted(devs, reverse=True)
    # the account is longer than any benign calibration account: percentiles come from the
    # borrowed bin, never NaN
    assert flagged[-1].n_queries >= 64 and engine.calibration.samples[int(bin_of(flagged[-1].n_queries))].shape[0] == 0


def test_report_content(make_engine, topics):
    engine = make_engine()
    rng = np.random.default_rng(4)
    acc, vec = topical_stream(rng, 1, DIM, q_range=(600, 600), topics=topics, prefix="long")
    ts = [1000.0 + i for i in range(600)]
    for s in range(0, 600, 50):
        engine.observe_embeddings(acc[s : s + 50], vec[s : s + 50], ts=ts[s : s + 50])
    report = engine.report("long-0")
    assert isinstance(report, pw.AccountReport) and report.level in pw.Level
    rep = report.to_dict()  # the sidecar's JSON
    assert rep["level"] == report.level.value and rep["n_queries"] == report.n_queries
    assert rep["account"] == "long-0" and rep["n_queries"] == 600 and rep["history_size"] == 600
    assert rep["first_ts"] == 1000.0 and rep["last_ts"] == 1599.0
    assert set(rep["features"]) == set(pw.FEATURE_NAMES)
    for name, f in rep["features"].items():
        if name in ("framed_return_rate", "framed_share"):  # vectors alone start no frame thread
            assert f["value"] is None and f["benign_percentile"] is None, name
            continue
        assert f["value"] is not None and math.isfinite(f["value"]), name
        assert f["benign_percentile"] is not None and 0.0 <= f["benign_percentile"] <= 100.0, name
    assert 0.0 <= rep["risk"] <= 1.0 and rep["level"] in ("ok", "watch", "flag")
    assert rep["flagged"] == (rep["level"] == "flag")
    rot = rep["risk_over_time"]
    assert 0 < len(rot) <= 256  # bounded though 600 queries were observed
    ns = [p["n_queries"] for p in rot]
    assert ns == sorted(ns) and ns[-1] <= 600 and all(0.0 <= p["risk"] <= 1.0 for p in rot)
    with pytest.raises(pw.UnknownAccountError, match="never-seen"):
        engine.report("never-seen")


def test_forget_removes_only_that_account(make_engine, stream):
    accounts, vectors = stream
    engine = make_engine()
    feed(engine, accounts, vectors)
    before = engine.report("live-0")
    total = engine.stats().stored_queries
    n_sweep = engine.report("sweep").history_size
    assert engine.forget("sweep") is True
    assert "sweep" not in engine.accounts() and "sweep" not in engine.accounts("flag")
    with pytest.raises(pw.UnknownAccountError):
        engine.report("sweep")
    assert engine.stats().stored_queries == total - n_sweep
    assert engine.forget("sweep") is False
    assert engine.report("live-0") == before
    # a forgotten account starts again from nothing
    v = engine.observe_embeddings(["sweep"], vectors[:1])[0]
    assert v.n_queries == 1 and engine.report("sweep").history_size == 1


def test_memory_budget_evicts_least_recently_seen(make_engine, topics):
    budget = 1024**2
    engine = make_engine(memory_budget_bytes=budget)
    per_account = engine.pipeline.state_bytes() + DIM * 4
    n = int(1.4 * budget / per_account)
    rng = np.random.default_rng(6)
    vecs = unit_rows(rng.standard_normal((n + 1, DIM)))
    names = [f"u{i:04d}" for i in range(n)]
    half = n // 2
    for s in range(0, half, 10):
        engine.observe_embeddings(names[s : min(s + 10, half)], vecs[s : min(s + 10, half)])
    engine.observe_embeddings([names[0]], vecs[n : n + 1])  # u0000 becomes recent again
    for s in range(half, n, 10):
        e = min(s + 10, n)
        engine.observe_embeddings(names[s:e], vecs[s:e])
        assert engine.stats().bytes_held <= budget
    held = engine.accounts()
    assert len(held) < n
    assert names[0] in held  # re-touched: survived
    evicted = [a for a in names if a not in held]
    assert evicted and names[1] in evicted
    # evicted accounts are the least recently seen ones: every evicted account was seen
    # before every surviving account (u0000 aside, which was seen again)
    survivors = [a for a in names[1:] if a in held]
    assert max(names.index(a) for a in evicted) < min(names.index(a) for a in survivors)
    assert held[-1] == names[-1]
    with pytest.raises(pw.UnknownAccountError):
        engine.report(names[1])


def test_thread_safety_matches_sequential(make_engine, topics):
    rng = np.random.default_rng(8)
    per_thread = []
    for t in range(4):
        acc, vec = topical_stream(rng, 2, DIM, q_range=(40, 60), topics=topics, prefix=f"t{t}", interleave=True)
        per_thread.append([(acc[s : s + 6], vec[s : s + 6]) for s in range(0, len(acc), 6)])

    sequential = make_engine()
    want = {}
    for batches in per_thread:
        for acc, vec in batches:
            for v in sequential.observe_embeddings(acc, vec):
                want.setdefault(v.account, []).append(key(v))

    concurrent = make_engine()
    got: dict[str, list] = {}
    errors = []
    lock = threading.Lock()
    barrier = threading.Barrier(len(per_thread))

    def run(batches):
        try:
            barrier.wait()
            for acc, vec in batches:
                vs = concurrent.observe_embeddings(acc, vec)
                with lock:
                    for v in vs:
                        got.setdefault(v.account, []).append(key(v))
        except Exception as exc:  # noqa: BLE001 - a thread's failure of any kind is re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(b,)) for b in per_thread]
    for th in threads:
        th.start()
    for th in threads:
        th.join(60)
    assert not errors
    assert got == want
    assert concurrent.stats().observations == sequential.stats().observations


def test_batched_percentiles_equal_one_at_a_time(make_engine):
    cal = make_engine().calibration
    rng = np.random.default_rng(4)
    rows = np.concatenate([s for s in cal.samples if s.shape[0]])[:60].copy()
    rows[5, 3] = np.nan
    n = rng.integers(1, 5000, rows.shape[0])
    index = np.stack([rng.permutation(rows.shape[1])[:4] for _ in range(rows.shape[0])])
    got = cal.percentiles(rows, n, index)
    for i in range(rows.shape[0]):
        for c, j in enumerate(index[i]):
            expected = cal.percentile(int(j), float(rows[i, j]), int(n[i]))
            assert (math.isnan(got[i, c]) and math.isnan(expected)) or got[i, c] == expected


def test_a_flood_of_new_accounts_cannot_evict_a_flagged_account_out_of_its_level(make_engine, topics, tmp_path):
    budget = 1024**2
    engine = make_engine(memory_budget_bytes=budget)
    rng = np.random.default_rng(8)
    scatter = unit_rows(rng.standard_normal((120, DIM)))
    assert engine.observe_embeddings(["sweeper"] * 120, scatter)[-1].level is pw.Level.FLAG
    per_account = engine.pipeline.state_bytes() + DIM * 4
    flood = int(3 * budget / per_account)
    vecs = unit_rows(rng.standard_normal((flood, DIM)))
    for s in range(0, flood, 50):
        engine.observe_embeddings([f"f{i}" for i in range(s, min(s + 50, flood))], vecs[s : s + 50])
    # ok accounts go first: the flagged account is still held whole
    assert "sweeper" in engine.accounts(pw.Level.FLAG)
    # a budget too small for anything: it is evicted too, but leaves its level behind, which
    # survives a snapshot and comes back with the account
    tiny = make_engine(memory_budget_bytes=budget)
    tiny.observe_embeddings(["sweeper"] * 120, scatter)
    judged_by = [r.feature for r in tiny.report("sweeper").reasons]
    assert judged_by
    # flagged floods: nothing at ok is left to evict first
    flagged_flood = [unit_rows(rng.standard_normal((120, DIM))) for _ in range(int(1.5 * budget / (120 * DIM * 4)) + 8)]
    for i, rows in enumerate(flagged_flood):
        tiny.observe_embeddings([f"g{i}"] * 120, rows)
    assert "sweeper" not in tiny.accounts() and "sweeper" in tiny.pipeline.evicted
    stats = tiny.stats()
    assert stats.evicted_records >= 1 and stats.evicted >= stats.evicted_records
    assert stats.to_dict()["evicted_records"] == stats.evicted_records
    tiny.save(tmp_path / "tiny.npz")
    again = pw.Engine.load(tmp_path / "tiny.npz")
    back = again.observe_embeddings(["sweeper"], scatter[:1])[0]
    assert back.level is pw.Level.FLAG and back.flagged and back.peak_risk > 0.99
    # the analyst still sees why: the reasons it was evicted with, until its new history has some
    assert [r.feature for r in again.report("sweeper").reasons] == judged_by
    again.save(tmp_path / "again.npz")
    assert [r.feature for r in pw.Engine.load(tmp_path / "again.npz").report("sweeper").reasons] == judged_by
    # a privacy forget drops the record as well
    assert tiny.forget("sweeper") is True and "sweeper" not in tiny.pipeline.evicted
    assert tiny.observe_embeddings(["sweeper"], scatter[:1])[0].level is pw.Level.OK
