"""Checks of the hydra campaign traffic (quick size, hashed bag-of-words embedder, no model).

Like test_bench_traffic.py, the data packages are required; a missing one fails loudly.
"""

from __future__ import annotations

import itertools
import random
import re
from collections import Counter, defaultdict
from datetime import datetime

import pytest

from bench.tests.test_bench_traffic import hashed_bag_of_words
from bench.traffic import (
    CROWD_TEMPLATES,
    HYDRA_BENIGN,
    HYDRA_CROWDS,
    HYDRA_SCENARIOS,
    HYDRA_SIZES,
    HYDRA_UNSEEN_CROWDS,
    META_KEYS,
    AccountStream,
    HydraTraffic,
    build_hydra,
    build_traffic,
)
from bench.traffic.hydra import BLEND_WRAPPERS, COT_WRAPPERS, RELAY_CELL, RELAY_PER_MEMBER, RELAY_STEP_GAP, _relay

SPEC = HYDRA_SIZES["quick"]
DAY = 86400.0


@pytest.fixture(scope="module")
def hydra() -> HydraTraffic:
    return build_hydra("quick", seed=0, embed=hashed_bag_of_words)


def _fingerprint(h: HydraTraffic) -> list[tuple]:
    return [
        (
            s.account,
            s.label,
            s.kind,
            tuple(s.prompts),
            tuple(s.ts),
            tuple(s.is_attack),
            s.campaign,
            tuple(tuple(sorted(m.items())) for m in s.meta),
        )
        for s in h.all_streams()
    ]


def _by_campaign(streams: list[AccountStream]) -> dict[str, list[AccountStream]]:
    out: dict[str, list[AccountStream]] = defaultdict(list)
    for stream in streams:
        out[stream.campaign].append(stream)
    return dict(out)


def _prefix(template: str) -> str:
    return template.split("{", 1)[0]


def _matches(template: str, prompt: str) -> bool:
    # every literal piece of the template appears in the prompt, in order
    pieces = [p for p in re.split(r"\{[a-z_]+\}", template) if p]
    position = 0
    for piece in pieces:
        found = prompt.find(piece, position)
        if found < 0:
            return False
        position = found + len(piece)
    return True


def test_same_seed_same_traffic_other_seed_differs(hydra):
    assert _fingerprint(build_hydra("quick", seed=0, embed=hashed_bag_of_words)) == _fingerprint(hydra)
    assert _fingerprint(build_hydra("quick", seed=1, embed=hashed_bag_of_words)) != _fingerprint(hydra)


def test_scenarios_campaigns_and_labels(hydra):
    assert list(hydra.attacks) == list(HYDRA_SCENARIOS)
    assert list(hydra.test_benign) == list(HYDRA_BENIGN)
    for name, streams in hydra.attacks.items():
        campaigns = _by_campaign(streams)
        assert len(campaigns) == SPEC.campaigns, name
        assert all(campaign and campaign.startswith("campaign-") for campaign in campaigns)
        lowest = SPEC.blend_members[0] if "blend" in name else SPEC.members[0]
        for members in campaigns.values():
            assert len(members) >= lowest
        kind = "hydra:" + name.removesuffix("_meta").removeprefix("hydra_")
        assert all(s.label == 1 and s.kind == kind for s in streams)
    plain_ids = {c for n in HYDRA_SCENARIOS if not n.endswith("_meta") for c in _by_campaign(hydra.attacks[n])}
    twin_ids = {c for n in HYDRA_SCENARIOS if n.endswith("_meta") for c in _by_campaign(hydra.attacks[n])}
    assert not plain_ids & twin_ids
    for stream in hydra.calibration + [s for streams in hydra.test_benign.values() for s in streams]:
        assert stream.label == 0 and stream.kind.startswith("benign:") and not any(stream.is_attack)
        assert stream.campaign is None
    crowd_kinds = {f"benign:{name}" for name in HYDRA_CROWDS}
    assert crowd_kinds <= {s.kind for s in hydra.calibration}
    for name in HYDRA_CROWDS:
        assert hydra.test_benign[name] and {s.kind for s in hydra.test_benign[name]} == {f"benign:{name}"}
    assert hydra.test_benign["ordinary"] and len(hydra.test_benign["ordinary"]) == len(
        build_traffic(hydra.size, hydra.seed, embed=hashed_bag_of_words).test_benign
    )


