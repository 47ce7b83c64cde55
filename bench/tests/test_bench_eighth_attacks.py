"""The eighth perturbation wording (bench/traffic/eighth_attacks.py): CheckList-style test
suites around a seed, each query the seed with one or two capability tests applied."""

from __future__ import annotations

import random

import pytest

from bench.traffic import eighth_attacks

SEED = "Did Maria win the 2019 chess championship in Madrid after 14 rounds?"


def bag(words: list[str]) -> set[str]:
    return {w.strip("?.,!").lower() for w in words} - {""}


@pytest.mark.parametrize("test", eighth_attacks.TESTS, ids=lambda t: t.__name__)
def test_each_test_changes_the_seed_a_little(test):
    words = SEED.split()
    for seed in range(20):
        got = test(random.Random(seed), words)
        assert got is not None and got != words
        assert abs(len(got) - len(words)) <= 5  # one small change, not a new prompt
        assert len(bag(got) & bag(words)) >= len(words) - 2


def test_the_entity_and_number_tests_swap_what_they_name():
    words = SEED.split()
    rng = random.Random(1)
    swapped = eighth_attacks.swap_entity(rng, words)
    changed = [(a, b) for a, b in zip(words, swapped, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0] in ("Maria", "Madrid")
    numbered = eighth_attacks.change_number(rng, words)
    changed = [(a, b) for a, b in zip(words, numbered, strict=True) if a != b]
    assert len(changed) == 1 and changed[0][0] in ("2019", "14") and any(c.isdigit() for c in changed[0][1])
    assert eighth_attacks.swap_entity(rng, ["what", "is", "the", "time", "now"]) is None
    assert eighth_attacks.change_number(rng, ["what", "is", "the", "time", "now"]) is None


def test_a_suite_is_built_from_its_seed_not_from_the_query_before():
    for seed in range(10):
        tests = eighth_attacks.suite(random.Random(seed), SEED, 16)
        assert 6 <= len(tests) <= 16 and SEED not in tests
        seed_words = bag(SEED.split())
        for text in tests:
            # every test keeps most of the seed's words, whatever the test before it changed
            assert len(bag(text.split()) & seed_words) >= len(seed_words) - 4


def test_suites_send_no_prompt_twice():
    suites = eighth_attacks.build_eighth_chains(random.Random(0), 200)
    assert len(suites) >= 15
    for s in suites:
        texts = [text for text, _ in s]
        assert len(set(texts)) == len(texts)


def test_an_unknown_eighth_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="eighth_perturbation_chain"):
        eighth_attacks.eighth_queries("eighth_random_words", random.Random(0), [], 3)
