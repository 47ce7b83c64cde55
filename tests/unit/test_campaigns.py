"""The campaign layer: each linking signal, the group statistics against brute force, group
scoring, the layer end to end on synthetic traffic, its state, and its caps."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import probewatch as pw
from probewatch.campaigns.fitting import benign_crowd_features, benign_probe_linked, fit_group_calibration
from probewatch.campaigns.groups import (
    exchangeable_spread,
    fingerprint,
    member_deviation,
    member_mean_focus,
    pair_similarities,
    pair_stats_from_sums,
)
from probewatch.campaigns.metadata import META_KEYS, MetadataHasher, check_meta
from probewatch.campaigns.scoring import (
    MIN_MEMBER_QUERIES,
    N_MEMBER_BINS,
    Z_AT_Q01,
    GroupCalibration,
    GroupFeatures,
    GroupJudge,
    joint_evidence,
    member_bin,
    probe_link_evidence,
)
from probewatch.campaigns.templates import template_anchors, tokens
from probewatch.detect.scoring import MIN_SCORED_QUERIES
from probewatch.errors import BatchError, InputError, UnknownCampaignError
from tests.support import saved_campaign_calibration, topical_stream, unit_rows

DIM = 48


# -- linking signals ------------------------------------------------------------------------
WRAPPER = (
    "Think step by step and write out all of your reasoning. Question: {q} Then give the final answer on its own line."
)


def test_a_wrapper_gives_the_same_anchors_whatever_the_payload():
    a = template_anchors(WRAPPER.format(q="what is the boiling point of ethanol at sea level"))
    b = template_anchors(WRAPPER.format(q="who designed the first programmable loom and when"))
    assert [k for k, _ in a] == [k for k, _ in b]
    assert a[0][1] == "think step by step and write"


def test_anchors_need_room_for_a_payload_and_mask_numbers():
    assert template_anchors("thanks, that works") == []
    assert template_anchors("continue") == []
    assert tokens("Order 66 and 1984") == ["order", "#", "and", "#"]
    one = template_anchors("Translate into French, keep the tone: invoice 1234 is due on the 5th of May, 2026 please")
    two = template_anchors("Translate into French, keep the tone: invoice 98 is due on the 17th of May, 2025 please")
    assert [k for k, _ in one] == [k for k, _ in two]


def test_meta_checks_name_the_key_and_the_problem():
    assert check_meta(None) is None
    assert check_meta({"ip": "203.0.113.9", "key_created": 1700000000}) == {
        "ip": "203.0.113.9",
        "key_created": "1700000000",
    }
    for bad, word in (
        ({"ipv4": "1.2.3.4"}, "ipv4"),
        ({"ip": ["1.2.3.4"]}, "ip"),
        ({"org": "x" * 513}, "org"),
        ({"payment": "  "}, "payment"),
        ({"user_agent": True}, "user_agent"),
        ("ip=1.2.3.4", "mapping"),
    ):
        with pytest.raises(InputError, match=word):
            check_meta(bad)


def test_meta_values_are_kept_only_as_salted_hashes():
    hasher, other = MetadataHasher(b"a" * 16), MetadataHasher(b"b" * 16)
    meta = {"ip": "198.51.100.23", "payment": "card-4242"}
    keys = hasher.indicators(meta)
    assert [kind for _, kind in keys] == ["ip", "payment"]
    assert keys == hasher.indicators(dict(meta))
    assert {k for k, _ in keys}.isdisjoint(k for k, _ in other.indicators(meta))
    assert not any("198.51" in k or "4242" in k for k, _ in keys)
    assert set(META_KEYS) == {"ip", "network", "user_agent", "org", "payment", "key_created"}


def test_fingerprints_are_stable_and_tell_prompts_apart():
    x = unit_rows(np.random.default_rng(0).standard_normal((2, DIM)))
    assert fingerprint(x[0]) == fingerprint(x[0].copy()) and fingerprint(x[0]) != fingerprint(x[1])


# -- group statistics against brute force -------------------------------------------------
@pytest.mark.parametrize("sizes", [(1, 1), (3, 1, 4), (5, 5, 5, 5), (2, 7, 1, 3, 9)])
def test_pair_statistics_from_sums_equal_brute_force(sizes):
    rng = np.random.default_rng(sum(sizes))
    members = [unit_rows(rng.standard_normal((n, DIM))) for n in sizes]
    sums = [m.astype(np.float64).sum(axis=0) for m in members]
    fast = pair_stats_from_sums(
        np.sum(sums, axis=0), sum(sizes), sum(float(s @ s) for s in sums), sum(n * n for n in sizes)
    )
    slow = pair_similarities(members)
    assert (fast.within_pairs, fast.between_pairs) == (slow.within_pairs, slow.between_pairs)
    for a, b in ((fast.within, slow.within), (fast.between, slow.between)):
        assert (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-7


def test_member_focus_separates_dealt_out_pools_from_own_topics():
    rng = np.random.default_rng(1)
    pool = unit_rows(rng.standard_normal((400, DIM)))
    dealt = [pool[i::20] for i in range(20)]  # one pool dealt round-robin to 20 accounts
    centres = rng.standard_normal((20, DIM))
    own = [unit_rows(c + 0.6 * rng.standard_normal((20, DIM))) for c in centres]
    assert abs(pair_similarities(dealt).focus) < 0.02
    assert pair_similarities(own).focus > 0.2


def _focus_by_member(members):
    """Brute force: each member's own pairs' mean minus its pairs with the others', averaged over members."""
    out = []
    for i, a in enumerate(members):
        a = np.asarray(a, dtype=np.float64)
        rest = np.concatenate([m for j, m in enumerate(members) if j != i]).astype(np.float64)
        if a.shape[0] < 2 or rest.shape[0] == 0:
            continue
        own = a @ a.T
        within = (own.sum() - np.trace(own)) / (a.shape[0] * (a.shape[0] - 1))
        out.append(within - float((a @ rest.T).mean()))
    return float(np.mean(out)) if out else math.nan


@pytest.mark.parametrize("sizes", [(2, 2), (3, 1, 4), (5, 5, 5, 5), (2, 7, 1, 3, 9), (1, 1)])
def test_member_mean_focus_equals_brute_force(sizes):
    rng = np.random.default_rng(10 + sum(sizes))
    members = [unit_rows(rng.standard_normal((n, DIM))) for n in sizes]
    sums = np.stack([m.astype(np.float64).sum(axis=0) for m in members])
    fast = member_mean_focus(
        sums, np.array(sizes), np.einsum("ij,ij->i", sums, sums), sums.sum(axis=0), int(sum(sizes))
    )
    slow = _focus_by_member(members)
    assert (math.isnan(fast) and math.isnan(slow)) or abs(fast - slow) < 1e-6  # float32 unit rows


def test_member_mean_focus_is_not_pulled_below_a_dealt_pool_by_a_few_heavy_members():
    """One app's light users (one template, each with its own documents) beside a few varied
    heavy accounts: pooled over pairs, the heavy accounts own the within-member pairs and the
    light ones the between-member pairs, and the crowd reads as less focused than a dealt pool.
    One weight per member keeps it above the pool's 0."""
    rng = np.random.default_rng(3)
    template = rng.standard_normal(DIM) * 3.0
    light = [unit_rows(template + rng.standard_normal(DIM) + 0.8 * rng.standard_normal((3, DIM))) for _ in range(60)]
    heavy = [unit_rows(rng.standard_normal((50, DIM))) for _ in range(4)]  # varied: no topic of their own
    crowd = light + heavy

    def by_members(blocks):
        sums = np.stack([b.astype(np.float64).sum(axis=0) for b in blocks])
        counts = np.array([len(b) for b in blocks])
        return member_mean_focus(sums, counts, np.einsum("ij,ij->i", sums, sums), sums.sum(axis=0), int(counts.sum()))

    pool = unit_rows(rng.standard_normal((600, DIM)))
    dealt = [pool[i::60] for i in range(60)]
    assert pair_similarities(crowd).focus < pair_similarities(dealt).focus - 0.02  # the pooled reading's artefact
    assert by_members(crowd) > 0.1
    assert abs(by_members(dealt)) < 0.02


def test_member_deviation_equals_its_definition():
    rng = np.random.default_rng(5)
    members = [unit_rows(rng.standard_normal((n, DIM)) + 0.5) for n in (3, 8, 1, 20)]
    sums = np.stack([m.astype(np.float64).sum(axis=0) for m in members])
    counts = np.array([len(m) for m in members])
    fast = member_deviation(sums, counts, sums.sum(axis=0), int(counts.sum()))
    everything = np.concatenate(members).astype(np.float64)
    variance = 1.0 - float(everything.mean(axis=0) @ everything.mean(axis=0))
    for i, m in enumerate(members):
        rest = np.concatenate([x for j, x in enumerate(members) if j != i]).astype(np.float64)
        gap = m.astype(np.float64).mean(axis=0) - rest.mean(axis=0)
        slow = float(gap @ gap) / (variance * (1 / len(m) + 1 / len(rest)))
        assert fast[i] == pytest.approx(slow, rel=1e-9)
    alone = member_deviation(sums[:1], counts[:1], sums[0], int(counts[0]))
    assert np.isnan(alone[0])  # a member that is the whole group has no rest to compare with


