"""Learning the provider's normal (probewatch.detect.learning): who teaches, how much, warm-up,
snapshots, and that it helps unseen benign apps without letting a patient attacker in."""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from probewatch.detect.features import N_FEATURES
from probewatch.detect.learning import AccountStanding, LearningRules, ProviderNormal
from probewatch.detect.scoring import MIN_BIN_SAMPLES, N_BINS
from tests.support import topical_calibration_engine, topical_stream, unit_rows

DIM = 48
SEED = 2031
LEARN = {  # learning on, small enough for synthetic traffic
    "population_update_every": 200,
    "population_min_accounts": 10,
    "population_min_queries": 16,
    "population_min_age_s": 0.0,
}


@pytest.fixture(scope="module")
def topics():
    return np.random.default_rng(SEED).standard_normal((24, DIM))


@pytest.fixture(scope="module")
def calibration_path(tmp_path_factory, topics):
    path = tmp_path_factory.mktemp("calibration") / "learning_calibration.npz"
    topical_calibration_engine(topics, SEED + 1).save_calibration(path)
    return path


@pytest.fixture
def make_engine(calibration_path):
    def make(**overrides):
        return pw.Engine(calibration_path=calibration_path, device="cpu", campaigns=False, **overrides)

    return make


def app_accounts(rng, centre, n_accounts, n_queries, prefix, spread=0.55):
    """A templated benign app none of the calibration resembles: every account's prompts sit
    close to one template centre (high focus, near-duplicates of each other)."""
    accounts, rows = [], []
    for a in range(n_accounts):
        own = centre + 0.3 * rng.standard_normal(DIM)
        rows.append(unit_rows(own + spread * rng.standard_normal((n_queries, DIM))))
        accounts += [f"{prefix}-{a}"] * n_queries
    return accounts, np.concatenate(rows)


def observe_per_account(engine, accounts, vectors, ts=None):
    """Each account's queries in one call, accounts one after another."""
    acc = np.asarray(accounts)
    out = {}
    for name in dict.fromkeys(accounts):
        rows = np.flatnonzero(acc == name)
        stamps = None if ts is None else [ts[i] for i in rows]
        out[name] = engine.observe_embeddings([name] * rows.size, vectors[rows], stamps)[-1]
    return out


def test_learning_off_by_default(make_engine, topics):
    engine = make_engine()
    assert engine.config.population_update_every == 0
    cal = engine.calibration
    acc, vec = topical_stream(np.random.default_rng(3), 30, DIM, q_range=(20, 40), topics=topics)
    engine.observe_embeddings(acc, vec)
    assert engine.calibration is cal
    assert len(engine.pipeline.population) == 0


@pytest.mark.parametrize("share", [0.2, 0.5])
def test_live_rows_bounded_per_bin_and_thresholds_kept(make_engine, topics, share):
    engine = make_engine(**LEARN, population_max_share=share)
    prior = engine.calibration
    base = [len(s) for s in prior.samples]
    flag_thr, watch_thr = engine.detector.flag_threshold, engine.detector.watch_threshold
    acc, vec = topical_stream(np.random.default_rng(10), 40, DIM, q_range=(20, 40), topics=topics, interleave=True)
    refits = 0
    for s in range(0, len(acc), 100):
        engine.observe_embeddings(acc[s : s + 100], vec[s : s + 100])
        if "live population" in engine.calibration.source:
            refits += 1
            for b, rows in enumerate(engine.calibration.samples):
                if len(rows) == base[b]:
                    continue  # nothing learned in this bin
                floor = base[b] if base[b] >= MIN_BIN_SAMPLES else base[prior.donor_bin[b]]
                live = len(rows) - floor
                assert 0 < live <= share / (1 - share) * floor
    assert refits >= 3
    assert any(len(s) > b for s, b in zip(engine.calibration.samples, base, strict=True))
    assert engine.detector.flag_threshold == flag_thr and engine.detector.watch_threshold == watch_thr


