"""A seventh wording of the perturbation strategy: written before the sixth wording's misses
(``sixth_attacks.py``) were looked at, and fixed before any detector was measured on it, so
that what is changed after looking at the sixth is measured on probes nobody had looked at.

Nothing here may be changed to suit a detector (add an eighth set instead).

| strategy | how its probes differ from the six earlier sets |
| --- | --- |
| perturbation_chain | *Grids around a seed*: every query is the seed with one thing changed, never the query before it. Two kinds per seed: a counterfactual grid (one word of the seed at a time replaced by a frequent English word, a few replacements per position: contrast sets, Gardner et al. 2020, "Evaluating Models' Local Decision Boundaries via Contrast Sets", done by a script) and an instruction grid (the seed with one of a fixed list of output instructions added, in front or behind, one per query: the outputs a distiller collects under every format it wants its student to follow). Seeds: ShareGPT user questions and Mind2Web tasks (test half); no earlier set sends a prompt of these grids |
"""

from __future__ import annotations

import random

from . import sources
from .attacks import Query, _sample, chained, check_later_wording, distinct_steps

SEVENTH_PREFIX = "seventh_"
SEVENTH_STRATEGIES = (SEVENTH_PREFIX + "perturbation_chain",)

_INSTRUCTIONS = (
    "Answer in one sentence.",
    "Answer in French.",
    "Use bullet points.",
    "Explain like I'm five.",
    "Give the answer as JSON.",
    "Be as brief as possible.",
    "Answer formally.",
    "Include one example.",
    "Reply in Spanish.",
    "Write it as a table.",
    "Answer with yes or no first.",
    "Use at most 50 words.",
    "Respond in the style of a pirate.",
    "List the steps.",
    "Do not use the letter e.",
    "Cite a source.",
)


def counterfactual_grid(rng: random.Random, words: list[str], vocabulary: tuple[str, ...], steps: int) -> list[str]:
    """The seed with one word replaced at a time: positions in a random order, one to three
    replacements each, until ``steps`` queries."""
    out: list[str] = []
    positions = rng.sample(range(len(words)), len(words))
    for at in positions:
        for _ in range(rng.randint(1, 3)):
            out.append(" ".join([*words[:at], rng.choice(vocabulary), *words[at + 1 :]]))
            if len(out) >= steps:
                return out
    return out


def instruction_grid(rng: random.Random, seed: str, steps: int) -> list[str]:
    """The seed with one output instruction each, in a random order, the instruction in front
    or behind (one side for the whole grid)."""
    front = rng.random() < 0.3
    picked = rng.sample(_INSTRUCTIONS, min(steps, len(_INSTRUCTIONS)))
    return [f"{i} {seed}" if front else f"{seed} {i}" for i in picked]


def grid(rng: random.Random, seed: str, vocabulary: tuple[str, ...]) -> list[str]:
    """The prompts of one grid around ``seed``."""
    if rng.random() < 0.5:
        return counterfactual_grid(rng, seed.split(), vocabulary, rng.randint(6, 30))
    return instruction_grid(rng, seed, rng.randint(6, 16))


def build_seventh_chains(rng: random.Random, pool_size: int) -> list[list[Query]]:
    """Grids for the seventh wording (see the module docstring), one list per seed."""
    test = lambda loader: sources.split_units(loader())["test"]  # noqa: E731 - attacks live in the test half
    vocabulary = sources.english_vocabulary(5000)
    questions = [
        (" ".join(t.split()), u.key)
        for u in test(sources.sharegpt)
        for t in u.texts[:1]
        if "?" in t and 6 <= len(t.split()) <= 40
    ]
    tasks = [(" ".join(u.texts[0].split()), u.key) for u in test(sources.mind2web) if len(u.texts[0].split()) >= 6]
    grids = []
    for seed_text, key in _sample(rng, questions, pool_size // 20) + _sample(rng, tasks, pool_size // 20):
        # the seed itself is never sent; a replacement that gives back the seed is not sent either
        grids.append(distinct_steps(grid(rng, seed_text, vocabulary), key, frozenset([seed_text])))
    return [g for g in grids if g]


def seventh_queries(strategy: str, rng: random.Random, chains: list[list[Query]], n: int) -> list[Query]:
    """The next ``n`` queries of one seventh-wording attack account (grids one after another)."""
    check_later_wording(strategy, SEVENTH_PREFIX, SEVENTH_STRATEGIES)
    return chained(rng, chains, n)