@pytest.mark.parametrize("size", [8, 30])
def test_members_dealt_from_a_pool_deviate_by_one_give_or_take_the_predicted_spread(size):
    """The null the layer tests members against: whatever the member size, dealt members
    average 1 with the spread exchangeable_spread predicts; an account about its own topic,
    or one as diverse as the pool but leaning elsewhere, is far outside it."""
    rng = np.random.default_rng(size)
    centres = rng.standard_normal((16, DIM))
    pool = unit_rows(1.5 * centres[rng.integers(0, 16, size=size * 300)] + rng.standard_normal((size * 300, DIM)))
    dealt = pool[rng.permutation(len(pool))].reshape(300, size, DIM).astype(np.float64)
    sums = dealt.sum(axis=1)
    counts = np.full(300, size)
    deviation = member_deviation(sums, counts, sums.sum(axis=0), int(counts.sum()))
    spread = exchangeable_spread(pool)
    assert abs(deviation.mean() - 1.0) < 3 * spread / math.sqrt(300)
    assert 0.75 * spread < deviation.std() < 1.25 * spread
    own_topic = unit_rows(3.0 * rng.standard_normal(DIM) + rng.standard_normal((size, DIM)))
    # as diverse as the pool's queries, but all leaning towards a region the pool does not hold
    elsewhere = unit_rows(1.5 * centres[rng.integers(0, 16, size=size)] + rng.standard_normal((size, DIM)) + 2.0)
    for stranger in (own_topic, elsewhere):
        s = stranger.astype(np.float64).sum(axis=0)
        rows = np.vstack([sums, s])
        d = member_deviation(rows, np.append(counts, size), rows.sum(axis=0), int(counts.sum()) + size)
        assert d[-1] > 1.0 + 3 * spread


def test_exchangeable_spread_checks_its_input():
    with pytest.raises(ValueError, match="at least 2 rows"):
        exchangeable_spread(np.ones((1, DIM)))


# -- scoring -----------------------------------------------------------------------------------
def _calibration() -> GroupCalibration:
    values = {
        "focus_median": 0.1,
        "focus_q01": 0.02,
        "between_median": 0.1,
        "between_q01": 0.05,
        "evidence_median": 0.0,
        "evidence_q99": 1.0,
        "elicitation_median": 0.1,
        "elicitation_q99": 0.5,
    }
    return GroupCalibration({k: np.full(N_MEMBER_BINS, v) for k, v in values.items()}, np.linspace(0.0, 1.0, 200))


def test_group_score_needs_both_coordination_and_content():
    cal = _calibration()
    coordinated, independent = 0.0, 0.2
    extraction_like, ordinary = 3.0, 0.0
    score = lambda focus, evidence, dup=0.0, elicit=math.nan, between=0.1: float(  # noqa: E731
        cal.score(focus, between, evidence, elicit, 50, dup)
    )
    assert score(coordinated, extraction_like) > 2.0
    assert score(independent, extraction_like) == 0.0  # a crowd of unusual but independent users
    assert score(coordinated, ordinary) == 0.0  # a summariser's users: unfocused, ordinary content
    assert score(coordinated, ordinary, elicit=0.9) > 2.0  # reasoning harvesting is content enough
    assert score(coordinated, ordinary, between=0.0) > 2.0  # so is picking queries far apart (k-center)
    assert score(coordinated, extraction_like, dup=0.9) < 0.2 * score(coordinated, extraction_like)
    assert score(-0.1, extraction_like) >= score(0.05, extraction_like)
    assert cal.exceedance(5.0) < cal.exceedance(1.0) < cal.exceedance(0.1) <= 1.0


def test_joint_evidence_adds_two_lines_past_their_benign_one_percent_points():
    from scipy import stats

    grid = np.linspace(-1.0, 9.0, 41)
    a, b = np.meshgrid(grid, grid, indexing="ij")
    z = joint_evidence(a, b)
    both_past = np.minimum(a, b) >= Z_AT_Q01
    # past both lines: the z of the product of the two normal tails (written out with scipy.stats)
    expected = stats.norm.isf(stats.norm.sf(a[both_past]) * stats.norm.sf(b[both_past]))
    np.testing.assert_allclose(z[both_past], expected, rtol=1e-9)
    assert (z[both_past] > np.maximum(a, b)[both_past]).all()  # two lines that hold outweigh either
    # otherwise the weaker line, exactly as the default score takes it
    np.testing.assert_array_equal(z[~both_past], np.minimum(a, b)[~both_past])
    np.testing.assert_array_equal(z, z.T)  # symmetric
    assert (np.diff(z, axis=0) >= 0).all() and (np.diff(z, axis=1) >= 0).all()  # never falls as a line grows
    assert np.isfinite(joint_evidence(40.0, 40.0))  # far past any table: still a number


def _benign_stream():
    """80 topical accounts of 6-30 queries with per-query evidence: the benign crowds' source."""
    rng = np.random.default_rng(2)
    accounts, vectors = topical_stream(rng, 80, DIM, q_range=(6, 30))
    return accounts, vectors, rng.normal(0.0, 1.0, len(accounts))


def _fitted_group_calibration():
    return fit_group_calibration(*_benign_stream())


def test_joint_scores_are_calibrated_on_benign_crowds_and_read_on_the_group_scale():
    cal = _fitted_group_calibration()
    assert cal.joint_tail is not None
    # every benign crowd's joint score came out of the same function the layer calls
    crowds = benign_crowd_features(*_benign_stream())
    ok = np.isfinite(crowds["focus"]) & np.isfinite(crowds["evidence"]) & np.isfinite(crowds["between"])
    ok &= np.asarray(crowds["members"]) >= 2
    lines = [np.asarray(crowds[k])[ok] for k in ("focus", "between", "evidence", "elicitation", "members")]
    lines.append(np.asarray(crowds["duplicate_share"])[ok])
    np.testing.assert_allclose(np.sort(cal.joint_score(*lines)), cal.joint_tail.max_scores)
    # read back on the group scale, a benign crowd passes a threshold as often as its share says
    on_scale = cal.score(*lines, joint=True)
    assert np.mean(on_scale >= cal.threshold_for(0.05)) <= 0.05 + 1e-9
    # members as unfocused as the benign 1st percentile, content far past benign: the weaker line
    # holds the group at its coordination line; the joint score does not
    members = 40
    b = int(member_bin(members))
    focus, between = float(cal.focus_q01[b]) - 0.01, float(cal.between_median[b])
    extreme = 10.0 * float(cal.evidence_q99[b])
    weaker = float(cal.score(focus, between, extreme, math.nan, members, 0.0))
    joint = float(cal.score(focus, between, extreme, math.nan, members, 0.0, joint=True))
    assert weaker == pytest.approx(float(cal.coordination(focus, members)))
    assert joint > weaker
    raw = cal.joint_score(focus, between, extreme, math.nan, members, 0.0)
    assert float(cal.exceedance(joint)) == pytest.approx(float(cal.joint_tail.exceedance(raw)), rel=1e-6)
    # ordinary content gets nothing from either rule
    ordinary = float(cal.evidence_median[b])
    assert float(cal.score(focus, between, ordinary, math.nan, members, 0.0, joint=True)) <= cal.threshold_for(0.5)


def test_a_calibration_without_joint_scores_scores_every_group_by_the_weaker_line():
    cal = _fitted_group_calibration()
    arrays = cal.to_arrays()
    assert "group_joint_max_scores" in arrays
    again = GroupCalibration.from_arrays(arrays)
    np.testing.assert_array_equal(again.joint_tail.max_scores, cal.joint_tail.max_scores)
    older = GroupCalibration.from_arrays({k: v for k, v in arrays.items() if k != "group_joint_max_scores"})
    assert older.joint_tail is None
    b = int(member_bin(40))
    focus, extreme = float(cal.focus_q01[b]) - 0.01, 10.0 * float(cal.evidence_q99[b])
    features = GroupFeatures(40, 40, 240, focus, 0.1, float(cal.between_median[b]), extreme, 0.0, math.nan, math.nan)
    judge = GroupJudge(older, 1e-3, 1e-2)
    assert judge.judge(features, joint=True) == judge.judge(features, joint=False)
    assert GroupJudge(cal, 1e-3, 1e-2).judge(features, joint=True)[0] > judge.judge(features)[0]


def test_group_calibration_round_trips_and_rejects_bad_tables():
    cal = _calibration()
    again = GroupCalibration.from_arrays(cal.to_arrays())
    assert again.threshold_for(1e-3) == cal.threshold_for(1e-3)
    np.testing.assert_array_equal(again.focus_q01, cal.focus_q01)
    assert again.focus_weighting == cal.focus_weighting
    bad = {**cal.to_arrays(), "group_focus_median": np.zeros(3)}
    with pytest.raises(pw.CalibrationError, match="focus_median"):
        GroupCalibration.from_arrays(bad)
    for code in (np.array(7, dtype=np.int8), np.array([1, 1], dtype=np.int8)):
        with pytest.raises(pw.CalibrationError, match="group_focus_weighting"):
            GroupCalibration.from_arrays({**cal.to_arrays(), "group_focus_weighting": code})


def test_one_members_focus_may_spread_as_far_as_one_member_not_a_two_member_mean():
    """The member test's tolerance is the benign spread of two-account crowds; averaged one
    weight per member that spread is of a mean of two, so one member is allowed sqrt(2) of it."""
    fitted = _fitted_group_calibration()
    spread = float(fitted.focus_median[0] - fitted.focus_q01[0])
    assert fitted.member_focus_tolerance() == pytest.approx(spread * math.sqrt(2.0))
    older = GroupCalibration.from_arrays({k: v for k, v in fitted.to_arrays().items() if k != "group_focus_weighting"})
    assert older.member_focus_tolerance() == pytest.approx(spread)