def test_warm_up_waits_for_enough_eligible_accounts(make_engine, topics):
    engine = make_engine(**{**LEARN, "population_min_accounts": 25})
    acc, vec = topical_stream(np.random.default_rng(11), 24, DIM, q_range=(20, 30), topics=topics)
    engine.observe_embeddings(acc, vec)
    assert not engine.pipeline.learn_normal()  # 24 eligible < 25
    assert "live population" not in engine.calibration.source
    acc2, vec2 = topical_stream(np.random.default_rng(12), 2, DIM, q_range=(20, 30), topics=topics, prefix="more")
    engine.observe_embeddings(acc2, vec2)
    assert engine.pipeline.learn_normal()
    assert engine.pipeline.population.last_refit["accounts"] == 26


def test_each_account_teaches_at_most_its_cap():
    rules = LearningRules(rows_per_account=8, min_queries=1, min_age_s=0.0, min_accounts=1)
    normal = ProviderNormal(rules, capacity=64)
    rng = np.random.default_rng(0)
    for n in range(1, 501):
        normal.remember("heavy", n, rng.standard_normal(N_FEATURES))
    for a in range(10):
        for n in range(1, 4):
            normal.remember(f"light-{a}", n, rng.standard_normal(N_FEATURES))
    assert len(normal.slots["heavy"]) == 8
    kept = sorted(int(normal.ns[s]) for s in normal.slots["heavy"])
    assert kept[-1] > 100  # a sample over its whole life, not its first 8 queries
    assert len(normal) == 8 + 30
    # a full reservoir stays full, and no account ever holds more than its cap
    for a in range(200):
        for n in range(1, 12):
            normal.remember(f"late-{a}", n, rng.standard_normal(N_FEATURES))
    assert len(normal) == 64
    assert max(len(v) for v in normal.slots.values()) <= 8
    assert sum(len(v) for v in normal.slots.values()) == 64


def test_a_state_saved_before_the_newest_features_loads_with_them_unknown():
    rules = LearningRules(rows_per_account=8, min_queries=1, min_age_s=0.0, min_accounts=1)
    saved = ProviderNormal(rules, capacity=16)
    rng = np.random.default_rng(2)
    for n in range(1, 6):
        saved.remember("a", n, rng.standard_normal(N_FEATURES))
    state = saved.state_dict()
    older = {**state, "rows": state["rows"][:, : N_FEATURES - 2]}  # 0.16's 18 features
    loaded = ProviderNormal(rules, capacity=16)
    loaded.load_state(older)
    rows = loaded.rows[sorted(loaded.slots["a"])]
    assert np.isnan(rows[:, N_FEATURES - 2 :]).all()
    np.testing.assert_array_equal(rows[:, : N_FEATURES - 2], saved.rows[sorted(saved.slots["a"])][:, : N_FEATURES - 2])
    with pytest.raises(ValueError, match="features"):  # wider than this version's, or not rows at all
        loaded.load_state({**state, "rows": np.zeros((len(state["owners"]), N_FEATURES + 1))})


def test_only_old_ok_accounts_outside_suspected_campaigns_teach():
    rules = LearningRules(rows_per_account=4, min_queries=16, min_age_s=3600.0, min_accounts=1)
    normal = ProviderNormal(rules)
    for account in ("old_ok", "young", "short", "watched", "campaign", "forgotten"):
        normal.remember(account, 1, np.zeros(N_FEATURES))
    standing = {
        "old_ok": AccountStanding(40, 0.0, True, False),
        "young": AccountStanding(40, 9000.0, True, False),  # 1000 s old at clock 10000
        "short": AccountStanding(5, 0.0, True, False),
        "watched": AccountStanding(40, 0.0, False, False),
        "campaign": AccountStanding(40, 0.0, True, True),
    }
    assert normal.eligible(standing.get, clock=10_000.0) == ["old_ok"]
    # without timestamps age is unknown, and the query count alone decides
    no_ts = {**standing, "young": AccountStanding(40, float("nan"), True, False)}
    assert normal.eligible(no_ts.get, clock=float("nan")) == ["old_ok", "young"]


