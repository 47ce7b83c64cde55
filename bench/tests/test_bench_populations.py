"""Checks of the benign populations (bench/traffic/populations.py) at quick size; no model.

The data packages are required (as in test_bench_traffic.py); a missing one fails loudly.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict

import pytest

from bench.traffic import build_populations, sources
from bench.traffic.populations import HALVES, POPULATIONS, SIZES, Population, Populations, allotment

# Full prompt texts that may legitimately occur in more than one account (a genuinely
# shared fixed string, never a payload). The build shares none today.
SHARED_FIXED_STRINGS: frozenset[str] = frozenset()


@pytest.fixture(scope="module")
def pop() -> Populations:
    return build_populations("quick", seed=0)


def _halves(p: Populations):
    return {"calibration": p.calibration, "test": p.test}


def _fingerprint(p: Populations) -> list[tuple]:
    return [
        (half, name, s.account, s.kind, tuple(s.prompts), tuple(s.ts), s.source_groups)
        for half, by_name in _halves(p).items()
        for name, streams in by_name.items()
        for s in streams
    ]


def test_population_table():
    assert len(POPULATIONS) >= 22
    for name, population in POPULATIONS.items():
        assert isinstance(population, Population) and population.name == name
        assert dataclasses.is_dataclass(population) and population.__dataclass_params__.frozen
        assert population.category and population.description and population.source
        assert population.timing in ("person", "app", "harness")
        assert population.volume in ("person", "app", "light", "power", "harness")


def test_every_population_has_accounts_in_both_halves(pop):
    assert set(pop.calibration) == set(POPULATIONS) == set(pop.test)
    spec = SIZES["quick"]
    for name in POPULATIONS:
        assert 1 <= len(pop.calibration[name]) <= max(spec.calibration_accounts, spec.power_accounts[0]), name
        assert 1 <= len(pop.test[name]) <= max(spec.test_accounts, spec.power_accounts[1]), name
    ready = [n for n in POPULATIONS if len(pop.calibration[n]) >= 2 and len(pop.test[n]) >= 1]
    assert len(ready) >= 22


def test_streams_are_labelled_benign_and_ordered(pop):
    for half, by_name in _halves(pop).items():
        for name, streams in by_name.items():
            for s in streams:
                assert s.label == 0 and s.kind == f"benign:{name}", (half, name)
                assert s.is_attack == [False] * len(s.prompts) and s.prompts
                assert len(s.ts) == len(s.prompts)
                assert all(b >= a for a, b in zip(s.ts, s.ts[1:], strict=False)), (half, name)
                assert s.meta is None and s.campaign is None and s.source_groups
                assert re.fullmatch(r"acct-[0-9a-f]{12}", s.account)


def test_account_ids_unique(pop):
    ids = [s.account for s in pop.all_streams()]
    assert len(ids) == len(set(ids))


def test_deterministic_for_size_and_seed(pop):
    assert _fingerprint(build_populations("quick", seed=0)) == _fingerprint(pop)
    assert _fingerprint(build_populations("quick", seed=1)) != _fingerprint(pop)


def test_no_prompt_shared_between_accounts(pop):
    owners: dict[str, set[str]] = defaultdict(set)
    for s in pop.all_streams():
        for text in s.prompts:
            owners[text].add(s.account)
    shared = {t for t, accounts in owners.items() if len(accounts) > 1}
    assert shared <= SHARED_FIXED_STRINGS, sorted(shared)[:5]


def test_no_source_unit_shared_between_accounts_of_a_population(pop):
    for by_name in _halves(pop).values():
        for name, streams in by_name.items():
            seen: set[str] = set()
            for s in streams:
                assert not (s.source_groups & seen), name
                seen |= s.source_groups


def test_halves_share_no_source_group_and_no_prompt(pop):
    groups = {h: {g for ss in _halves(pop)[h].values() for s in ss for g in s.source_groups} for h in HALVES}
    texts = {h: {t for ss in _halves(pop)[h].values() for s in ss for t in s.prompts} for h in HALVES}
    assert not groups["calibration"] & groups["test"]
    assert not texts["calibration"] & texts["test"]
    # the split is by source unit and does not depend on the seed: sources.half_of's hash
    for half in HALVES:
        for group in groups[half]:
            assert ("calibration" if sources.stable_hash(group) % 2 == 0 else "test") == half, group


def test_allotment_gives_each_unit_to_one_population():
    for half in HALVES:
        owner: dict[str, str] = {}
        for population, decks in allotment(half).items():
            assert population in POPULATIONS
            for units in decks.values():
                for unit in units:
                    assert owner.setdefault(unit.key, population) == population, unit.key


def test_quick_budget_and_describe(pop):
    texts = pop.all_texts()
    assert len(texts) == len(set(texts)) <= 1000
    table = pop.describe()
    for name in POPULATIONS:
        assert name in table
    assert "unique texts" in table


def test_default_size_within_budget():
    built = build_populations("default", seed=0)  # ~5 s: no embedding, sources cached
    n_calibration = sum(len(v) for v in built.calibration.values())
    assert n_calibration >= 2000  # ~2,500 generated, ~400 of them stitched into shared keys
    keys = {name: [s for s in v if s.account.startswith("shared-key")] for name, v in built.calibration.items()}
    assert sum(len(k) for k in keys.values()) >= 15  # the calibration's benign histories past 512 queries
    for name, population_keys in keys.items():
        queries = sum(len(s) for s in built.calibration[name])
        assert all(len(k) >= 512 for k in population_keys), name
        assert sum(len(k) for k in population_keys) <= 0.4 * queries, name
    assert not any(s.account.startswith("shared-key") for v in built.test.values() for s in v)
    assert len(built.all_texts()) <= 60_000
    for name in POPULATIONS:
        assert len(built.calibration[name]) >= 20 and len(built.test[name]) >= 10, name


def test_unknown_size_rejected():
    with pytest.raises(ValueError, match="size"):
        build_populations("huge")
