"""Topics: how many distinct things a group asked, and the share of its score it keeps for them."""

from __future__ import annotations

import numpy as np
import pytest

import probewatch as pw
from probewatch.campaigns.groups import Group
from probewatch.campaigns.scoring import GroupCalibration, GroupFeatures, GroupJudge
from probewatch.campaigns.topics import MAX_TOPICS, TOPIC_COSINE, UNKNOWN, asked_share, count_topics, opens_topic
from probewatch.errors import SnapshotError
from tests.support import saved_campaign_calibration, unit_rows
from tests.unit.test_campaigns import DIM, feed


def rewordings(rng, sentences: np.ndarray, n: int, noise: float = 0.25) -> np.ndarray:
    """``n`` rewordings: each one of ``sentences`` (unit rows) with a little noise of its own."""
    picks = sentences[rng.integers(len(sentences), size=n)]
    return unit_rows(picks + noise * rng.standard_normal(picks.shape) / np.sqrt(picks.shape[1]))


def in_a_frame(rng, content: np.ndarray, weight: float = 2.0) -> np.ndarray:
    """The rows of ``content`` sent in one long shared template: the template's component
    dominates every vector."""
    frame = unit_rows(rng.standard_normal((1, content.shape[1])))[0]
    return unit_rows(weight * frame + content)


def fed_one_by_one(vectors: np.ndarray) -> Group:
    """A group that took ``vectors`` as the campaign layer adds single queries."""
    group = Group("k", "template", "t", vectors.shape[1])
    for x in vectors:
        group.total += x
        group.n += 1
        group.note_topic(x)
    return group


def test_the_online_count_equals_the_brute_force_reference():
    rng = np.random.default_rng(0)
    sentences = unit_rows(rng.standard_normal((7, DIM)))
    for vectors in (rewordings(rng, sentences, 90), unit_rows(rng.standard_normal((40, DIM)))):
        group = fed_one_by_one(vectors)
        assert group.topics == count_topics(vectors) == group.topic_rows.shape[0]


def test_rewordings_of_a_handout_are_its_sentences_and_distinct_queries_are_their_own():
    rng = np.random.default_rng(1)
    handout = unit_rows(rng.standard_normal((5, DIM)))
    assert count_topics(rewordings(rng, handout, 120)) == 5
    assert count_topics(unit_rows(rng.standard_normal((30, DIM)))) == 30
    # exact repeats of one prompt are one topic
    assert count_topics(np.repeat(handout[:1], 6, axis=0)) == 1


def test_a_shared_template_does_not_merge_the_topics_sent_in_it():
    """Uncentred, every query in one long template is alike (one topic); centred on the group's
    mean, what varies tells them apart."""
    rng = np.random.default_rng(2)
    questions = unit_rows(rng.standard_normal((40, DIM)))
    framed = in_a_frame(rng, questions)
    assert float(np.min(framed @ framed.T)) > TOPIC_COSINE  # one topic if read uncentred
    assert count_topics(framed) == 40
    handout = unit_rows(rng.standard_normal((6, DIM)))
    assert count_topics(in_a_frame(rng, rewordings(rng, handout, 100, noise=0.15))) == 6


def test_the_count_stops_at_max_topics():
    rng = np.random.default_rng(3)
    vectors = unit_rows(rng.standard_normal((MAX_TOPICS + 30, DIM)))
    group = fed_one_by_one(vectors)
    assert group.topics == count_topics(vectors) == MAX_TOPICS
    assert group.topic_rows.shape == (MAX_TOPICS, DIM) and group.topic_rows.dtype == np.float32
    group.note_unseen_topics(5)
    assert group.topics == MAX_TOPICS