def test_an_account_that_reaches_watch_takes_its_rows_back(make_engine, topics):
    engine = make_engine(**LEARN)
    acc, vec = topical_stream(np.random.default_rng(13), 20, DIM, q_range=(20, 30), topics=topics)
    engine.observe_embeddings(acc, vec)
    # a patient account: benign-looking first (teaches), then a scatter sweep until watched
    patient = topical_stream(np.random.default_rng(14), 1, DIM, q_range=(30, 30), topics=topics, prefix="patient")[1]
    engine.observe_embeddings(["patient"] * 30, patient)
    assert engine.pipeline.learn_normal()
    assert "patient" in engine.pipeline.population.eligible(engine.pipeline._standing, engine.pipeline.clock)
    scatter = unit_rows(np.random.default_rng(15).standard_normal((200, DIM)))
    verdicts = engine.observe_embeddings(["patient"] * 200, scatter)
    assert verdicts[-1].level >= pw.Level.WATCH
    assert "patient" not in engine.pipeline.population.eligible(engine.pipeline._standing, engine.pipeline.clock)
    engine.pipeline.learn_normal()
    assert engine.pipeline.population.last_refit["accounts"] == 20


def test_snapshot_keeps_prior_and_live_rows_apart(make_engine, topics, tmp_path):
    engine = make_engine(**LEARN)
    acc, vec = topical_stream(np.random.default_rng(16), 30, DIM, q_range=(20, 40), topics=topics, interleave=True)
    ts = [1_700_000_000.0 + i for i in range(len(acc))]
    engine.observe_embeddings(acc, vec, ts)
    assert engine.pipeline.learn_normal()
    engine.save(tmp_path / "snap.npz")
    loaded = pw.Engine.load(tmp_path / "snap.npz")
    # the prior is stored as the prior, and the reload re-learns the same tables
    assert "live population" not in loaded.pipeline.base_calibration.source
    assert "live population" in loaded.calibration.source
    for b in range(N_BINS):
        np.testing.assert_allclose(loaded.calibration.samples[b], engine.calibration.samples[b], rtol=1e-6)
    assert loaded.pipeline.clock == engine.pipeline.clock
    # and both go on identically
    more_acc, more_vec = topical_stream(np.random.default_rng(17), 12, DIM, q_range=(20, 30), topics=topics, prefix="n")
    more_ts = [ts[-1] + 1 + i for i in range(len(more_acc))]
    a = engine.observe_embeddings(more_acc, more_vec, more_ts)
    b = loaded.observe_embeddings(more_acc, more_vec, more_ts)
    assert [(v.account, v.level, round(v.score, 9)) for v in a] == [(v.account, v.level, round(v.score, 9)) for v in b]