def test_a_calibration_before_member_weighting_measures_groups_as_its_tables_were():
    """Tables fitted on pair-weighted focus (files before 0.22.0) are read with it: the layer
    measures a group's focus the way its calibration measured the benign crowds."""
    fitted = _fitted_group_calibration()
    assert fitted.focus_weighting == "members"
    arrays = {k: v for k, v in fitted.to_arrays().items() if k != "group_focus_weighting"}
    assert GroupCalibration.from_arrays(arrays).focus_weighting == "pairs"
    with pytest.raises(pw.CalibrationError, match="focus weighting"):
        GroupCalibration(
            {name: getattr(fitted, name) for name in GroupCalibration.TABLES}, fitted.max_scores, focus_weighting="x"
        )


def test_benign_crowds_are_member_focused_and_fit_a_calibration():
    accounts, vectors, evidence = _benign_stream()
    crowds = benign_crowd_features(accounts, vectors, evidence)
    assert np.median(crowds["focus"]) > 0.05
    cal = fit_group_calibration(accounts, vectors, evidence)
    assert (cal.focus_q01 <= cal.focus_median).all()
    # benign crowds themselves rarely pass the 1 % line
    assert np.mean(cal.max_scores >= cal.threshold_for(0.01)) <= 0.03


def test_probe_link_evidence_is_the_z_of_the_binomial_tail():
    """k probers among m members, each benign account a prober with probability q: the z whose
    normal upper tail is P(X >= k), checked against scipy's binomial; 0 without a prober,
    non-decreasing in k, finite where the tail underflows."""
    from scipy import stats

    for m, q in ((4, 0.02), (20, 0.001), (300, 0.004)):
        ks = np.arange(0, m + 1)
        z = probe_link_evidence(ks, m, q)
        assert z[0] == 0.0 and (np.diff(z) >= -1e-9).all() and np.isfinite(z).all()
        for k in (1, 2, 3, m // 2):
            tail = stats.binom.sf(k - 1, m, q)
            if tail > 1e-250:
                assert z[k] == pytest.approx(max(-stats.norm.ppf(tail), 0.0), rel=1e-6, abs=1e-9)
    # one prober among a few hundred benign members is what the rate expects: no evidence to speak of
    assert probe_link_evidence(1, 212, 0.004) < 1.0


def test_the_benign_prober_rate_is_an_upper_bound_and_round_trips():
    cal = _fitted_group_calibration()
    assert cal.probe_linked is None and cal.probe_link_rate is None
    b = int(member_bin(40))
    focus, between, evidence = float(cal.focus_q01[b]) - 0.05, float(cal.between_median[b]), 0.0
    plain = float(cal.content(between, evidence, math.nan, 40, 20, 40))
    assert plain == float(cal.content(between, evidence, math.nan, 40))  # no rate: links add nothing
    with_rate = GroupCalibration.from_arrays({**cal.to_arrays(), "group_probe_linked": np.array([0, 2000])})
    assert with_rate.probe_linked == (0, 2000)
    # none of 2,000: the one-sided 95 % Clopper-Pearson bound, 1 - 0.05 ** (1 / 2000)
    assert with_rate.probe_link_rate == pytest.approx(1.0 - 0.05 ** (1 / 2000), rel=1e-9)
    again = GroupCalibration.from_arrays(with_rate.to_arrays())
    assert again.probe_linked == (0, 2000)
    # half of 40 members probing: content past every line; none probing: as before
    assert float(with_rate.content(between, evidence, math.nan, 40, 20, 40)) > 10.0
    assert float(with_rate.content(between, evidence, math.nan, 40, 0, 40)) == plain
    judge = GroupJudge(with_rate, 1e-3, 1e-2)
    linked = GroupFeatures(40, 40, 400, focus, 0.1, between, evidence, 0.0, math.nan, math.nan, 40, 20)
    alone = dataclasses.replace(linked, probe_linked_members=0)
    assert judge.judge(alone) == GroupJudge(cal, 1e-3, 1e-2).judge(alone)
    assert judge.judge(linked)[0] > judge.flag_threshold > judge.judge(alone)[0]
    for bad in (np.array([3, 2]), np.array([0, 0]), np.array([1, 2, 3]), np.array([0.0, 10.0])):
        with pytest.raises(pw.CalibrationError, match="probe_linked"):
            GroupCalibration.from_arrays({**cal.to_arrays(), "group_probe_linked": bad})


def test_benign_probe_linked_counts_accounts_that_vary_prompts_others_vary():
    """Accounts whose prompts are variants of seeds that other accounts also vary (a campaign
    dealing each seed's variants) are probers; unrelated prompts, or one variant among an
    account's own questions (a person who asked a question a campaign varies), are not; accounts
    with one prompt are not counted at all."""
    rng = np.random.default_rng(4)
    variants, seeds = _dealt_variants(rng, 8, 6)
    vocabulary = sorted({"".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 6)) for _ in range(3000)})
    events = [
        (f"benign-{a}", " ".join(rng.choice(vocabulary, 10, replace=False)))
        for a in range(30)
        for _ in range(int(rng.integers(2, 10)))
    ]
    events += [(a, text) for a, texts in variants.items() for text in texts]
    events.append(("one-prompt", "a single prompt of its own about something else entirely"))
    one_variant = [*seeds[0][:5], "zzzzzzz", *seeds[0][6:]]
    events += [("one-link", " ".join(one_variant)), ("one-link", "and then a question of my own about the weather")]
    events = [events[i] for i in rng.permutation(len(events))]
    accounts, texts = [e[0] for e in events], [e[1] for e in events]
    assert benign_probe_linked(accounts, texts) == (8, 39)
    benign = [i for i, a in enumerate(accounts) if a.startswith("benign-")]
    assert benign_probe_linked([accounts[i] for i in benign], [texts[i] for i in benign]) == (0, 30)
    with pytest.raises(ValueError, match="one read text per prompt"):
        benign_probe_linked(accounts, texts, texts[:-1])


def test_an_engine_calibrated_with_prompts_counts_its_benign_probers(topics):
    """Engine.from_benign_embeddings with prompts measures the prober rate on them (and keeps it
    through save and load); without prompts, or with the cross-account search off, there is none."""
    rng = np.random.default_rng(8)
    accounts, vectors = topical_stream(rng, 40, DIM, q_range=(6, 12), topics=topics)
    prompts = [f"question {i} from {a} about topic {i % 7}" for i, a in enumerate(accounts)]
    engine = pw.Engine.from_benign_embeddings(accounts, vectors, device="cpu", prompts=prompts)
    counted = sum(1 for a in set(accounts) if accounts.count(a) >= MIN_MEMBER_QUERIES)
    assert engine.pipeline.group_calibration.probe_linked == (0, counted)
    without_prompts = pw.Engine.from_benign_embeddings(accounts, vectors, device="cpu")
    assert without_prompts.pipeline.group_calibration.probe_linked is None
    off = pw.Engine.from_benign_embeddings(accounts, vectors, device="cpu", prompts=prompts, campaign_probe_memory=0)
    assert off.pipeline.group_calibration.probe_linked is None


# -- the layer end to end ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_calibration(tmp_path_factory):
    return saved_campaign_calibration(tmp_path_factory.mktemp("campaign-calibration"), DIM)


@pytest.fixture(scope="module")
def topics(saved_calibration):
    return saved_calibration[1]


@pytest.fixture(scope="module")
def calibration_path(saved_calibration):
    path = saved_calibration[0]
    engine = pw.Engine(calibration_path=path, device="cpu")
    assert engine.pipeline.campaigns is not None and engine.pipeline.group_calibration is not None
    return path


SALT = "5a" * 16  # one metadata key for every engine of a test, so campaign ids compare


def make_engine(calibration_path, **overrides):
    return pw.Engine(calibration_path=calibration_path, device="cpu", campaign_salt=SALT, **overrides)


def hydra_traffic(topics, seed=0, members=40, per_member=6, crowd=40):
    """Interleaved (accounts, vectors, prompts, metas): a campaign dealing one broad pool of
    payloads to light accounts under one wrapper, and a benign crowd of light users sharing
    one framework template, each about their own topic."""
    rng = np.random.default_rng(seed)
    pool = unit_rows(rng.standard_normal((members * per_member, DIM)))  # broad, unlike any one topic
    events = []
    for m in range(members):
        for j in range(per_member):
            q = m * per_member + j
            prompt = WRAPPER.format(q=f"payload item number {q} drawn from the shared dataset of questions")
            events.append((f"hydra-{m}", pool[q], prompt, {"payment": "pm-shared"}))
    accounts, vectors = topical_stream(rng, crowd, DIM, q_range=(per_member, per_member), topics=topics, prefix="rag")
    rag = "Use the following pieces of context to answer the question at the end. Context: {c} Question: {q} Helpful answer:"
    for i, (account, v) in enumerate(zip(accounts, vectors, strict=True)):
        prompt = rag.format(c=f"the {account} notes, part {i}", q=f"what does section {i} of my own file say")
        events.append((account, v, prompt, {"ip": "10.0.0.1"}))  # the whole crowd behind one NAT
    order = rng.permutation(len(events))
    # keep each account's own order: sort by (random slot of the account's k-th event)
    events = [events[i] for i in order]
    return (
        [e[0] for e in events],
        np.stack([e[1] for e in events]),
        [e[2] for e in events],
        [e[3] for e in events],
    )


def feed(engine, accounts, vectors, prompts, metas, batch=16):
    out = []
    for s in range(0, len(accounts), batch):
        sl = slice(s, s + batch)
        out += engine.observe_embeddings(accounts[sl], vectors[sl], metas=metas[sl], prompts=prompts[sl])
    return out