def test_opens_topic_reads_cosines_centred_on_the_mean():
    mean = np.zeros(3, dtype=np.float32)
    leaders = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    assert not opens_topic(leaders, np.array([0.9, 0.3, 0.0]), mean)
    assert opens_topic(leaders, np.array([0.0, 1.0, 0.0]), mean)
    assert opens_topic(np.zeros((0, 3), dtype=np.float32), np.array([0.0, 1.0, 0.0]), mean)
    # centred on a mean near the leader, a query close to it in raw cosine differs
    assert opens_topic(leaders, np.array([0.9, 0.3, 0.0]), np.array([0.95, 0.0, 0.0]))


def test_asked_share_is_topics_per_account_capped_and_one_when_unknown():
    assert asked_share(5, 30) == pytest.approx(5 / 30)
    assert asked_share(40, 30) == 1.0
    assert asked_share(UNKNOWN, 30) == 1.0
    assert asked_share(3, 0) == 1.0
    # a group that asked MAX_TOPICS things is not discounted whatever its size
    assert asked_share(MAX_TOPICS, 10 * MAX_TOPICS) == 1.0
    assert asked_share(MAX_TOPICS // 2, 10 * MAX_TOPICS) == pytest.approx(0.5)
    np.testing.assert_allclose(asked_share(np.array([2, 8, UNKNOWN]), np.array([8, 8, 8])), [0.25, 1.0, 1.0])


def _calibration() -> GroupCalibration:
    rng = np.random.default_rng(5)
    n = 7 * 40
    crowds = {
        "focus": rng.normal(0.1, 0.03, n),
        "between": rng.normal(0.2, 0.03, n),
        "evidence": rng.normal(0.0, 0.2, n),
        "elicitation": np.full(n, np.nan),
        "members": np.repeat([2, 4, 8, 16, 32, 64, 128], 40),
        "duplicate_share": np.zeros(n),
        "lookalike": np.tile([False, True], n // 2),
    }
    return GroupCalibration.fit(crowds)


def test_a_group_keeps_the_share_of_its_score_it_asked_for():
    calibration = _calibration()
    judge = GroupJudge(calibration, 1e-3, 1e-2)
    coordinated = GroupFeatures(
        members=30,
        accounts_seen=30,
        queries=180,
        member_focus=-0.1,
        within_similarity=0.3,
        between_similarity=0.3,
        member_evidence=2.0,
        duplicate_share=0.0,
        elicitation_rate=float("nan"),
        start_spread_hours=float("nan"),
    )
    full, _ = judge.judge(coordinated)
    assert full > judge.flag_threshold
    for topics in (MAX_TOPICS, 30, 45):
        assert judge.judge(GroupFeatures(**{**coordinated.__dict__, "topics": topics}))[0] == pytest.approx(full)
    # accounts, not members: 30 members among 60 accounts that asked 30 things keep half
    wider = GroupFeatures(**{**coordinated.__dict__, "topics": 30, "accounts_seen": 60})
    assert judge.judge(wider)[0] == pytest.approx(full / 2)
    few, risk = judge.judge(GroupFeatures(**{**coordinated.__dict__, "topics": 6}))
    assert few == pytest.approx(full * 6 / 30) and risk < 1.0 - calibration.exceedance(full)
    joint_full, _ = judge.judge(coordinated, joint=True)
    joint_few, _ = judge.judge(GroupFeatures(**{**coordinated.__dict__, "topics": 6}), joint=True)
    assert joint_few < joint_full


# -- the layer -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def calibration_path(tmp_path_factory):
    return saved_campaign_calibration(tmp_path_factory.mktemp("topics-calibration"), DIM)[0]


def class_traffic(rng, students=30, per_student=6, handout=5):
    """A class on one card: every student rewords sentences of one handout, in one frame."""
    sentences = unit_rows(rng.standard_normal((handout, DIM)))
    vectors = in_a_frame(rng, rewordings(rng, sentences, students * per_student, noise=0.15))
    accounts = [f"student-{i % students}" for i in range(students * per_student)]
    prompts = [f"rewrite this in plain words please: sentence {i}" for i in range(len(accounts))]
    metas = [{"payment": "course-card"}] * len(accounts)
    return accounts, vectors, prompts, metas


def payment_group(engine):
    layer = engine.pipeline.campaigns
    (group,) = [g for g in layer.groups.values() if (g.kind, g.label) == ("meta", "payment")]
    return layer, group


def test_a_class_group_counts_its_handout_and_is_discounted_by_it(calibration_path):
    engine = pw.Engine(calibration_path=calibration_path, device="cpu")
    feed(engine, *class_traffic(np.random.default_rng(6)))
    layer, group = payment_group(engine)
    features = layer.features(group)
    assert features.members == features.accounts_seen == 30 and features.topics == 5
    seen = []
    original = layer.judge.calibration.score

    def recording(*args, **kwargs):
        seen.append(kwargs.get("asked"))
        return original(*args, **kwargs)

    layer.judge.calibration.score = recording
    layer.judge.judge(features, joint=True)
    assert seen == [pytest.approx(5 / 30)]


def test_topics_survive_a_snapshot_and_older_snapshots_load_without_them(calibration_path, tmp_path):
    engine = pw.Engine(calibration_path=calibration_path, device="cpu")
    traffic = class_traffic(np.random.default_rng(7))
    t = len(traffic[0]) // 2 // 16 * 16
    feed(engine, *(x[:t] for x in traffic))
    engine.save(tmp_path / "t.npz")
    again = pw.Engine.load(tmp_path / "t.npz")
    for key, group in engine.pipeline.campaigns.groups.items():
        other = again.pipeline.campaigns.groups[key]
        assert other.topics == group.topics
        np.testing.assert_array_equal(other.topic_rows, group.topic_rows)
    feed(engine, *(x[t:] for x in traffic))
    feed(again, *(x[t:] for x in traffic))
    assert payment_group(again)[1].topics == payment_group(engine)[1].topics == 5

    layer = engine.pipeline.campaigns
    state = layer.state_dict()
    for entry in state["header"]["groups"]:
        del entry["topics"], entry["topic_rows"]
    del state["arrays"]["group_topic_rows"]
    older = pw.Engine(calibration_path=calibration_path, device="cpu").pipeline.campaigns
    older.load_state(state)
    assert all(g.topics == UNKNOWN and g.topic_rows is None for g in older.groups.values())
    group = next(iter(older.groups.values()))
    group.note_topic(unit_rows(np.random.default_rng(0).standard_normal((1, DIM)))[0])
    assert group.topics == UNKNOWN  # an uncounted group stays uncounted: never discounted


def test_a_snapshot_with_damaged_topic_rows_is_refused(calibration_path, tmp_path):
    engine = pw.Engine(calibration_path=calibration_path, device="cpu")
    feed(engine, *class_traffic(np.random.default_rng(8), students=12, per_student=4))
    state = engine.pipeline.campaigns.state_dict()
    rows = state["arrays"]["group_topic_rows"]
    fresh = lambda: pw.Engine(calibration_path=calibration_path, device="cpu").pipeline.campaigns  # noqa: E731
    state["arrays"]["group_topic_rows"] = rows[:-1]
    with pytest.raises(ValueError, match="topic rows"):
        fresh().load_state(state)
    state["arrays"]["group_topic_rows"] = rows
    entry = next(e for e in state["header"]["groups"] if e["topic_rows"])
    entry["topics"] = entry["topic_rows"] - 1
    with pytest.raises(ValueError, match="rows <= topics"):
        fresh().load_state(state)
    # through Engine.load the same damage is a SnapshotError that names the file
    engine.save(tmp_path / "ok.npz")
    with np.load(tmp_path / "ok.npz", allow_pickle=False) as z:
        arrays = dict(z)
    arrays["campaign_group_topic_rows"] = arrays["campaign_group_topic_rows"][:-1]
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(SnapshotError, match=r"bad\.npz.*topic rows"):
        pw.Engine.load(tmp_path / "bad.npz")
