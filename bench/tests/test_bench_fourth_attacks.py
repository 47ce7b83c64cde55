"""The fourth perturbation wording (bench/traffic/fourth_attacks.py): one behavioural-test
edit a step, chains walked in parallel, sharing no prompt with the earlier sets."""

from __future__ import annotations

import difflib
import itertools
import random

import pytest

from bench.traffic import (
    fourth_attacks,
)

SEEDS = (
    "Find a one-way flight from Boston to Denver for 2 adults on 6/16.",
    "The council said it is not ready to reopen the road before Friday.",
    "Search for a full-time job in sales in Springfield",
    "rain",
)


@pytest.mark.parametrize("seed", SEEDS)
def test_each_step_is_one_small_edit_of_the_last_prompt(seed):
    rng = random.Random(3)
    chain = [seed]
    for _ in range(40):
        chain.append(fourth_attacks.behavioural_edit(rng, chain[-1]))
    for before, after in itertools.pairwise(chain):
        assert after != before
        # one edit: a word or two, a number or a mark, never a rewrite
        ratio = difflib.SequenceMatcher(None, before, after).ratio()
        assert ratio >= 0.7 or abs(len(after) - len(before)) <= 12, (before, after)
    assert chain[-1] != seed


@pytest.mark.parametrize(
    ("edit", "text", "expected"),
    [
        (fourth_attacks._contraction, "I do not know", "I don't know"),
        (fourth_attacks._contraction, "it's late", "it is late"),
        (fourth_attacks._negation, "The road is closed", "The road is not closed"),
        (fourth_attacks._negation, "The road is not closed", "The road is closed"),
    ],
)
def test_the_deterministic_edits_do_what_they_say(edit, text, expected):
    assert edit(random.Random(0), text) == expected


def test_an_edit_that_does_not_apply_says_so():
    rng = random.Random(0)
    assert fourth_attacks._contraction(rng, "rain") is None
    assert fourth_attacks._number(rng, "rain") is None
    assert fourth_attacks._swap_entity(rng, "rain") is None
    assert fourth_attacks._negation(rng, "rain") is None


def test_parallel_chains_keep_each_chain_in_order_and_interleave_them():
    chains = [[(f"c{c} step {i}", f"k{c}") for i in range(10)] for c in range(6)]
    out = fourth_attacks.interleaved(random.Random(5), chains, 45)
    assert len(out) == 45
    for c in range(6):
        steps = [int(text.split()[-1]) for text, key in out if key == f"k{c}"]
        assert steps == sorted(steps) and len(set(steps)) == len(steps)
    switches = sum(a[1] != b[1] for a, b in itertools.pairwise(out))
    assert switches >= 15  # one chain after another would switch at most 4 times


def test_an_unknown_fourth_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="fourth_perturbation_chain"):
        fourth_attacks.fourth_queries("fourth_random_words", random.Random(0), [], 3)