def scripted_payment_group(calibration_path, topics, monkeypatch, looks):
    """hydra_traffic through an engine whose judge gives the campaign's payment group the scores
    ``looks(i, flag, watch)`` at its i-th judgement and every other group 0: (engine, group,
    verdicts). No value counts as common (half the accounts share the card)."""
    engine = make_engine(calibration_path, campaign_common_meta_share=1.0)
    layer = engine.pipeline.campaigns
    flag, watch = layer.judge.flag_threshold, layer.judge.watch_threshold
    current, count = [None], [0]
    original = layer._judge

    def judging(group, raised):
        current[0] = group
        original(group, raised)

    def scripted(features, joint=False):
        if (current[0].kind, current[0].label) != ("meta", "payment"):
            return 0.0, 0.0
        count[0] += 1
        return looks(count[0] - 1, flag, watch), 0.5

    monkeypatch.setattr(layer, "_judge", judging)
    monkeypatch.setattr(layer.judge, "judge", scripted)
    verdicts = feed(engine, *hydra_traffic(topics))
    (group,) = [g for g in layer.groups.values() if (g.kind, g.label) == ("meta", "payment")]
    assert count[0] >= 8  # judged again and again as it grew
    return engine, group, verdicts


def test_a_group_reaches_a_level_only_on_two_looks_in_a_row_past_its_line(calibration_path, topics, monkeypatch):
    """A growing group is judged at every few queries; one look past the flag line between two
    below it (a few light members landing there by chance) raises nothing, while two in a row
    raise the group and its members, and the level then stays at that peak."""
    _, spiky, verdicts = scripted_payment_group(
        calibration_path, topics, monkeypatch, lambda i, flag, watch: flag + 1.0 if i % 2 else 0.0
    )
    assert spiky.level is pw.Level.OK and spiky.peak_score == 0.0
    assert not any(v.campaign is not None for v in verdicts)

    def twice_at_watch_then_twice_at_flag(i, flag, watch):
        return {2: watch + 0.1, 3: watch + 0.1, 6: flag + 0.5, 7: flag + 0.5}.get(i, 0.0)

    engine, steady, verdicts = scripted_payment_group(
        calibration_path, topics, monkeypatch, twice_at_watch_then_twice_at_flag
    )
    assert steady.level is pw.Level.FLAG and steady.peak_score == pytest.approx(
        engine.pipeline.campaigns.judge.flag_threshold + 0.5
    )
    members = {v.account for v in verdicts if v.campaign is not None and v.campaign.level == "flag"}
    assert members and all(a.startswith("hydra-") for a in members)

    # one look past flag right after one past watch holds watch, not flag
    _, once, _ = scripted_payment_group(
        calibration_path, topics, monkeypatch, lambda i, flag, watch: {2: watch + 0.1, 3: flag + 1.0}.get(i, 0.0)
    )
    assert once.level is pw.Level.WATCH


def test_a_hot_group_that_turns_common_leaves_its_campaign(calibration_path, topics, monkeypatch):
    """Once more accounts share a hot group's metadata value than campaign_common_meta_share of
    every account seen, it links nobody: the campaign map drops it at its next judgement, as an
    engine restored from a snapshot (which builds the map afresh) would."""
    engine, group, _ = scripted_payment_group(calibration_path, topics, monkeypatch, lambda i, flag, watch: flag + 1.0)
    layer = engine.pipeline.campaigns
    assert group.level is pw.Level.FLAG and group.key in layer._campaigns()
    # the default share: half the accounts share the card
    layer.config = dataclasses.replace(layer.config, campaign_common_meta_share=0.05)
    assert layer.is_common(group)
    member = next(a for a in group.members if a.startswith("hydra-"))
    feed(
        engine,
        [member] * 8,
        unit_rows(np.random.default_rng(2).standard_normal((8, DIM))),
        [None] * 8,
        [{"payment": "pm-shared"}] * 8,
    )
    assert group.key not in layer._campaigns()


def test_only_groups_nobody_joins_by_chance_add_their_two_lines(calibration_path, topics, monkeypatch):
    from probewatch.campaigns.layer import shared_by_chance

    engine = make_engine(calibration_path)
    layer = engine.pipeline.campaigns
    seen = []
    judge = layer.judge.judge

    def recording(features, joint=False):
        seen.append(joint)
        return judge(features, joint=joint)

    monkeypatch.setattr(layer.judge, "judge", recording)
    judged = []
    original = layer._judge

    def judging(group, raised):
        before = len(seen)
        original(group, raised)
        judged.append((group.kind, group.label, seen[before] if len(seen) > before else None))

    monkeypatch.setattr(layer, "_judge", judging)
    feed(engine, *hydra_traffic(topics))
    kinds = {(kind, label, joint) for kind, label, joint in judged if joint is not None}
    assert any(kind == "template" and joint for kind, _, joint in kinds)
    assert any(kind == "meta" and label == "payment" and joint for kind, label, joint in kinds)
    assert any(kind == "meta" and label == "ip" and joint is False for kind, label, joint in kinds)
    for kind, label, joint in kinds:
        group = type("G", (), {"kind": kind, "label": label})()
        assert joint is (not shared_by_chance(group))


def test_a_calibration_file_from_before_joint_scores_loads_and_judges_by_the_weaker_line(
    calibration_path, topics, tmp_path
):
    with np.load(calibration_path) as npz:
        arrays = {k: npz[k] for k in npz.files}
    assert "group_joint_max_scores" in arrays  # written by this version
    older = tmp_path / "older.npz"
    np.savez(older, **{k: v for k, v in arrays.items() if k != "group_joint_max_scores"})
    engine = make_engine(older)
    assert engine.pipeline.campaigns.judge.calibration.joint_tail is None
    feed(engine, *hydra_traffic(topics))  # judges every group, template ones included
    again = tmp_path / "again.npz"
    engine.save_calibration(again)
    with np.load(again) as npz:
        assert "group_joint_max_scores" not in npz.files  # saved as it was loaded


def test_a_hydra_campaign_is_found_and_a_benign_template_crowd_is_not(calibration_path, topics):
    engine = make_engine(calibration_path)
    accounts, vectors, prompts, metas = hydra_traffic(topics)
    verdicts = feed(engine, accounts, vectors, prompts, metas)
    campaigns = engine.campaigns()
    assert campaigns, "the campaign was not found"
    top = campaigns[0]
    assert top.level is pw.Level.FLAG
    members = set(top.members)
    hydra = {a for a in accounts if a.startswith("hydra-")}
    assert len(members & hydra) >= 0.9 * len(hydra)
    assert not members - hydra, f"benign accounts in the campaign: {sorted(members - hydra)[:5]}"
    assert not any(c.members and set(c.members) - hydra for c in campaigns)
    flagged = set(engine.accounts("flag"))
    assert flagged >= set(members)
    assert not {a for a in flagged if a.startswith("rag-")}
    # verdicts carry the campaign, never a raw metadata value
    last = {v.account: v for v in verdicts}
    some_member = next(iter(members))
    assert last[some_member].campaign is not None and last[some_member].campaign.id == top.id
    report = engine.report(some_member)
    assert report.campaign is not None and report.campaign.id == top.id
    assert report.elicitation_rate is None  # 48-d synthetic vectors: the shipped 384-d head does not apply
    assert report.to_dict()["campaign"]["level"] == "flag"
    layer = engine.pipeline.campaigns
    nat = [g for g in layer.groups.values() if g.kind == "meta" and g.label == "ip"]
    assert nat and all(layer.is_common(g) for g in nat)  # half of every account behind one address
    text = str(engine.campaign(top.id).to_dict())
    assert "pm-shared" not in text and "10.0.0.1" not in text
    assert any(k.startswith("meta:payment") or k == "template" for k in top.summary().indicator_kinds)


def test_a_verdicts_campaign_summary_is_at_most_summary_refresh_observations_old(calibration_path, topics):
    """The contract beside SUMMARY_REFRESH: a verdict's campaign size, risk and reasons are at
    most that many observations old, and its level is current. Members joining a hot group do
    not rebuild every summary (that cost a verdict more the bigger its campaign grew): each
    campaign's summary is built at most once per SUMMARY_REFRESH observations, or when its id
    is new."""
    from probewatch.campaigns.layer import SUMMARY_REFRESH

    engine = make_engine(calibration_path)
    layer = engine.pipeline.campaigns
    accounts, vectors, prompts, metas = hydra_traffic(topics, members=60)
    built: list[tuple[str, int, pw.CampaignSummary]] = []  # (id, observations when built, fresh summary)
    real = layer.campaign

    def building(campaign_id):
        report = real(campaign_id)
        built.append((campaign_id, layer.observations, report.summary()))
        return report

    layer.campaign = building
    seen = 0
    for s in range(0, len(accounts), 16):
        sl = slice(s, s + 16)
        for verdict in engine.observe_embeddings(accounts[sl], vectors[sl], metas=metas[sl], prompts=prompts[sl]):
            if verdict.campaign is None:
                continue
            seen += 1
            cid = verdict.campaign.id
            # the summary it carries was built within the window (the batch's 16 items count in it)
            recent = [
                summary for c, at, summary in built if c == cid and layer.observations - at <= SUMMARY_REFRESH + 16
            ]
            assert any(dataclasses.replace(verdict.campaign, level=summary.level) == summary for summary in recent)
    assert seen > 100
    per_id = {}
    for cid, at, _ in built:
        per_id.setdefault(cid, []).append(at)
    for ats in per_id.values():  # rebuilt only once the last build is SUMMARY_REFRESH observations old
        assert all(b - a >= SUMMARY_REFRESH for a, b in itertools.pairwise(ats))