def test_every_stream_is_well_formed_with_metadata(hydra):
    streams = hydra.all_streams()
    assert len({s.account for s in streams}) == len(streams)
    for stream in streams:
        assert len(stream.prompts) == len(stream.ts) == len(stream.is_attack) == len(stream.meta) > 0
        assert all(isinstance(p, str) and p for p in stream.prompts)
        assert all(b >= a for a, b in itertools.pairwise(stream.ts)), stream.kind
        for meta in stream.meta:
            assert set(meta) <= set(META_KEYS) and meta
            assert all(isinstance(v, str) and v for v in meta.values())
        assert len({m["org"] for m in stream.meta}) == 1 and len({m["payment"] for m in stream.meta}) == 1
        datetime.strptime(stream.meta[0]["key_created"], "%Y-%m-%dT%H:%M:%SZ")


def test_test_traffic_lies_in_one_period_and_calibration_before_it(hydra):
    start, end = hydra.period
    assert end - start == SPEC.period_days * DAY
    for stream in hydra.test_streams():
        assert start <= stream.ts[0] and stream.ts[-1] <= end + DAY, stream.kind
    for stream in hydra.calibration:
        assert hydra.calibration_period[0] <= stream.ts[0] and stream.ts[-1] <= start + DAY, stream.kind
    for name in ("hydra_cot", "hydra_kcenter"):
        for members in _by_campaign(hydra.attacks[name]).values():
            span = max(s.ts[-1] for s in members) - min(s.ts[0] for s in members)
            assert span <= SPEC.campaign_days[1] * DAY + 1


