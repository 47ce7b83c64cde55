"""The ninth perturbation wording (bench/traffic/ninth_attacks.py): character-level adversarial
probes around a seed, each query the seed with one to three words bugged or two words swapped."""

from __future__ import annotations

import random

import pytest

from bench.traffic import ninth_attacks

SEED = "Write a persuasive letter to the council about the broken streetlights near our school"


def test_a_bugged_word_differs_from_the_word_by_one_small_edit():
    for seed in range(200):
        rng = random.Random(seed)
        word = rng.choice(["streetlights", "persuasive", "council", "school", "letter"])
        bugged = ninth_attacks.bug_word(rng, word)
        assert bugged != word
        assert abs(len(bugged) - len(word)) <= 1
        # an inserted space splits the word; every other bug keeps one word
        assert len(bugged.split()) in (1, 2)


def test_a_probe_changes_the_seed_in_at_most_three_words():
    words = SEED.split()
    changed_counts = set()
    for seed in range(100):
        got = ninth_attacks.probe(random.Random(seed), words)
        changed = sum(a != b for a, b in zip(words, got, strict=True))
        assert 1 <= changed <= 3
        changed_counts.add(changed)
    assert changed_counts >= {1, 2}


def test_a_round_is_built_from_its_seed_not_from_the_query_before():
    for seed in range(10):
        probes = ninth_attacks.attack_round(random.Random(seed), SEED, 16)
        seed_words = set(SEED.split())
        for text in probes:
            assert len(set(text.split()) & seed_words) >= len(seed_words) - 4


def test_rounds_send_no_prompt_twice_and_never_the_seed():
    rounds = ninth_attacks.build_ninth_chains(random.Random(0), 200)
    assert len(rounds) >= 15
    for r in rounds:
        texts = [text for text, _ in r]
        assert len(set(texts)) == len(texts)


def test_an_unknown_ninth_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="ninth_perturbation_chain"):
        ninth_attacks.ninth_queries("ninth_random_words", random.Random(0), [], 3)