def test_a_diverse_bystander_sharing_a_user_agent_is_not_raised_with_the_campaign(calibration_path, topics):
    """A light account whose queries are diverse (so member focus cannot tell it apart)
    but lean somewhere the campaign's pool does not go shares the campaign's rare user agent:
    the metadata group turns hot on the campaign's content, and the bystander must not be
    raised with it. Without the member-deviation test (member_spread None) some are."""
    columns = rare_agent_traffic(topics)

    def raised_with_a_campaign(member_spread_off: bool) -> tuple[set[str], set[str]]:
        engine = make_engine(calibration_path)
        if member_spread_off:
            engine.pipeline.campaigns.member_spread = None
        feed(engine, *columns)
        hot = [g for g in engine.pipeline.campaigns.groups.values() if g.level > pw.Level.OK]
        # the campaign's wrapper and payment groups may be hot too; the user agent's must be
        assert ("meta", "user_agent") in [(g.kind, g.label) for g in hot]
        with_campaign = {a for a in set(columns[0]) if engine.report(a).campaign is not None}
        return {a for a in with_campaign if a.startswith("hydra-")}, {
            a for a in with_campaign if a.startswith("bystander-")
        }

    members, bystanders = raised_with_a_campaign(member_spread_off=False)
    assert len(members) == 12 and not bystanders
    _, bystanders_without_the_test = raised_with_a_campaign(member_spread_off=True)
    assert bystanders_without_the_test


def rare_agent_traffic(topics):
    """hydra_traffic's campaign (12 members, 10 queries each) sharing a rare user agent with six
    diverse bystanders that lean somewhere the campaign's pool does not go; interleaved columns."""
    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=7, members=12, per_member=10, crowd=20)
    agent = "RareAgent/0.9"  # 12 members + 6 bystanders: under COMMON_MIN_ACCOUNTS, so not common
    events = [
        (a, v, p, dict(m, user_agent=agent) if a.startswith("hydra-") else m)
        for a, v, p, m in zip(accounts, vectors, prompts, metas, strict=True)
    ]
    rng = np.random.default_rng(9)
    for b in range(6):
        lean = rng.standard_normal(DIM)
        rows = unit_rows(rng.standard_normal((12, DIM)) + 3.25 * lean / np.linalg.norm(lean))
        events += [
            (f"bystander-{b}", v, f"my own question {j} about what I work on", {"user_agent": agent})
            for j, v in enumerate(rows)
        ]
    events = [events[i] for i in rng.permutation(len(events))]
    return [e[0] for e in events], np.stack([e[1] for e in events]), [e[2] for e in events], [e[3] for e in events]


def test_members_of_a_coincidental_group_reach_flag_only_with_16_of_its_queries(calibration_path, topics, monkeypatch):
    """At 8 queries the member tests cannot tell a bystander from a dealt member, so a member
    of a hot payload region or metadata group reaches flag only with MIN_FLAGGED_MEMBER_QUERIES
    of the group's queries; before that it is linked and at watch. Here the campaign's members
    share nothing but a rare user agent and their pool (no wrapper, no card), with group
    thresholds loose enough that those groups flag (and no user agent counted as common, as it
    would be here among 40 accounts, so the group is judged as its evidence grows); without the
    hold the same traffic flags members from fewer queries."""
    from probewatch.campaigns import layer

    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=7, members=20, per_member=20, crowd=20)
    metas = [
        {"user_agent": "RareAgent/0.9"} if a.startswith("hydra-") else m for a, m in zip(accounts, metas, strict=True)
    ]
    prompts = [None if a.startswith("hydra-") else p for a, p in zip(accounts, prompts, strict=True)]

    def member_flags(hold: bool) -> list:
        if not hold:
            monkeypatch.setattr(layer, "MIN_FLAGGED_MEMBER_QUERIES", layer.MIN_TESTED_MEMBER_QUERIES)
        engine = make_engine(
            calibration_path, campaign_fpr_share=1.0, target_fpr=0.01, watch_fpr=0.1, campaign_common_meta_share=1.0
        )
        verdicts = feed(engine, accounts, vectors, prompts, metas)
        hot = {(g.kind, g.label) for g in engine.pipeline.campaigns.groups.values() if g.level is pw.Level.FLAG}
        assert ("meta", "user_agent") in hot and all(kind in ("meta", "payload") for kind, _ in hot)
        first: dict[str, pw.Verdict] = {}
        for v in verdicts:
            if v.account.startswith("hydra-") and v.flagged:
                first.setdefault(v.account, v)
        return list(first.values())

    # the account detector, which scores from MIN_SCORED_QUERIES on, flags these members at 16+
    # either way: flags before 16 are the campaign's
    held = member_flags(hold=True)
    assert layer.MIN_FLAGGED_MEMBER_QUERIES == 16 > MIN_SCORED_QUERIES
    assert held and min(v.n_queries for v in held) >= 16
    early = [v for v in member_flags(hold=False) if v.n_queries < 16]
    assert early and all(v.campaign is not None and v.campaign.level == "flag" for v in early)


def _dealt_variants(
    rng: np.random.Generator, members: int, per_member: int
) -> tuple[dict[str, list[str]], list[list[str]]]:
    """Prompts for a campaign splitting probes across accounts: each seed (never sent) varied
    one word at a time, each variant to a different member, seed after seed; and the seeds."""
    # letters only: template anchors mask digits, and numbered words would all read as one template
    words = sorted({"".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), 7)) for _ in range(600)})
    out: dict[str, list[str]] = {f"hydra-{m}": [] for m in range(members)}
    seeds = []
    s = 0
    while any(len(v) < per_member for v in out.values()):
        seed = list(rng.choice(words, 10, replace=False))
        seeds.append(seed)
        order = [m for m in rng.permutation(members) if len(out[f"hydra-{m}"]) < per_member]
        for at, m in zip(rng.permutation(10), order, strict=False):
            variant = [*seed[:at], words[(7 * s + 13 * at) % len(words)], *seed[at + 1 :]]
            out[f"hydra-{m}"].append(" ".join(variant))
        s += 1
    return out, seeds


def split_probe_traffic(topics, rng: np.random.Generator):
    """The hold test's campaign (20 members of 20 queries sharing a rare user agent, a crowd of
    20 template users) sending _dealt_variants: the columns and the seeds."""
    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=7, members=20, per_member=20, crowd=20)
    metas = [
        {"user_agent": "RareAgent/0.9"} if a.startswith("hydra-") else m for a, m in zip(accounts, metas, strict=True)
    ]
    variants, seeds = _dealt_variants(rng, 20, 20)
    sent = {a: iter(v) for a, v in variants.items()}
    prompts = [next(sent[a]) if a.startswith("hydra-") else p for a, p in zip(accounts, prompts, strict=True)]
    return (accounts, vectors, prompts, metas), seeds


def test_probe_linked_members_of_a_coincidental_group_are_not_held_at_watch(calibration_path, topics):
    """The campaign of the hold test above, now sending variants of unsent seeds, each seed's
    variants dealt to different members: members whose own prompts are probe-linked to other
    members' (split_probes) reach flag with fewer than 16 of the group's queries; with the
    cross-account search off (campaign_probe_memory=0) the hold stands."""
    from probewatch.campaigns import layer as campaign_layer

    (accounts, vectors, prompts, metas), _ = split_probe_traffic(topics, np.random.default_rng(3))

    def early_flags(**overrides) -> tuple[list, pw.Engine]:
        engine = make_engine(calibration_path, campaign_fpr_share=1.0, target_fpr=0.01, watch_fpr=0.1, **overrides)
        first: dict[str, pw.Verdict] = {}
        for v in feed(engine, accounts, vectors, prompts, metas):
            if v.account.startswith("hydra-") and v.flagged:
                first.setdefault(v.account, v)
        return [v for v in first.values() if v.n_queries < campaign_layer.MIN_FLAGGED_MEMBER_QUERIES], engine

    held, _ = early_flags(campaign_probe_memory=0)
    assert not held
    linked, engine = early_flags()
    assert linked and all(v.campaign is not None and v.campaign.level == "flag" for v in linked)
    layer = engine.pipeline.campaigns
    (agent,) = [g for g in layer.groups.values() if (g.kind, g.label) == ("meta", "user_agent")]
    for v in linked:
        assert layer.linked_prompts(agent, v.account) >= campaign_layer.MIN_LINKED_PROMPTS
    assert not any(layer.accounts[a].probe_links for a in set(accounts) if not a.startswith("hydra-"))
    # the group's probers, its content evidence where the calibration knows the benign rate:
    # counted members that sent two prompts as probes linked to other counted members; every
    # prompt of a link was sent by a member, so the probe side of each is a member's
    counted = layer._counted_members(agent)
    probers = [a for a in counted if layer.probe_prompts(agent, a, counted) >= campaign_layer.MIN_LINKED_PROMPTS]
    features = layer.features(agent)
    assert features.counted_members == len(counted) and features.probe_linked_members == len(probers) > 0
    for a in counted:
        assert layer.probe_prompts(agent, a, counted) <= layer.linked_prompts(agent, a, counted)
    report = engine.campaign(linked[0].campaign.id)
    assert any("probes split across accounts" in r for r in report.reasons)


