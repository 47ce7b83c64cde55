""" "Mark known-benign", the console's second action, below the console: the engine's
``mark_benign`` feeds the live benign population whatever the account's level, the mark
survives a snapshot, and a forget takes it back out."""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from tests.support import topical_calibration_engine, topical_stream, unit_rows

DIM = 48
SEED = 707
LEARN = {"population_update_every": 10**9, "population_min_accounts": 10, "population_min_age_s": 0.0}


@pytest.fixture(scope="module")
def topics():
    return np.random.default_rng(SEED).standard_normal((24, DIM))


@pytest.fixture(scope="module")
def calibration_path(tmp_path_factory, topics):
    path = tmp_path_factory.mktemp("calibration") / "known_benign_calibration.npz"
    topical_calibration_engine(topics, SEED + 1).save_calibration(path)
    return path


def templated_app(rng: np.random.Generator, centre: np.ndarray, accounts: int, queries: int, prefix: str):
    """A benign app the calibration has no look-alike for: near-duplicate prompts around one centre."""
    names, rows = [], []
    for a in range(accounts):
        rows.append(unit_rows(centre + 0.3 * rng.standard_normal(DIM) + 0.35 * rng.standard_normal((queries, DIM))))
        names += [f"{prefix}-{a}"] * queries
    return names, np.concatenate(rows)


def engine_with_traffic(calibration_path, topics):
    engine = pw.Engine(calibration_path=calibration_path, device="cpu", campaigns=False, **LEARN)
    rng = np.random.default_rng(SEED + 2)
    engine.observe_embeddings(*topical_stream(rng, 14, DIM, q_range=(30, 40), topics=topics, prefix="user"))
    centre = rng.standard_normal(DIM) * 1.5
    for name, vectors in zip(*templated_app(rng, centre, 12, 40, "app"), strict=True):
        engine.observe_embeddings([name], vectors[None, :])
    return engine, centre


def test_marked_accounts_teach_whatever_their_level_and_their_look_alikes_score_lower(calibration_path, topics):
    plain, centre = engine_with_traffic(calibration_path, topics)
    marked, _ = engine_with_traffic(calibration_path, topics)
    app = [a for a in marked.accounts() if a.startswith("app-")]
    suspicious = [a for a in app if marked.report(a).level is not pw.Level.OK]
    assert len(suspicious) >= 6, "the templated app should look unusual to the prior"
    for account in app:
        assert marked.mark_benign(account) and marked.known_benign(account)
    assert not marked.mark_benign("never-seen") and not marked.known_benign("never-seen")
    population = marked.pipeline.population
    teaching = set(population.eligible(marked.pipeline._standing, marked.pipeline.clock))
    assert set(suspicious) <= teaching  # at watch or flag, and teaching all the same
    assert not set(suspicious) & set(plain.pipeline.population.eligible(plain.pipeline._standing, plain.pipeline.clock))
    assert all(population.slots.get(a) for a in suspicious)  # the mark offered their current rows
    levels = {a: marked.report(a).level for a in suspicious}
    assert plain.pipeline.learn_normal() and marked.pipeline.learn_normal()
    assert marked.pipeline.population.last_refit["accounts"] > plain.pipeline.population.last_refit["accounts"]
    assert {a: marked.report(a).level for a in suspicious} == levels  # a mark never lowers a level
    # a new account of the same app: judged against look-alikes that now include the app
    rng = np.random.default_rng(SEED + 3)
    names, vectors = templated_app(rng, centre, 1, 40, "newcomer")
    scores = [engine.observe_embeddings(names, vectors)[-1].score for engine in (plain, marked)]
    assert scores[1] < scores[0] - 0.5, scores


def test_the_mark_survives_a_snapshot_and_a_forget_removes_it(calibration_path, topics, tmp_path):
    engine, _ = engine_with_traffic(calibration_path, topics)
    assert engine.mark_benign("app-0") and engine.mark_benign("app-1")
    engine.save(tmp_path / "state.npz")
    loaded = pw.Engine.load(tmp_path / "state.npz")
    assert loaded.known_benign("app-0") and loaded.known_benign("app-1") and not loaded.known_benign("app-2")
    assert loaded.forget("app-0") and not loaded.known_benign("app-0")
