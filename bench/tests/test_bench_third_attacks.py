"""The third perturbation wording (bench/traffic/third_attacks.py): chains that really are
small steps from one seed, in both edit schemes, sharing no prompt with the earlier sets."""

from __future__ import annotations

import itertools
import random

import pytest

from bench.traffic import third_attacks


def test_a_suffix_search_keeps_its_seed_and_changes_one_or_two_suffix_tokens_a_step():
    rng = random.Random(4)
    seed = "Which planet in the solar system has the most moons?"
    chain = third_attacks._suffix_search(rng, seed, 30, ("alpha", "beta", "gamma", "delta", "omega", "sigma"))
    assert len(chain) == 31
    suffixes = [text.removeprefix(seed + " ").split(" ") for text in chain]
    assert all(text.startswith(seed + " ") for text in chain)
    assert len({len(s) for s in suffixes}) == 1 and 8 <= len(suffixes[0]) <= 16
    for before, after in itertools.pairwise(suffixes):
        assert sum(a != b for a, b in zip(before, after, strict=True)) <= 2


@pytest.mark.parametrize("seed", ["How many people lived in Lagos in 2010?", "Write a short poem about autumn."])
def test_an_attribute_sweep_steps_one_attribute_from_the_last_prompt(seed):
    rng = random.Random(7)
    chain = third_attacks.attribute_sweep(rng, seed, 25)
    assert len(chain) == 26
    stem = seed.split("2010")[0] if "2010" in seed else seed
    assert all(text.startswith(stem) for text in chain)
    changed = sum(a != b for a, b in itertools.pairwise(chain))
    assert changed >= 15  # most steps change something; a swap back to the same name does not


def test_an_unknown_third_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="third_perturbation_chain"):
        third_attacks.third_queries("third_random_words", random.Random(0), [], 3)
