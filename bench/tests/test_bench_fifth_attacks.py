"""The fifth perturbation wording (bench/traffic/fifth_attacks.py): robustness probes that
append, drop and swap one thing a step, sharing no prompt with the earlier sets."""

from __future__ import annotations

import itertools
import random

import pytest

from bench.traffic import (
    fifth_attacks,
)

SEED = "The council said the new bridge would help people in the city get to work faster."


def test_each_step_appends_drops_or_swaps_one_thing():
    rng = random.Random(2)
    chain = [SEED, *fifth_attacks.probe_chain(rng, SEED, 60)]
    appended = dropped = swapped = 0
    for before, after in itertools.pairwise(chain):
        if after.startswith(before + " "):
            appended += 1
        elif before.startswith(after + " "):
            dropped += 1
        else:
            assert (
                len(before.split()) == len(after.split())
                or "close to" in (before + after)
                or "prior to" in (before + after)
            )
            swapped += 1
    assert appended and dropped and swapped
    assert all(text.startswith(SEED.split()[0]) for text in chain)


def test_a_drop_removes_exactly_the_newest_distractor():
    rng = random.Random(9)
    chain = [SEED, *fifth_attacks.probe_chain(rng, SEED, 80)]
    drops = 0
    for before, after in itertools.pairwise(chain):
        if before.startswith(after + " "):
            tail = before[len(after) + 1 :]
            assert tail in fifth_attacks._DISTRACTORS or (tail.isalnum() and 4 <= len(tail) <= 8), tail
            drops += 1
    assert drops >= 5


def test_a_synonym_swap_keeps_the_capital_and_says_when_nothing_applies():
    rng = random.Random(0)
    assert fifth_attacks._synonym_swap(rng, "Big plans") == "Large plans"
    assert fifth_attacks._synonym_swap(rng, "zzz qqq") is None


def test_an_unknown_fifth_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="fifth_perturbation_chain"):
        fifth_attacks.fifth_queries("fifth_random_words", random.Random(0), [], 3)