def test_a_group_made_hot_by_its_probers_raises_them_and_not_its_bystanders(calibration_path, topics, monkeypatch):
    """The split-probe campaign's rare user agent is shared by bystanders whose queries fit the
    campaign's pool (diverse, as dealt from it) but who probe nothing. A judge that puts the
    agent's group past the flag line only on its probers' evidence raises the probers to flag
    and leaves the bystanders where the group stands without probers (ok); once that plain
    score passes the line too, they rise. With the cap taken off (member_level ignoring the
    plain level) they rise at once. An account outside the group that sent, before the
    campaign began, two prompts the campaign then varied is linked to it (two prompts) but
    is no prober (its prompts are the earlier side of each link), and is held the same way.
    Accounts held at ok are not named with the campaign (its report, their verdicts) until
    the plain score lets them rise."""
    from probewatch.campaigns import layer as campaign_layer

    (accounts, vectors, prompts, metas), seeds = split_probe_traffic(topics, np.random.default_rng(3))
    rng = np.random.default_rng(12)
    bystanders = [(f"bystander-{b}", j) for b in range(4) for j in range(20)]
    rows = unit_rows(rng.standard_normal((len(bystanders), DIM)))  # as broad as the campaign's pool
    order = rng.permutation(len(accounts) + len(bystanders))
    events = [(a, v, p, m) for a, v, p, m in zip(accounts, vectors, prompts, metas, strict=True)]
    events += [
        (name, rows[i], f"a note of my own number {j} about the garden shed", {"user_agent": "RareAgent/0.9"})
        for i, (name, j) in enumerate(bystanders)
    ]
    events = [events[i] for i in order]
    early = [" ".join([*seed[:3], "earlybird", *seed[4:]]) for seed in seeds[:2]]
    early += [f"how do I look after the {plant} in my garden" for plant in ("roses", "ferns", "moss", "ivy", "lawn")]
    early += ["what should I plant in the shade", "when do bulbs go in", "is compost ready in winter"]
    pool = unit_rows(rng.standard_normal((len(early), DIM)))
    agent = {"user_agent": "Common/1.0"}
    events = [("earlybird", v, text, agent) for v, text in zip(pool, early, strict=True)] + events
    columns = ([e[0] for e in events], np.stack([e[1] for e in events]), [e[2] for e in events], [e[3] for e in events])

    engines: list[pw.Engine] = []

    def raised_to_flag(cap: bool, plain_after: int | None = None) -> tuple[set[str], set[str], campaign_layer.Group]:
        """(probers raised to flag, others raised to flag, the agent's group)."""
        engine = make_engine(calibration_path, campaign_common_meta_share=1.0)
        engines.append(engine)
        layer = engine.pipeline.campaigns
        layer.judge.calibration.probe_linked = (0, 2000)  # this engine's own copy
        flag = layer.judge.flag_threshold
        current, looks = [None], [0]
        original_judge, original_observe = layer._judge, layer.observe

        def judging(group, raised):
            current[0] = group
            original_judge(group, raised)

        def scripted(features, joint=False):
            if (current[0].kind, current[0].label) != ("meta", "user_agent"):
                return 0.0, 0.0
            if features.probe_linked_members == 0:  # the plain look
                looks[0] += 1
                return (flag + 1.0 if plain_after is not None and looks[0] > plain_after else 0.0), 0.0
            return flag + 1.0, 0.9

        flagged: set[str] = set()

        def observing(*args, **kwargs):
            out = original_observe(*args, **kwargs)
            flagged.update(a for _, raised in out for a, level in raised.items() if level is pw.Level.FLAG)
            return out

        monkeypatch.setattr(layer, "_judge", judging)
        monkeypatch.setattr(layer.judge, "judge", scripted)
        monkeypatch.setattr(layer, "observe", observing)
        if not cap:
            monkeypatch.setattr(campaign_layer, "member_level", lambda group, *args: group.level)
        feed(engine, *columns)
        monkeypatch.undo()
        (agent,) = [g for g in layer.groups.values() if (g.kind, g.label) == ("meta", "user_agent")]
        if plain_after is None:  # the early account: linked by the earlier side of its links only
            assert layer.linked_prompts(agent, "earlybird") >= campaign_layer.MIN_LINKED_PROMPTS
            assert layer.probe_prompts(agent, "earlybird") == 0 and "earlybird" not in agent.members
        return {a for a in flagged if a.startswith("hydra-")}, {a for a in flagged if not a.startswith("hydra-")}, agent

    def named(engine: pw.Engine, group: campaign_layer.Group) -> tuple[set[str], set[str]]:
        """(accounts the group's campaign report names, accounts whose verdict names the campaign),
        checking that the one-account shortcuts agree with the group's lists."""
        layer = engine.pipeline.campaigns
        cid = layer._campaigns()[group.key]
        members, linked = set(layer._active_members(group)), set(layer._linked_members(group))
        for account in layer.accounts:
            assert layer._counts_as_member(group, account) == (account in members), account
            assert layer._counts_as_linked(group, account) == (account in linked), account
        carrying = {a for a in layer.accounts if (s := layer.summary_for(a)) is not None and s.id == cid}
        return set(engine.campaign(cid).members), carrying

    probers, others_raised, agent = raised_to_flag(cap=True)
    assert agent.level is pw.Level.FLAG and agent.plain_peak == 0.0
    assert probers and not others_raised
    layer = engines[-1].pipeline.campaigns
    report_names, verdicts_name = named(engines[-1], agent)
    assert probers <= report_names and all(a.startswith("hydra-") for a in report_names | verdicts_name)
    fitting = [a for a in agent.members if layer._fitting(agent, np.array([agent.members[a]]))[0]]
    assert any(a.startswith("bystander-") for a in fitting)  # they fit the pool: the hold keeps them off
    _, uncapped, _ = raised_to_flag(cap=False)
    assert any(a.startswith("bystander-") for a in uncapped)
    _, later, agent = raised_to_flag(cap=True, plain_after=3)
    assert agent.plain_peak > 0.0 and any(a.startswith("bystander-") for a in later) and "earlybird" in later
    report_names, verdicts_name = named(engines[-1], agent)
    assert any(a.startswith("bystander-") for a in report_names & verdicts_name) and "earlybird" in report_names


def test_an_account_outside_a_hot_group_is_raised_by_two_linked_prompts_not_one(calibration_path, topics):
    """An account that shares no indicator with a flagged campaign but sends two prompts that
    vary the campaign members' unsent seeds is raised with it and listed in its report; one
    such prompt (a person who happened to ask a question a campaign varies) is not enough."""
    rng = np.random.default_rng(5)
    (accounts, vectors, prompts, metas), seeds = split_probe_traffic(topics, rng)
    # the rare agent would count as common among these 40 accounts (as in the hold test)
    engine = make_engine(
        calibration_path, campaign_fpr_share=1.0, target_fpr=0.01, watch_fpr=0.1, campaign_common_meta_share=1.0
    )
    feed(engine, accounts, vectors, prompts, metas)
    layer = engine.pipeline.campaigns
    (agent,) = [g for g in layer.groups.values() if (g.kind, g.label) == ("meta", "user_agent")]
    assert agent.level is pw.Level.FLAG
    pool = vectors[[i for i, a in enumerate(accounts) if a.startswith("hydra-")]]

    def outsider(name: str, linked_prompts: int) -> pw.AccountReport:
        # variants of seeds the members sent variants of (one word replaced), then queries of its own
        texts = [" ".join([*seed[:3], name.replace("-", ""), *seed[4:]]) for seed in seeds[:linked_prompts]]
        garden = ["roses", "tomatoes", "compost", "hedges", "slugs", "lawn", "ferns", "bulbs", "moss", "ivy"]
        texts += [f"how do I look after the {garden[j]} in my garden" for j in range(10 - len(texts))]
        rows = rng.choice(len(pool), 10, replace=False)
        feed(engine, [name] * 10, pool[rows], texts, [{"user_agent": "Common/1.0"}] * 10)
        return engine.report(name)

    one = outsider("outsider-one", 1)
    two = outsider("outsider-two", 2)
    assert layer.linked_prompts(agent, "outsider-one") == 1 and one.level is pw.Level.OK and one.campaign is None
    assert layer.linked_prompts(agent, "outsider-two") >= 2
    assert two.level is pw.Level.FLAG and two.campaign is not None
    assert "outsider-two" in engine.campaign(two.campaign.id).members
    linked_to = [layer.groups[k] for k in layer.accounts["outsider-two"].linked]
    assert linked_to and all(g.level is pw.Level.FLAG and "outsider-two" not in g.members for g in linked_to)
    assert all("outsider-two" in g.linked for g in linked_to)
    # the shortcuts a verdict and a report take give the whole-group answers, for every group and
    # account (a light account put among every group's linked ones too: too few queries to count)
    feed(engine, ["outsider-light"], pool[:1], ["how do I look after the roses in my garden"], [{}])
    for g in layer.groups.values():
        g.linked.add("outsider-light")
    assert not any(layer._counts_as_linked(g, "outsider-light") for g in layer.groups.values())
    for g in layer.groups.values():
        members = set(layer._linked_members(g))
        counted = layer._counted_members(g)
        for name in layer.accounts:
            assert layer._counts_as_linked(g, name) == (name in members), (g.key, name)
            assert layer.linked_prompts(g, name, counted) == layer.linked_prompts(g, name), (g.key, name)
    assert any(layer._counts_as_linked(g, "outsider-two") for g in linked_to)
    for g in layer.groups.values():
        g.linked.discard("outsider-light")
    # the groups it is linked to lose every member (forgotten): the link goes with them
    for g in linked_to:
        for member in list(g.members):
            engine.forget(member)
    assert not layer.accounts["outsider-two"].linked
    feed(engine, ["outsider-two"], pool[:1], ["one more question about the garden shed"], [{}])