def test_learning_makes_an_unseen_app_look_benign_but_not_an_extractor(make_engine, topics):
    rng = np.random.default_rng(18)
    centre = 1.3 * rng.standard_normal(DIM)
    users = topical_stream(rng, 60, DIM, q_range=(20, 40), topics=topics, prefix="user")
    # Focused enough that the prior alone watches most of its accounts, loose enough that some
    # stay below watch while it runs and can teach (under look-alike rule 2 the prior's benign
    # rows are tighter, and at spread 0.55 every account of the app reached watch in warm-up).
    spread = 0.9
    app = app_accounts(rng, centre, 40, 40, "app", spread=spread)
    fresh_app = app_accounts(rng, centre, 20, 40, "fresh-app", spread=spread)
    # a poisoner warms up looking like the app, then sweeps: it must not teach the sweep
    poison_warm = app_accounts(rng, centre, 8, 24, "poison", spread=spread)
    sweeps = [unit_rows(rng.standard_normal((120, DIM))) for _ in range(8)]

    def run(learn: bool):
        engine = make_engine(**(LEARN if learn else {}))
        engine.observe_embeddings(*users)
        observe_per_account(engine, *app)
        observe_per_account(engine, *poison_warm)
        for i, rows in enumerate(sweeps):
            engine.observe_embeddings([f"poison-{i}"] * rows.shape[0], rows)
        engine.pipeline.learn_normal() if learn else None
        fresh = observe_per_account(engine, *fresh_app)
        extractors = {}
        for i, rows in enumerate(sweeps):
            name = f"sweeper-{i}"
            extractors[name] = engine.observe_embeddings([name] * rows.shape[0], rows)[-1]
        return fresh, extractors

    fresh_before, extractors_before = run(learn=False)
    fresh_after, extractors_after = run(learn=True)
    peak = lambda vs: np.mean([v.peak_risk for v in vs.values()])  # noqa: E731
    flagged = lambda vs: sum(v.level >= pw.Level.WATCH for v in vs.values())  # noqa: E731
    assert flagged(fresh_before) >= 10  # the unseen app looks odd to the prior alone
    assert flagged(fresh_after) <= flagged(fresh_before) // 4
    assert peak(fresh_after) < peak(fresh_before)
    assert flagged(extractors_after) == flagged(extractors_before) == len(sweeps)


def test_flag_tail_counts_only_accounts_long_enough_to_be_scored(topics):
    from probewatch.detect.fitting import CROSS_FIT_REPEATS
    from probewatch.detect.scoring import MIN_SCORED_QUERIES

    rng = np.random.default_rng(SEED + 7)
    heavy = topical_stream(rng, 40, DIM, q_range=(20, 40), topics=topics, prefix="heavy")
    light = topical_stream(rng, 200, DIM, q_range=(3, MIN_SCORED_QUERIES - 1), topics=topics, prefix="light")
    with_light = pw.Engine.from_benign_embeddings(heavy[0] + light[0], np.concatenate([heavy[1], light[1]]))
    alone = pw.Engine.from_benign_embeddings(*heavy)
    # 200 accounts too light to ever score are not in the tail (about 170 of them would be
    # table accounts), so they do not pull the threshold down for the accounts that can score
    # (the tail holds each account's maximum once per cross-fitting split)
    tail = with_light.calibration.account_max_scores
    assert tail.size <= 40 * CROSS_FIT_REPEATS and (tail > 0).mean() > 0.5
    # the same accounts make both tails (their thresholds are not compared: a tail of 30-40
    # accounts extrapolated to 0.1 % moves with any one of them)
    assert abs(tail.size - alone.calibration.account_max_scores.size) <= 8 * CROSS_FIT_REPEATS


def test_flag_tail_holds_every_scored_account_once_per_cross_fitting_split(topics):
    from probewatch.detect.fitting import CROSS_FIT_REPEATS, MIN_REFERENCE_ACCOUNTS, REFERENCE_SHARE

    rng = np.random.default_rng(SEED + 8)
    accounts, vectors = topical_stream(rng, 40, DIM, q_range=(20, 40), topics=topics, prefix="acct")
    engine = pw.Engine.from_benign_embeddings(accounts, vectors)
    table_accounts = 40 - max(MIN_REFERENCE_ACCOUNTS, round(40 * REFERENCE_SHARE))
    assert CROSS_FIT_REPEATS > 1
    assert engine.calibration.account_max_scores.size == CROSS_FIT_REPEATS * table_accounts


def test_members_of_suspected_campaigns_do_not_teach(calibration_path, topics, monkeypatch):
    engine = pw.Engine(calibration_path=calibration_path, device="cpu", **LEARN)
    assert engine.pipeline.campaigns is not None
    acc, vec = topical_stream(np.random.default_rng(SEED + 11), 12, DIM, q_range=(20, 30), topics=topics)
    engine.observe_embeddings(acc, vec)
    pipeline = engine.pipeline
    everyone = set(pipeline.population.eligible(pipeline._standing, pipeline.clock))
    assert len(everyone) >= 8  # old enough, at ok, in no suspected group
    member = sorted(everyone)[0]
    monkeypatch.setattr(pipeline.campaigns, "suspected", lambda account: account == member)
    assert set(pipeline.population.eligible(pipeline._standing, pipeline.clock)) == everyone - {member}


