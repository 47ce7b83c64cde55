"""bench/cross_account_probes.py: the indexed neighbourhood against its brute-force definition,
and what counts as a probe across accounts (no model, no data packages)."""

from __future__ import annotations

import random

import pytest

from bench.cross_account_probes import (
    NEIGHBOURS,
    AccountCounts,
    CrossAccountProbes,
    _Sent,
    count_probes,
    is_near,
    markdown,
    neighbourhood_brute_force,
    scenario_table,
)
from probewatch.detect import probes
from tests.support import PROBE_FILLERS, counterfactual_variants, mixed_probe_stream, probe_seed


@pytest.mark.parametrize("memory", [1_000, 40])
def test_indexed_neighbourhood_is_the_brute_force_one(memory):
    rng = random.Random(7)
    index = CrossAccountProbes(memory=memory)
    history: list[_Sent] = []
    checked = 0
    for account, text in mixed_probe_stream(rng, 220):
        kept, words = probes.word_hashes(text)
        hashes = frozenset(kept)
        found = [(s.account, s.text) for s in index.neighbourhood(account, text, hashes)]
        recent = history[-memory:]
        expected = [
            (recent[i].account, recent[i].text) for i in neighbourhood_brute_force(recent, account, text, hashes)
        ]
        assert found == expected
        checked += bool(found)
        index.observe(account, text)
        history.append(_Sent(account, text, hashes, words))
    assert checked > 100  # most queries had a neighbourhood to compare


def test_neighbourhood_is_capped_and_holds_other_accounts_only():
    rng = random.Random(1)
    seed = probe_seed(rng)
    index = CrossAccountProbes()
    for i, text in enumerate(counterfactual_variants(rng, seed, 10) * 3):
        index.observe(f"a{i % 3}", f"{text} x{i}")
    query = " ".join(seed)
    near = index.neighbourhood("a0", query, frozenset(probes.word_hashes(query)[0]))
    assert len(near) == NEIGHBOURS and all(s.account != "a0" for s in near)


def test_grid_dealt_across_accounts_is_counted_and_uncentred():
    """Each seed's variants go to different accounts; no account sends two of one seed and
    nobody sends a seed: across accounts most later variants are probes, none centred."""
    rng = random.Random(3)
    rounds = [counterfactual_variants(rng, probe_seed(rng), 10) for _ in range(6)]
    events = [(f"m{j}", text) for r in rounds for j, text in enumerate(r)]
    rng.shuffle(events)
    counts = count_probes(events)
    assert all(c.queries == 6 for c in counts.values())
    total = sum(c.uncentred for c in counts.values())
    assert total == sum(c.probes for c in counts.values())
    assert total >= 0.5 * len(events)
    # per account nothing: each member alone has six unrelated prompts
    alone = CrossAccountProbes()
    assert not any(alone.observe("solo", text).probe for text in rounds[0])


def test_a_popular_prompt_pasted_and_edited_is_centred():
    """People who share a prompt mostly paste it as it is: the edits of a prompt others sent
    verbatim are never uncentred, whatever the rules say of them."""
    rng = random.Random(5)
    seed = probe_seed(rng)
    events = [(f"paste{i}", " ".join(seed)) for i in range(6)]
    events += [(f"edit{i}", text) for i, text in enumerate(counterfactual_variants(rng, seed, 10))]
    counts = count_probes(events)
    assert sum(c.probes for c in counts.values()) > 0
    assert sum(c.uncentred for c in counts.values()) == 0


def test_a_short_slot_template_shared_by_many_accounts_is_not_probing():
    template = "please translate the following sentence into french for my class : {}"
    events = [(f"user{i}", template.format(" ".join(random.Random(i).sample(PROBE_FILLERS, 2)))) for i in range(40)]
    assert sum(c.probes for c in count_probes(events).values()) == 0


def test_short_prompts_are_never_probes():
    events = [(f"a{i}", f"hi there {w}") for i, w in enumerate(PROBE_FILLERS[:30])]
    assert sum(c.probes for c in count_probes(events).values()) == 0


def test_scenario_table_and_markdown():
    counts = {
        "g1": AccountCounts(queries=8, probes=6, uncentred=5),
        "g2": AccountCounts(queries=10, probes=2, uncentred=1),
        "b1": AccountCounts(queries=20, probes=1, uncentred=0),
    }
    rows = scenario_table(counts, {"grid": ["g1", "g2", "never-seen"], "benign": ["b1"], "empty": ["nobody"]})
    assert [r["scenario"] for r in rows] == ["grid", "benign"]
    grid = rows[0]
    assert (grid["accounts"], grid["queries"], grid["probes"], grid["uncentred"]) == (2, 18, 8, 6)
    assert grid["accounts_with_one"] == pytest.approx(1.0) and grid["accounts_with_two"] == pytest.approx(0.5)
    assert rows[1]["accounts_with_one"] == 0.0
    text = markdown(rows, "python -m bench.cross_account_probes --size quick --seed 0")
    assert "| grid | 2 | 18 | 8 | 6 | 100.0 % | 50.0 % |" in text and "--size quick" in text


def test_is_near_is_the_engines_bounds_either_way():
    base = frozenset(range(20))
    assert is_near(base, base | {100, 101, 102, 103})  # four added
    assert not is_near(base, base | {100, 101, 102, 103, 104})
    assert is_near(base, (base - {0, 1}) | {100, 101, 102, 103})  # two lacked, four added
    assert is_near((base - {0, 1}) | {100, 101, 102, 103}, base)  # the other way round
    assert not is_near(base, (base - {0, 1, 2}) | {100, 101, 102})  # three each way
