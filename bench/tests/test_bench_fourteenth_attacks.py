"""The fourteenth perturbation wording (bench/traffic/fourteenth_attacks.py): context grids, the
same follow-up requests sent after one pasted conversation history after another."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bench.traffic import fourteenth_attacks

HISTORIES = [
    ([f"first turn of chat {i} about a topic", f"second turn of chat {i} asks more"], f"c-{i}") for i in range(60)
]


def _cell(text: str) -> tuple[str, str]:
    """(history key, follow-up) of one query."""
    follow = next(f for f in fourteenth_attacks._FOLLOW_UPS if f in text)
    key = next(key for turns, key in HISTORIES if all(t in text for t in turns))
    return key, follow


def test_every_query_is_one_history_and_one_follow_up_and_none_repeats():
    for seed in range(30):
        grid = fourteenth_attacks.context_grid(random.Random(seed), HISTORIES, 150)
        texts = [text for text, _ in grid]
        assert len(texts) == len(set(texts)) and len(texts) == 150
        for text, key in grid:
            assert _cell(text)[0] == key


def test_each_history_meets_several_follow_ups_and_each_follow_up_several_histories():
    for seed in range(30):
        grid = fourteenth_attacks.context_grid(random.Random(seed), HISTORIES, 120)
        cells = [_cell(text) for text, _ in grid]
        per_follow_up = Counter(f for _, f in cells)
        per_history = Counter(k for k, _ in cells)
        assert 5 <= len(per_follow_up) <= 10 and min(per_follow_up.values()) >= 4
        assert Counter(per_history.values()).most_common(1)[0][0] == len(per_follow_up)


def test_layouts_and_orders_vary():
    layouts, firsts = set(), Counter()
    for seed in range(60):
        grid = fourteenth_attacks.context_grid(random.Random(seed), HISTORIES, 30)
        text = grid[0][0]
        layouts.add(text.split("\n")[0][:6])
        keys = [_cell(t)[0] for t, _ in grid[:3]]
        firsts["one history first" if len(set(keys)) == 1 else "several first"] += 1
    assert len(layouts) == 3 and min(firsts.values()) >= 10


def test_the_history_pool_is_real_test_half_chat():
    pool = fourteenth_attacks.build_fourteenth_histories(random.Random(0), 200)
    assert len(pool) == 200 and len({key for _, key in pool}) == 200
    assert all(2 <= len(turns) <= 4 and all(4 <= len(t.split()) <= 40 for t in turns) for turns, _ in pool)


def test_an_unknown_fourteenth_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="fourteenth_perturbation_chain"):
        fourteenth_attacks.fourteenth_queries("fourteenth_random_words", random.Random(0), HISTORIES, 3)