def test_vouched_heavy_accounts_teach_history_lengths_the_prior_never_reached(make_engine, topics):
    """The prior's accounts stop at 40 queries, so longer histories borrow a short bin, and
    heavy benign accounts reach watch there (so they never teach on their own). A provider's
    heavy keys it vouches for fill those bins, on the borrowed rows as a floor, and a new heavy
    account like them is then judged against heavy look-alikes."""
    engine = make_engine(**{**LEARN, "population_update_every": 10**9})  # learns when told to, below
    prior, flag_threshold = engine.calibration, engine.detector.flag_threshold
    long_bin = 8  # 256-511 queries
    assert len(prior.samples[long_bin]) < MIN_BIN_SAMPLES and prior.donor_bin[long_bin] != long_bin
    rng = np.random.default_rng(19)
    accounts, vectors = topical_stream(rng, 30, DIM, q_range=(300, 400), topics=topics, prefix="heavy")
    newcomer = topical_stream(rng, 8, DIM, q_range=(300, 400), topics=topics, prefix="new")
    before = observe_per_account(engine, *newcomer)
    assert all(v.level >= pw.Level.WATCH for v in before.values())  # the false positives this fixes
    for account in before:
        engine.forget(account)
    acc = np.asarray(accounts)
    for account in dict.fromkeys(accounts):  # the provider vouches for its heavy keys up front
        rows = np.flatnonzero(acc == account)
        engine.observe_embeddings([account], vectors[rows[:1]])
        assert engine.mark_benign(account)
        engine.observe_embeddings([account] * (rows.size - 1), vectors[rows[1:]])
    assert engine.pipeline.learn_normal()
    learned = engine.calibration
    assert learned.donor_bin[long_bin] == long_bin
    floor = prior.samples[prior.donor_bin[long_bin]]
    np.testing.assert_array_equal(learned.samples[long_bin][: len(floor)], floor)
    assert len(floor) < len(learned.samples[long_bin]) <= 2 * len(floor)
    assert engine.detector.flag_threshold == flag_threshold
    after = observe_per_account(engine, *newcomer)
    assert np.mean([after[a].score for a in after]) < 0.8 * np.mean([before[a].score for a in before])
    assert sum(v.level >= pw.Level.WATCH for v in after.values()) < len(after) / 2


def test_the_campaign_evidence_scale_is_fitted_kept_by_learning_and_saved(make_engine, topics, tmp_path):
    """Rule 2 leaves repetition out of the account score and in the campaign evidence, which
    gets its own out-of-sample scale at fitting; learning and snapshots carry it unchanged."""
    engine = make_engine(**LEARN)
    prior = engine.calibration
    assert prior.lookalike_rule == 2
    norm = prior.evidence_norm
    assert norm.shape == (N_BINS, 2) and np.isfinite(norm).all() and (norm[:, 1] > norm[:, 0]).all()
    # the evidence searches every coordinate the spread channel does and three more, on the same
    # out-of-sample queries, so each query's distance, and each quantile, is at least as large
    assert (norm >= prior.distance_norm[0] - 1e-5).all() and (norm > prior.distance_norm[0] + 1e-3).any()
    acc, vec = topical_stream(np.random.default_rng(19), 30, DIM, q_range=(20, 40), topics=topics, interleave=True)
    engine.observe_embeddings(acc, vec, [1_700_000_000.0 + i for i in range(len(acc))])
    assert engine.pipeline.learn_normal()
    assert "live population" in engine.calibration.source
    np.testing.assert_array_equal(engine.calibration.evidence_norm, norm)
    engine.save(tmp_path / "snap.npz")
    np.testing.assert_array_equal(pw.Engine.load(tmp_path / "snap.npz").calibration.evidence_norm, norm)