def test_member_levels_by_indicator_kind_and_queries():
    from probewatch.campaigns.groups import Group
    from probewatch.campaigns.layer import MIN_FLAGGED_MEMBER_QUERIES, member_level

    def hot(kind, label, level):
        g = Group(f"{kind}:{label}", kind, label, DIM)
        g.level = level
        return g

    for coincidental in (hot("payload", "cell 1", pw.Level.FLAG), hot("meta", "user_agent", pw.Level.FLAG)):
        assert member_level(coincidental, MIN_FLAGGED_MEMBER_QUERIES - 1) is pw.Level.WATCH
        assert member_level(coincidental, MIN_FLAGGED_MEMBER_QUERIES - 1, probe_linked=True) is pw.Level.FLAG
        assert member_level(coincidental, MIN_FLAGGED_MEMBER_QUERIES) is pw.Level.FLAG
        # hot only on its probers' evidence: the others stay where the group stands without them
        for plain in (pw.Level.OK, pw.Level.WATCH):
            assert member_level(coincidental, MIN_FLAGGED_MEMBER_QUERIES, plain=plain) is plain
            assert member_level(coincidental, 2, probe_linked=True, plain=plain) is plain
            assert member_level(coincidental, 2, probe_linked=True, plain=plain, prober=True) is pw.Level.FLAG
    assert member_level(hot("payload", "cell 1", pw.Level.WATCH), 2) is pw.Level.WATCH
    for evidence in (hot("template", "think step by step", pw.Level.FLAG), hot("meta", "payment", pw.Level.FLAG)):
        assert member_level(evidence, 2) is pw.Level.FLAG
        assert member_level(evidence, 2, plain=pw.Level.OK) is pw.Level.FLAG  # a wrapper is no coincidence


def test_only_indicators_shared_by_coincidence_get_the_harder_member_tests():
    from probewatch.campaigns.groups import Group
    from probewatch.campaigns.layer import MIN_TESTED_MEMBER_QUERIES, member_min_queries, shared_by_chance

    def group(kind, label):
        return Group(f"{kind}:{label}", kind, label, DIM)

    coincidental = [group("payload", "cell 3")] + [
        group("meta", k) for k in ("ip", "network", "user_agent", "key_created")
    ]
    own_evidence = [group("template", "think step by step"), group("meta", "payment"), group("meta", "org")]
    assert all(shared_by_chance(g) for g in coincidental) and not any(shared_by_chance(g) for g in own_evidence)
    assert {member_min_queries(g) for g in coincidental} == {MIN_TESTED_MEMBER_QUERIES}
    assert {member_min_queries(g) for g in own_evidence} == {
        MIN_MEMBER_QUERIES
    } and MIN_MEMBER_QUERIES < MIN_TESTED_MEMBER_QUERIES
    assert set(META_KEYS) >= {g.label for g in coincidental[1:] + own_evidence[1:]}


def test_batch_boundaries_do_not_change_campaign_verdicts(calibration_path, topics):
    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=3, members=20, crowd=10)
    whole = feed(make_engine(calibration_path), accounts, vectors, prompts, metas, batch=len(accounts))
    ones = feed(make_engine(calibration_path), accounts, vectors, prompts, metas, batch=1)
    assert [(v.level, v.campaign and v.campaign.id) for v in whole] == [
        (v.level, v.campaign and v.campaign.id) for v in ones
    ]


def test_batch_boundaries_do_not_change_probe_links(calibration_path, topics, monkeypatch):
    """Probes split across accounts, fed whole (in step chunks of 64, so the word sketches the
    account step hands the campaign layer are joined across chunks), in batches of 7 and one at
    a time: the same verdicts, campaigns and probe links."""
    from probewatch.detect import stream

    (accounts, vectors, prompts, metas), _ = split_probe_traffic(topics, np.random.default_rng(3))
    loose = {"campaign_fpr_share": 1.0, "target_fpr": 0.01, "watch_fpr": 0.1}
    monkeypatch.setattr(stream, "STEP_CHUNK", 64)
    runs = []
    for batch in (len(accounts), 7, 1):
        engine = make_engine(calibration_path, **loose)
        verdicts = feed(engine, accounts, vectors, prompts, metas, batch=batch)
        links = {a: list(x.probe_links) for a, x in engine.pipeline.campaigns.accounts.items()}
        runs.append(([(v.account, v.level, v.campaign and (v.campaign.id, v.campaign.level)) for v in verdicts], links))
    assert len(accounts) > 64 and sum(map(len, runs[0][1].values())) >= 10  # links were made
    assert runs[0] == runs[1] == runs[2]


def test_save_at_t_reload_and_continue_equals_uninterrupted(calibration_path, topics, tmp_path):
    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=4, members=24, crowd=12)
    # save on a batch boundary of the uninterrupted run: float32 matrix products round by batch
    # shape in the last bit, and this test is about the snapshot being exact
    t = len(accounts) // 2 // 16 * 16
    straight = make_engine(calibration_path)
    expected = feed(straight, accounts, vectors, prompts, metas)
    first = make_engine(calibration_path)
    feed(first, accounts[:t], vectors[:t], prompts[:t], metas[:t])
    first.save(tmp_path / "t.npz")
    again = pw.Engine.load(tmp_path / "t.npz")
    rest = feed(again, accounts[t:], vectors[t:], prompts[t:], metas[t:])
    key = lambda v: (v.account, v.level, round(v.risk, 6), v.campaign and (v.campaign.id, v.campaign.level))  # noqa: E731
    assert [key(v) for v in rest] == [key(v) for v in expected[t:]]
    assert [c.to_dict() for c in again.campaigns()] == [c.to_dict() for c in straight.campaigns()]


def test_save_at_t_reload_and_continue_keeps_probe_links(calibration_path, topics, tmp_path):
    """The same with a campaign splitting probes across accounts: the cross-account index, each
    account's probe links and each group's linked accounts survive the snapshot exactly."""
    (accounts, vectors, prompts, metas), _ = split_probe_traffic(topics, np.random.default_rng(3))
    loose = {"campaign_fpr_share": 1.0, "target_fpr": 0.01, "watch_fpr": 0.1}
    t = len(accounts) // 2 // 16 * 16
    straight = make_engine(calibration_path, **loose)
    expected = feed(straight, accounts, vectors, prompts, metas)
    first = make_engine(calibration_path, **loose)
    feed(first, accounts[:t], vectors[:t], prompts[:t], metas[:t])
    assert any(x.probe_links for x in first.pipeline.campaigns.accounts.values())
    first.save(tmp_path / "t.npz")
    again = pw.Engine.load(tmp_path / "t.npz")
    rest = feed(again, accounts[t:], vectors[t:], prompts[t:], metas[t:])
    key = lambda v: (v.account, v.level, v.campaign and (v.campaign.id, v.campaign.level))  # noqa: E731
    assert [key(v) for v in rest] == [key(v) for v in expected[t:]]
    a, b = again.pipeline.campaigns, straight.pipeline.campaigns
    assert {k: x.probe_links for k, x in a.accounts.items()} == {k: x.probe_links for k, x in b.accounts.items()}
    assert {k: g.linked for k, g in a.groups.items()} == {k: g.linked for k, g in b.groups.items()}
    assert a.split_probes.serial == b.split_probes.serial


def test_a_snapshot_before_probe_link_evidence_loads_with_plain_scores_equal_to_its_scores(calibration_path, topics):
    """Snapshots written before 0.24.0 hold no scores without probers; such a group's scores
    were never helped by probers, so they load as its plain scores and its members' levels read
    as before."""
    (accounts, vectors, prompts, metas), _ = split_probe_traffic(topics, np.random.default_rng(3))
    engine = make_engine(calibration_path, campaign_fpr_share=1.0, target_fpr=0.01, watch_fpr=0.1)
    feed(engine, accounts, vectors, prompts, metas)
    layer = engine.pipeline.campaigns
    state = layer.state_dict()
    for entry in state["header"]["groups"]:
        del entry["plain_score"], entry["plain_peak"]
    older = make_engine(calibration_path, campaign_fpr_share=1.0, target_fpr=0.01, watch_fpr=0.1).pipeline.campaigns
    older.load_state(state)
    assert older.groups.keys() == layer.groups.keys()
    for key, group in older.groups.items():
        assert (group.plain_score, group.plain_peak) == (group.score, group.peak_score)
        assert group.level is layer.groups[key].level and older._plain_level(group) is group.level


def test_a_campaign_with_no_account_left_to_name_is_neither_listed_nor_reported(calibration_path, topics):
    """Which groups form a campaign is cached between relinks; a hot group can lose every
    account that counts with it meanwhile (bystanders the member tests turn away as it grows,
    members forgotten). Such a campaign is not listed, not counted in the stats, and asking for
    it by id says it has no member left, instead of a report of 0 members."""
    (accounts, vectors, prompts, metas), _ = split_probe_traffic(topics, np.random.default_rng(5))
    engine = make_engine(calibration_path, campaign_fpr_share=1.0, target_fpr=0.01, watch_fpr=0.1)
    feed(engine, accounts, vectors, prompts, metas)
    layer = engine.pipeline.campaigns
    layer._campaigns()
    cached = sorted(layer._campaign_groups)
    reports = engine.campaigns()
    assert reports and all(r.size > 0 and len(r.members) == r.size for r in reports)
    assert len(cached) > len(reports)  # this traffic leaves a cached campaign that names nobody
    stats = engine.campaign_stats().campaigns
    assert stats["watch"] + stats["flag"] == len(reports)
    for cid in set(cached) - {r.id for r in reports}:
        with pytest.raises(pw.UnknownCampaignError, match="no member left"):
            engine.campaign(cid)
    with pytest.raises(pw.InputError, match="campaign id"):
        engine.campaign(reports[0])
    for member in {m for r in reports for m in r.members}:
        engine.forget(member)
    assert all(r.size > 0 for r in engine.campaigns())
    for r in reports:
        with pytest.raises(pw.UnknownCampaignError):
            engine.campaign(r.id)


