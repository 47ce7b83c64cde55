"""The eleventh perturbation wording (bench/traffic/eleventh_attacks.py): persona grids, a fixed
set of payloads sent again under one persona or audience line after another."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bench.traffic import eleventh_attacks

PAYLOADS = [(f"Question number {i} about a subject of its own, asked plainly", f"unit-{i}") for i in range(60)]
LINES = set(eleventh_attacks._PERSONAS) | set(eleventh_attacks._AUDIENCES)


def _split(text: str) -> tuple[str, str]:
    """(line, payload) of one query, whichever side the line is on."""
    first, second = text.split("\n\n")
    return (first, second) if first in LINES else (second, first)


def test_every_query_is_one_payload_under_one_line_and_none_repeats():
    for seed in range(30):
        grid = eleventh_attacks.persona_grid(random.Random(seed), PAYLOADS, 200)
        assert len(grid) == 200
        texts = [text for text, _ in grid]
        assert len(set(texts)) == len(texts)
        payloads = {key: text for text, key in PAYLOADS}
        for text, key in grid:
            line, payload = _split(text)
            assert line in LINES and payloads[key] == payload


def test_each_payload_is_sent_under_many_lines():
    for seed in range(30):
        grid = eleventh_attacks.persona_grid(random.Random(seed), PAYLOADS, 120)
        per_payload = Counter(_split(text)[1] for text, _ in grid)
        # a grid, not a sweep: the payloads it has sent, it sent again under other lines
        assert sum(per_payload.values()) / len(per_payload) >= 4


def test_the_line_is_in_front_or_behind_and_the_order_varies():
    sides, orders = set(), set()
    for seed in range(40):
        grid = eleventh_attacks.persona_grid(random.Random(seed), PAYLOADS, 40)
        first = grid[0][0].split("\n\n")[0]
        sides.add(first in LINES)
        lines = [_split(text)[0] for text, _ in grid[:3]]
        orders.add(len(set(lines)) == 1)  # one persona's block first, or one payload under several
    assert sides == {True, False} and orders == {True, False}


def test_the_payload_pool_is_real_test_half_text():
    pool = eleventh_attacks.build_eleventh_payloads(random.Random(0), 200)
    assert len(pool) == 200
    assert all(6 <= len(text.split()) <= 40 for text, _ in pool)


def test_an_unknown_eleventh_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="eleventh_perturbation_chain"):
        eleventh_attacks.eleventh_queries("eleventh_random_words", random.Random(0), PAYLOADS, 3)
