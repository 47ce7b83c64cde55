"""The twelfth perturbation wording (bench/traffic/twelfth_attacks.py): task-template grids, the
same passages sent under one task template after another."""

from __future__ import annotations

import random
import re
from collections import Counter

import pytest

from bench.traffic import twelfth_attacks

PASSAGES = [(f"Passage number {i} reports an event of its own in plain words.", f"unit-{i}") for i in range(60)]
_TEXT = {key: text for text, key in PASSAGES}


def _split(text: str, key: str) -> str:
    """The template a query was written from (its passage taken out)."""
    template = text.replace(_TEXT[key], "{}", 1)
    assert template in twelfth_attacks._TEMPLATES
    return template


def test_every_query_is_one_passage_under_one_template_and_none_repeats():
    for seed in range(30):
        grid = twelfth_attacks.template_grid(random.Random(seed), PASSAGES, 200)
        texts = [text for text, _ in grid]
        assert len(texts) == 200 and len(set(texts)) == len(texts)
        for text, key in grid:
            _split(text, key)


def test_each_passage_is_sent_under_several_templates_and_each_template_over_several_passages():
    for seed in range(30):
        grid = twelfth_attacks.template_grid(random.Random(seed), PASSAGES, 150)
        per_passage = Counter(key for _, key in grid)
        per_template = Counter(_split(text, key) for text, key in grid)
        # a grid, not a sweep: a passage of a finished pass went under every one of the account's templates
        assert 4 <= len(per_template) <= 10 and min(per_template.values()) >= 5
        assert Counter(per_passage.values()).most_common(1)[0][0] == len(per_template)


def test_the_three_orders_all_occur():
    orders = Counter()
    for seed in range(60):
        grid = twelfth_attacks.template_grid(random.Random(seed), PASSAGES, 40)
        keys = [key for _, key in grid[:4]]
        templates = [_split(text, key) for text, key in grid[:4]]
        if len(set(keys)) == 1:
            orders["by_input"] += 1
        elif len(set(templates)) == 1:
            orders["by_template"] += 1
        else:
            orders["shuffled"] += 1
    assert all(orders[name] >= 5 for name in ("by_input", "by_template", "shuffled"))


def test_the_instruction_is_not_always_a_line_of_its_own():
    inline = [t for t in twelfth_attacks._TEMPLATES if "\n" not in t]
    own_line = [t for t in twelfth_attacks._TEMPLATES if re.search(r"\n\{\}|\{\}\n", t)]
    assert len(inline) >= 4 and len(own_line) >= 6


def test_the_passage_pool_is_real_test_half_news():
    pool = twelfth_attacks.build_twelfth_passages(random.Random(0), 200)
    assert len(pool) == 200 and len({key for _, key in pool}) == 200
    assert all(25 <= len(text.split()) <= 90 and key.startswith("bbc:") for text, key in pool)


def test_an_unknown_twelfth_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="twelfth_perturbation_chain"):
        twelfth_attacks.twelfth_queries("twelfth_random_words", random.Random(0), PASSAGES, 3)