def test_forget_takes_an_account_out_of_every_group(calibration_path, topics):
    engine = make_engine(calibration_path)
    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=5, members=12, crowd=6)
    feed(engine, accounts, vectors, prompts, metas)
    layer = engine.pipeline.campaigns
    victim = "hydra-3"
    assert any(victim in g.members for g in layer.groups.values())
    used = layer.pool.used
    engine.forget(victim)
    assert not any(victim in g.members for g in layer.groups.values())
    assert victim not in layer.accounts and layer.pool.used < used
    # what is left equals the sums of what the other members sent
    for group in layer.groups.values():
        slots = list(group.members.values())
        np.testing.assert_allclose(group.total, layer.pool.vectors[slots].astype(np.float64).sum(axis=0), atol=1e-4)
        assert group.n == int(layer.pool.counts[slots].sum())


def test_unknown_campaign_and_bad_meta_are_clear_errors(calibration_path):
    engine = make_engine(calibration_path)
    with pytest.raises(UnknownCampaignError, match="no campaign"):
        engine.campaign("cmp-nope")
    x = unit_rows(np.random.default_rng(6).standard_normal((3, DIM)))
    with pytest.raises(BatchError) as info:
        engine.observe_embeddings(["a", "b", "c"], x, metas=[{"ip": "1.2.3.4"}, {"ipaddr": "x"}, None])
    assert list(info.value.errors) == [1] and "ipaddr" in str(info.value.errors[1])
    assert info.value.verdicts[0] is not None and info.value.verdicts[2] is not None
    assert engine.stats().observations == 2


def test_caps_bound_memory_under_a_flood_of_templates(calibration_path):
    engine = make_engine(calibration_path, campaign_max_groups=32, campaign_max_pending=64, campaign_max_memberships=64)
    rng = np.random.default_rng(7)
    n = 600
    x = unit_rows(rng.standard_normal((n, DIM)))
    accounts = [f"flood-{i % 150}" for i in range(n)]
    # every template shared by two accounts: many groups, each pending first
    prompts = [
        f"template number {i % 200} says hello with words {i} and more words and yet more words here {i % 200} end"
        for i in range(n)
    ]
    for s in range(0, n, 50):
        engine.observe_embeddings(accounts[s : s + 50], x[s : s + 50], prompts=prompts[s : s + 50])
    layer = engine.pipeline.campaigns
    assert len(layer.groups) <= 32 and len(layer.pending) <= 64 and layer.pool.used <= 64
    assert engine.stats().bytes_held >= layer.nbytes() > 0


def test_campaigns_can_be_switched_off(calibration_path, topics):
    engine = make_engine(calibration_path, campaigns=False)
    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=8, members=10, crowd=4)
    verdicts = feed(engine, accounts, vectors, prompts, metas)
    assert engine.pipeline.campaigns is None and engine.campaigns() == []
    assert all(v.campaign is None for v in verdicts)


def test_member_threshold_is_what_the_scoring_module_says():
    assert MIN_MEMBER_QUERIES >= 2  # one shared prefix makes nobody a member


def test_campaign_pages_and_table_sizes(calibration_path, topics):
    engine = make_engine(calibration_path)
    assert engine.campaign_page() == ([], None)
    assert engine.campaign_stats().to_dict() == {
        "campaigns": {"watch": 0, "flag": 0},
        "groups": 0,
        "pending": 0,
        "memberships": 0,
        "evicted_flagged": 0,
    }
    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=9)
    feed(engine, accounts, vectors, prompts, metas)
    ids = sorted(c.id for c in engine.campaigns())
    first, cursor = engine.campaign_page(limit=1)
    assert [c.id for c in first] == ids[:1] and (cursor == ids[0] if len(ids) > 1 else cursor is None)
    rest, _ = engine.campaign_page(after=cursor, limit=100) if cursor else ([], None)
    assert [c.id for c in first + rest] == ids
    stats = engine.campaign_stats()
    layer = engine.pipeline.campaigns
    assert stats.groups == len(layer.groups) > 0 and stats.memberships == layer.pool.used
    assert sum(stats.campaigns.values()) == len(ids)


def _anchors_from_all_tokens(text: str) -> list[tuple[str, str]]:
    """The definition: the first and last six of all the prompt's tokens, if it has 14."""
    from probewatch.campaigns.templates import ANCHOR_TOKENS, MIN_ANCHORED_TOKENS, anchor_key

    words = tokens(text)
    if len(words) < MIN_ANCHORED_TOKENS:
        return []
    head, tail = words[:ANCHOR_TOKENS], words[-ANCHOR_TOKENS:]
    return [(anchor_key("head", head), " ".join(head)), (anchor_key("tail", tail), " ".join(tail))]


def _around_the_cuts(middle: str, at_head: str, at_tail: str) -> str:
    """A long prompt with ``at_head`` across the head window's cut and ``at_tail`` across
    the tail window's."""
    from probewatch.campaigns.templates import EDGE_CHARS

    lead = "Plan each step: " + "go to page and read it, " * 20
    lead = lead[: EDGE_CHARS - len(at_head) // 2]
    trail = ", then " + "note the answer for me. " * 20
    trail = trail[-(EDGE_CHARS - len(at_tail) // 2 - len(at_tail) % 2) :]
    return lead + at_head + middle + at_tail + trail


@pytest.mark.parametrize(
    ("at_head", "at_tail"),
    [
        ("1234567890", "9876543210"),  # digit runs cut in two
        ("extraordinarily", "unquestionably"),  # words cut in two
        ("ΟΔΥΣΣΕΥΣ'''''''a", "ΑΣ'.'.'.'.b"),  # capital sigmas whose lower case depends on the other side
        ("İİİİİİ", "ǅǅǅǅ"),  # lower-casing that changes length or case class
        ("!?!?!?!?!?", "<<<>>>"),  # single-character tokens on the cut
    ],
    ids=["digits", "words", "final-sigma", "length-changing-lower", "punctuation"],
)
def test_anchors_read_from_the_ends_equal_the_whole_text_tokens(at_head, at_tail):
    text = _around_the_cuts(" and the payload itself " * 10, at_head, at_tail)
    assert template_anchors(text) == _anchors_from_all_tokens(text) != []


@pytest.mark.parametrize(
    "text",
    [
        "a" * 5000,  # one token: no anchors
        "word " * 3 + " " * 3000 + "word " * 3,  # long, yet six tokens in all
        "w " * 7 + " " * 600 + "w " * 7,  # exactly 14 tokens: anchored
        "w " * 7 + " " * 600 + "w " * 6,  # 13: not anchored
        "Σ" * 300 + " " + "Σ" * 300,  # two long words
        # A capital sigma is final (lower case ς) or not (σ) by the nearest cased letters past
        # any run of apostrophes, which may lie beyond a window's cut: the anchors see σ, ς.
        "ΑΣ" + "'" * 300 + "a" + " and more words" * 30 + " b" + "'" * 300 + "Σ",
    ],
    ids=["one-token", "six-tokens", "fourteen", "thirteen", "sigma-words", "sigma-beyond-the-cut"],
)
def test_long_prompts_with_few_tokens(text):
    assert template_anchors(text) == _anchors_from_all_tokens(text)


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from([*"ab Σσς'.İ0123456789,!?-_\t\n", "\u0301", "ǅ", "ß", "ﬁ"]),
        min_size=400,
        max_size=1400,
    )
)
def test_anchors_from_the_ends_match_the_definition_on_any_text(text):
    assert template_anchors(text) == _anchors_from_all_tokens(text)


def test_a_retry_reads_the_level_its_campaign_raised_earlier_in_the_batch(calibration_path, topics):
    """Red-team finding on 0.18.0: a prompt sent again is not judged anew, and in a batch it
    read its account's level from before the batch even when an earlier item of the batch had
    raised the account through its campaign (one call per item gave ``flag``; the sidecar's
    micro-batches answered the member's retry ``ok``)."""
    accounts, vectors, prompts, metas = hydra_traffic(topics, seed=3, members=20, crowd=10)
    rng = np.random.default_rng(0)
    first: dict[str, int] = {}
    order = []
    for i, account in enumerate(accounts):  # after each item, some account retries its first prompt
        first.setdefault(account, i)
        order += [i, first[list(first)[rng.integers(len(first))]]]
    accounts, vectors = [accounts[i] for i in order], vectors[order]
    prompts, metas = [prompts[i] for i in order], [metas[i] for i in order]

    def key(v):
        return (v.account, v.level, v.n_queries, v.repeat, v.campaign.id if v.campaign else None)

    ones = [key(v) for v in feed(make_engine(calibration_path), accounts, vectors, prompts, metas, batch=1)]
    for batch in (16, len(accounts)):
        assert [key(v) for v in feed(make_engine(calibration_path), accounts, vectors, prompts, metas, batch)] == ones
    assert any(k[1] is pw.Level.FLAG and k[3] for k in ones)  # flagged members' retries among them
