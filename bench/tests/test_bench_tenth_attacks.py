"""The tenth perturbation wording (bench/traffic/tenth_attacks.py): a task with verifiable output
constraints stacked one at a time, each step adding, re-parameterising or dropping the newest."""

from __future__ import annotations

import itertools
import random

import pytest

from bench.traffic import tenth_attacks

TASK = "Find a cheap hotel in Lisbon for two adults next weekend with free cancellation."


def _constraints_of(text: str) -> str:
    assert text.startswith(TASK + " ")
    return text[len(TASK) + 1 :]


def test_every_prompt_is_the_task_with_at_least_one_constraint():
    for seed in range(50):
        chain = tenth_attacks.probe_chain(random.Random(seed), TASK, 20)
        assert len(chain) == 20
        for text in chain:
            assert len(_constraints_of(text)) >= 20


def test_each_step_changes_only_the_newest_constraint():
    ops = set()
    for seed in range(50):
        chain = tenth_attacks.probe_chain(random.Random(seed), TASK, 20)
        for before, after in itertools.pairwise(chain):
            if after.startswith(before + " "):
                ops.add("add")
            elif before.startswith(after + " "):
                ops.add("drop")
            elif after != before:
                # a re-parameterised newest constraint: what came before it is kept as it was
                common = 0
                while before[common] == after[common]:
                    common += 1
                kept = before[:common]
                assert kept.startswith(TASK)
                ops.add("change")
    assert ops == {"add", "drop", "change"}


def test_chains_send_no_prompt_twice_and_never_the_bare_task():
    chains = tenth_attacks.build_tenth_chains(random.Random(0), 200)
    assert len(chains) >= 15
    for chain in chains:
        texts = [text for text, _ in chain]
        assert len(set(texts)) == len(texts)
        openings = [wording.split("{}")[0] for wording, _ in tenth_attacks._CONSTRAINTS]
        assert all(any(opening in text for opening in openings) for text in texts)


def test_an_unknown_tenth_strategy_is_refused_by_name():
    with pytest.raises(ValueError, match="tenth_perturbation_chain"):
        tenth_attacks.tenth_queries("tenth_random_words", random.Random(0), [], 3)
