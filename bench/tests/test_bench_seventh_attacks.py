"""The seventh perturbation wording (bench/traffic/seventh_attacks.py): grids around a seed,
each query the seed with one word replaced or one output instruction added."""

from __future__ import annotations

import random

import pytest

from bench.traffic import seventh_attacks

SEED = "How do I keep my sourdough starter alive while I travel for two weeks?"
VOCABULARY = ("apple", "river", "green", "quickly", "table", "seven")


def test_a_counterfactual_grid_changes_one_word_of_the_seed_per_query():
    words = SEED.split()
    grid = seventh_attacks.counterfactual_grid(random.Random(4), words, VOCABULARY, 30)
    assert len(grid) == 30
    positions = set()
    for text in grid:
        got = text.split()
        assert len(got) == len(words)
        differ = [i for i, (a, b) in enumerate(zip(got, words, strict=True)) if a != b]
        assert len(differ) <= 1  # one word replaced (or by itself, in principle)
        if differ:
            assert got[differ[0]] in VOCABULARY
            positions.update(differ)
    assert len(positions) >= 8  # it moves along the seed, not one slot


def test_an_instruction_grid_adds_one_distinct_instruction_per_query_on_one_side():
    for seed in range(8):
        grid = seventh_attacks.instruction_grid(random.Random(seed), SEED, 12)
        assert len(grid) == len(set(grid)) == 12
        behind = [t[len(SEED) + 1 :] for t in grid if t.startswith(SEED + " ")]
        front = [t[: -len(SEED) - 1] for t in grid if t.endswith(" " + SEED)]
        assert (len(behind), len(front)) in ((12, 0), (0, 12))  # one side for the whole grid
        assert set(behind + front) <= set(seventh_attacks._INSTRUCTIONS)


def test_grids_never_send_their_seed_and_no_prompt_twice():
    grids = seventh_attacks.build_seventh_chains(random.Random(0), 200)
    assert len(grids) >= 15
    for g in grids:
        texts = [text for text, _ in g]
        assert len(set(texts)) == len(texts)


def test_an_unknown_seventh_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="seventh_perturbation_chain"):
        seventh_attacks.seventh_queries("seventh_random_words", random.Random(0), [], 3)
