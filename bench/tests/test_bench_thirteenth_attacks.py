"""The thirteenth perturbation wording (bench/traffic/thirteenth_attacks.py): demonstration grids,
the same query items asked under one set of worked examples after another."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from bench.traffic import thirteenth_attacks

POOLS = {
    "news": [
        (f"Headline number {i} about a subject of its own", "sport" if i % 2 else "tech", f"n-{i}") for i in range(80)
    ],
    "intent": [(f"play the song number {i} on my speaker", "music", f"i-{i}") for i in range(80)],
}
TEXTS = {key: text for pool in POOLS.values() for text, _, key in pool}


def _asked(text: str) -> str:
    """The key of the item a query asks about: the pool text that appears last in it."""
    found = [(text.rfind(t), key) for key, t in TEXTS.items() if t in text]
    return max(found)[1]


def test_every_query_asks_one_item_after_labelled_examples_and_none_repeats():
    for seed in range(40):
        grid = thirteenth_attacks.demonstration_grid(random.Random(seed), POOLS, 150)
        texts = [text for text, _ in grid]
        assert len(texts) == len(set(texts)) and len(texts) >= 100
        for text, key in grid:
            assert _asked(text) == key
            examples = [t for t in TEXTS.values() if t in text and TEXTS[key] != t]
            assert 2 <= len(examples) <= 6, text


def test_each_item_is_asked_under_several_demonstration_sets():
    for seed in range(40):
        grid = thirteenth_attacks.demonstration_grid(random.Random(seed), POOLS, 120)
        per_item = Counter(key for _, key in grid)
        assert Counter(per_item.values()).most_common(1)[0][0] >= 4


def test_layouts_and_orders_vary():
    layouts, firsts = set(), Counter()
    for seed in range(80):
        grid = thirteenth_attacks.demonstration_grid(random.Random(seed), POOLS, 30)
        text = grid[0][0]
        layouts.add(("\n\n" in text, "=>" in text, "1. " in text, "\n" not in text))
        keys = [key for _, key in grid[:3]]
        firsts["one item first" if len(set(keys)) == 1 else "several items first"] += 1
    assert len(layouts) == 4
    assert min(firsts.values()) >= 10


def test_the_pools_are_real_labelled_test_half_text():
    pools = thirteenth_attacks.build_thirteenth_pools(random.Random(0), 200)
    assert {task: len(pool) for task, pool in pools.items()} == {"intent": 200, "news": 200}
    assert {label for _, label, _ in pools["news"]} == {"business", "entertainment", "politics", "sport", "tech"}
    assert all(key.startswith("bbc:") for _, _, key in pools["news"])
    assert len({label for _, label, _ in pools["intent"]}) == 7


def test_an_unknown_thirteenth_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="thirteenth_perturbation_chain"):
        thirteenth_attacks.thirteenth_queries("thirteenth_random_words", random.Random(0), POOLS, 3)