def test_members_are_light(hydra):
    lo, hi = SPEC.member_queries[2], SPEC.member_queries[3]
    for base in ("hydra_cot", "hydra_kcenter", "hydra_grid", "hydra_relay"):
        for name in (base, f"{base}_meta"):
            lengths = [len(s) for s in hydra.attacks[name]]
            assert all(lo <= n <= hi for n in lengths), name
            assert 8 <= sorted(lengths)[len(lengths) // 2] <= 16, name
            assert all(all(s.is_attack) for s in hydra.attacks[name])
    for stream in hydra.attacks["hydra_blend"]:
        assert SPEC.blend_queries[2] <= len(stream) <= SPEC.blend_queries[3]


def test_blend_accounts_hold_five_to_thirty_percent_extraction(hydra):
    wrapped = [_prefix(w.template) for w in BLEND_WRAPPERS]
    for stream in hydra.attacks["hydra_blend"]:
        assert SPEC.blend_share[0] <= stream.attack_share <= SPEC.blend_share[1], stream.attack_share
        extraction = [p for p, a in zip(stream.prompts, stream.is_attack, strict=True) if a]
        assert all(any(_matches(w.template, p) for w in BLEND_WRAPPERS) for p in extraction)
        customer = [p for p, a in zip(stream.prompts, stream.is_attack, strict=True) if not a]
        assert not any(p.startswith(w) and w for p in customer for w in wrapped)


def test_campaign_members_tile_their_pool(hydra):
    """Within one campaign no two members send the same text (blend: the extraction part;
    the customer traffic comes from shared pools, like ordinary users')."""
    for name in ("hydra_cot", "hydra_kcenter", "hydra_blend", "hydra_grid", "hydra_relay"):
        for members in _by_campaign(hydra.attacks[name]).values():
            owners: dict[str, str] = {}
            for stream in members:
                texts = [p for p, a in zip(stream.prompts, stream.is_attack, strict=True) if a]
                assert len(texts) == len(set(texts)), name
                for text in texts:
                    assert owners.setdefault(text, stream.account) == stream.account, name


def test_cot_campaigns_rotate_every_wrapper_and_members_use_one_or_two(hydra):
    for members in _by_campaign(hydra.attacks["hydra_cot"]).values():
        used = Counter()
        for stream in members:
            mine = {i for p in stream.prompts for i, w in enumerate(COT_WRAPPERS) if _matches(w.template, p)}
            assert 1 <= len(mine) <= 3  # 1-2 wrappers; a payload can fit a second wording by chance
            used.update(mine)
        assert set(used) == set(range(len(COT_WRAPPERS)))
    assert any(
        "imagine" in p.lower() and "internal reasoning" in p.lower()
        for s in hydra.attacks["hydra_cot"]
        for p in s.prompts
    )


def _words(text: str) -> frozenset[str]:
    return frozenset(text.lower().split())


def _jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    return len(a & b) / len(a | b)


def _share_with_a_variant_elsewhere(members: list[AccountStream]) -> float:
    """Share of a campaign's prompts with a close variant (word Jaccard >= 0.5) in another member."""
    sent = [(s.account, _words(p)) for s in members for p in s.prompts]
    return sum(any(b != a and _jaccard(w, v) >= 0.5 for b, v in sent) for a, w in sent) / len(sent)


def test_grid_campaigns_split_each_seed_across_members(hydra):
    """A grid campaign's probes are variants of shared seeds: nearly every probe has a close
    variant (word Jaccard >= 0.5) in another member of its campaign, and no member holds two
    variants of one seed, so the seed is visible across accounts only."""
    campaigns = _by_campaign(hydra.attacks["hydra_grid"])
    assert len(campaigns) == SPEC.campaigns
    for members in campaigns.values():
        assert _share_with_a_variant_elsewhere(members) >= 0.9
        for stream in members:
            own = [_words(p) for p in stream.prompts]
            assert all(_jaccard(own[i], own[j]) < 0.5 for i in range(len(own)) for j in range(i))


def test_relay_campaigns_spread_each_chain_over_members(hydra):
    """A relay campaign's steps are variants of one another held by different members: nearly
    every step has a close variant (word Jaccard >= 0.5) in another member of its campaign."""
    campaigns = _by_campaign(hydra.attacks["hydra_relay"])
    assert len(campaigns) == SPEC.campaigns
    for members in campaigns.values():
        assert _share_with_a_variant_elsewhere(members) >= 0.9


def test_relay_passes_a_chain_along_one_cell_in_time_order():
    chains = [[(f"chain {c} step {i}", f"unit-{c}") for i in range(random.Random(c).randint(6, 24))] for c in range(60)]
    counts = [random.Random(100 + m).randint(5, 20) for m in range(40)]
    window = (1000.0, 1000.0 + 5 * DAY)
    sent = _relay(random.Random(7), chains, counts, window)
    assert all(len(part) <= n for part, n in zip(sent, counts, strict=True))
    holder = {q: m for m, part in enumerate(sent) for _, q in part}
    time_of = {q: t for part in sent for t, q in part}
    assert len(holder) == sum(map(len, sent))  # each step sent once
    together: dict[int, set[int]] = defaultdict(set)  # member -> members it shared a chain with
    for chain in chains:
        steps = [q for q in chain if q in holder]
        assert steps == chain[: len(steps)]  # a chain is sent from its start, and ends for good
        members = Counter(holder[q] for q in steps)
        assert max(members.values(), default=0) <= RELAY_PER_MEMBER
        assert len(members) <= RELAY_CELL[1]
        times = [time_of[q] for q in steps]
        # each step follows the last by the step gap (or both were pushed to the window's end)
        assert all(
            RELAY_STEP_GAP[0] <= b - a <= RELAY_STEP_GAP[1] or b == window[1] for a, b in itertools.pairwise(times)
        )
        assert all(window[0] <= t <= window[1] for t in times)
        for m in members:
            together[m] |= set(members)
    # cells are disjoint: whoever shares a chain with a member shares its cell, never more
    assert all(len(group) <= RELAY_CELL[1] for group in together.values())
    assert sum(map(len, sent)) >= 0.5 * sum(len(c) for c in chains)


def test_meta_twins_share_prompts_and_rare_infrastructure(hydra):
    benign_agents = {m["user_agent"] for s in hydra.calibration for m in s.meta}
    benign_agents |= {m["user_agent"] for streams in hydra.test_benign.values() for s in streams for m in s.meta}
    for name in ("hydra_cot", "hydra_blend", "hydra_kcenter", "hydra_grid", "hydra_relay"):
        plain, twins = hydra.attacks[name], hydra.attacks[f"{name}_meta"]
        assert len(plain) == len(twins)
        for a, b in zip(plain, twins, strict=True):
            assert a.prompts == b.prompts and a.ts == b.ts and a.is_attack == b.is_attack
            assert a.account != b.account and a.campaign != b.campaign
        for members in _by_campaign(twins).values():
            metas = [m for s in members for m in s.meta]
            agents = {m["user_agent"] for m in metas}
            assert len(agents) == 1 and not agents & benign_agents
            assert len({m["ip"] for m in metas}) <= SPEC.proxy_ips[1]
            payments = {s.meta[0]["payment"] for s in members}
            assert 1 <= len(payments) <= SPEC.shared_payments[1]
            created = sorted(datetime.strptime(s.meta[0]["key_created"], "%Y-%m-%dT%H:%M:%SZ") for s in members)
            assert (created[-1] - created[0]).total_seconds() < 3600
            assert len({s.meta[0]["org"] for s in members}) == len(members)


def test_plain_members_share_no_infrastructure_beyond_chance(hydra):
    for name in ("hydra_cot", "hydra_blend", "hydra_kcenter", "hydra_grid", "hydra_relay"):
        for members in _by_campaign(hydra.attacks[name]).values():
            assert len({s.meta[0]["payment"] for s in members}) == len(members)
            assert len({s.meta[0]["org"] for s in members}) == len(members)
            assert len({s.meta[0]["key_created"][:13] for s in members}) > len(members) // 2
            users: dict[str, set[str]] = defaultdict(set)
            for stream in members:
                for meta in stream.meta:
                    users[meta["ip"]].add(stream.account)
            shared = sum(1 for accounts in users.values() if len(accounts) > 1)
            assert shared <= max(2, len(users) // 100), (name, shared, len(users))
            requests = sum(len(s) for s in members)
            assert len(users) >= 0.98 * requests  # a fresh address per request


def test_crowds_share_a_template_but_not_content(hydra):
    for half, streams_of in (
        ("test", lambda name: hydra.test_benign[name]),
        ("calibration", lambda name: [s for s in hydra.calibration if s.kind == f"benign:{name}"]),
    ):
        other = "calibration" if half == "test" else "test"
        for name in ("crowd_rag", "crowd_json", "crowd_agent"):
            streams = streams_of(name)
            templates = CROWD_TEMPLATES[half][name]
            assert len(streams) >= 8
            seen: dict[str, str] = {}
            groups: dict[str, str] = {}
            used = Counter()
            for stream in streams:
                fits = [i for i, t in enumerate(templates) if all(_matches(t, p) for p in stream.prompts)]
                assert fits, (half, name, stream.prompts[0][:80])
                used[fits[0]] += 1
                assert not any(_matches(t, p) for t in CROWD_TEMPLATES[other][name] for p in stream.prompts)
                for text in stream.prompts:
                    assert seen.setdefault(text, stream.account) == stream.account  # own content
                for group in stream.source_groups:
                    assert groups.setdefault(group, stream.account) == stream.account  # own documents
            assert max(used.values()) >= 3  # many users on one framework default


def test_harness_runs_send_the_same_items_from_several_accounts(hydra):
    runs: dict[str, list[AccountStream]] = defaultdict(list)
    for stream in hydra.test_benign["eval_harness"]:
        runs[stream.meta[0]["org"]].append(stream)
    assert len(runs) == SPEC.harness_runs
    for accounts in runs.values():
        assert SPEC.harness_accounts[0] <= len(accounts) <= SPEC.harness_accounts[1]
        assert all(s.prompts == accounts[0].prompts for s in accounts)
        assert len(accounts[0]) == SPEC.harness_items


def test_nat_and_class_share_infrastructure_with_own_or_overlapping_content(hydra):
    nat = hydra.test_benign["nat"]
    assert len(nat) == SPEC.nat_users
    assert len({m["org"] for s in nat for m in s.meta}) == 1
    assert len({m["network"] for s in nat for m in s.meta}) == 1
    assert len({m["ip"] for s in nat for m in s.meta}) <= 3
    classes: dict[str, list[AccountStream]] = defaultdict(list)
    for stream in hydra.test_benign["class_assignment"]:
        classes[stream.meta[0]["org"]].append(stream)
    assert len(classes) == SPEC.classes
    for students in classes.values():
        assert len(students) == SPEC.class_size
        assert max(s.ts[-1] for s in students) - min(s.ts[0] for s in students) <= 6 * 3600
        counts = Counter(t for s in students for t in set(s.prompts))
        assert max(counts.values()) >= 5  # the same assignment question from many students
        assert len({s.meta[0]["payment"] for s in students}) == 1


def test_a_rewrite_class_varies_the_same_unsent_sentences_and_is_never_in_calibration(hydra):
    """The paraphrasing class: thirty students of one course, each sending reworded versions
    (a second try now and then) of the same handed-out sentences, none of them as handed out;
    a population the calibration has no example of."""
    assert set(HYDRA_UNSEEN_CROWDS) <= set(hydra.test_benign)
    assert not {f"benign:{name}" for name in HYDRA_UNSEEN_CROWDS} & {s.kind for s in hydra.calibration}
    rewrite = hydra.test_benign["class_rewrite"]
    classes: dict[str, list[AccountStream]] = defaultdict(list)
    for stream in rewrite:
        classes[stream.meta[0]["org"]].append(stream)
    assert len(classes) == SPEC.classes
    others = {t for streams in hydra.test_benign.values() for s in streams if s not in rewrite for t in s.prompts}
    for students in classes.values():
        assert len(students) == SPEC.class_size and len({s.meta[0]["payment"] for s in students}) == 1
        assert max(s.ts[-1] for s in students) - min(s.ts[0] for s in students) <= 6 * 3600
        handed = set().union(*(s.source_groups for s in students))
        assert 3 <= len(handed) <= 6  # the same few sentences for the whole class
        texts = [t for s in students for t in s.prompts]
        assert len(set(texts)) >= 0.9 * len(texts)  # each student's own wording
        assert sum(len(s.prompts) > len(s.source_groups) for s in students) >= len(students) // 3  # second tries
        assert not set(texts) & others


def test_events_are_one_global_time_order_and_complete(hydra):
    events = hydra.events()
    assert len(events) == sum(len(s) for s in hydra.test_streams())
    assert all(a[0] <= b[0] for a, b in itertools.pairwise(events))
    for ts, account, prompt, meta, stream in events[:: max(1, len(events) // 500)]:
        assert stream.account == account
        assert any(
            t == ts and p == prompt and m is meta
            for t, p, m in zip(stream.ts, stream.prompts, stream.meta, strict=True)
        )
    interleaved = {e[4].account for e in events[:200]}
    assert len(interleaved) > 20  # accounts interleave in time
    subset = hydra.events(["ordinary", "hydra_cot"])
    assert len(subset) == sum(len(s) for s in hydra.test_benign["ordinary"] + hydra.attacks["hydra_cot"])
    with pytest.raises(ValueError, match="unknown scenarios"):
        hydra.events(["nope"])


def test_calibration_and_test_share_no_source_and_no_text(hydra):
    test = hydra.test_streams()
    calibration_groups = set().union(*(s.source_groups for s in hydra.calibration))
    test_groups = set().union(*(s.source_groups for s in test))
    assert calibration_groups and test_groups
    assert not calibration_groups & test_groups
    calibration_texts = {t for s in hydra.calibration for t in s.prompts}
    assert not calibration_texts & {t for s in test for t in s.prompts}


def test_describe_lists_every_section_and_kind(hydra):
    table = hydra.describe()
    for name in [*HYDRA_SCENARIOS, *HYDRA_BENIGN, "calibration"]:
        assert name in table
    for stream in hydra.all_streams():
        assert stream.kind in table
    assert "unique texts" in table and "campaigns" in table


def test_sizes_table_and_budget(hydra):
    assert set(HYDRA_SIZES) == {"quick", "default"}
    default = HYDRA_SIZES["default"]
    assert default.members[0] >= 500 and default.crowd_accounts >= 500 and default.campaigns >= 2
    base = set(build_traffic("quick", 0, embed=hashed_bag_of_words).all_texts())
    # new texts the quick run in CI embeds (bench/tests/test_bench_hydra_eval.py)
    assert len(set(hydra.all_texts()) - base) <= 3400
